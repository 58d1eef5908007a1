//! Speech to cues. [`Transcriber`] is the seam; [`Whisper`] (feature `whisper`) implements it with
//! whisper-rs. [`filter`] drops what Whisper invents on silence, and is pure.

use crate::cue::Cue;
use crate::error::Result;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Audio sample rate every transcriber takes.
pub const SAMPLE_RATE: u32 = 16_000;

/// A transcript from speech: cues and the language spoken.
#[derive(Debug, Clone)]
pub struct Speech {
    pub cues: Vec<Cue>,
    pub language: String,
    /// Segments dropped by [`filter`].
    pub dropped: usize,
}

/// Where a transcriber sends segments as it hears them (raw: before [`filter`]). The channel
/// closes when `transcribe` returns: a transcriber never keeps the sender beyond that.
pub type SegmentSink = std::sync::mpsc::Sender<Cue>;

/// Whisper's tokens of one segment → words: a token whose text starts with a space starts a word;
/// the others (word pieces, and pieces of one UTF-8 character: Whisper splits Cyrillic letters
/// across byte-level tokens) join the word before, as bytes, decoded only once the word is whole.
/// Special tokens (`[_BEG_]`, `<|…|>`) are left out by the caller. `(bytes, t0, t1)`, seconds.
pub fn words_from_tokens(tokens: &[(&[u8], f64, f64)]) -> Vec<crate::cue::Word> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let (mut s, mut e) = (0.0f64, 0.0f64);
    let flush = |cur: &mut Vec<u8>, s: f64, e: f64, out: &mut Vec<crate::cue::Word>| {
        let text = String::from_utf8_lossy(cur).trim().to_string();
        if text.chars().any(char::is_alphanumeric) {
            out.push(crate::cue::Word {
                text,
                start: s,
                end: e.max(s),
            });
        } else if let (false, Some(last)) = (text.is_empty(), out.last_mut()) {
            // Punctuation on its own belongs to the word before.
            last.text.push_str(&text);
        }
        cur.clear();
    };
    for &(bytes, t0, t1) in tokens {
        if bytes.first() == Some(&b' ') && !cur.is_empty() {
            flush(&mut cur, s, e, &mut out);
        }
        if cur.is_empty() {
            s = t0;
        }
        cur.extend_from_slice(bytes);
        e = t1;
    }
    if !cur.is_empty() {
        flush(&mut cur, s, e, &mut out);
    }
    out
}

/// Turns 16 kHz mono samples into cues.
pub trait Transcriber: Send {
    /// `language`: a Whisper code (`ru`, `en`...) or `None` to detect it. `progress` gets 0..=1.
    /// `segments`, when given, receives each segment as soon as it is decoded (a transcriber
    /// that cannot stream may send nothing); the returned [`Speech`] is what counts.
    fn transcribe(
        &mut self,
        samples: &[f32],
        language: Option<&str>,
        progress: Arc<dyn Fn(f32) + Send + Sync>,
        cancel: Arc<AtomicBool>,
        segments: Option<SegmentSink>,
    ) -> Result<Speech>;
    /// The model's name, for reports.
    fn name(&self) -> String;
}

/// Whisper's hallucinations on silence and noise: credits, sign-offs, music tags, and the same line
/// repeated. Pure.
pub mod filter {
    use crate::boilerplate::normalize;
    use crate::cue::Cue;

    /// Text found in credits, never in speech.
    const CREDIT_MARKERS: &[&str] = &[
        "субтитры создавал",
        "субтитры сделал",
        "субтитры подогнал",
        "субтитры делал",
        "субтитры подготовил",
        "редактор субтитров",
        "корректор а.",
        "dimatorzok",
        "amara.org",
        "subtitles by",
        "субтитры: ",
        "transcription by",
        "transcribed by",
    ];
    /// Whole-segment phrases Whisper emits at the end of silence.
    const SIGN_OFFS: &[&str] = &[
        "продолжение следует",
        "спасибо за просмотр",
        "спасибо за внимание",
        "подписывайтесь на канал",
        "ставьте лайки",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "до новых встреч",
    ];

    /// Whether one segment's text is a known hallucination.
    pub fn is_hallucination(text: &str) -> bool {
        let lower = text.to_lowercase();
        if CREDIT_MARKERS.iter().any(|m| lower.contains(m)) {
            return true;
        }
        let n = normalize(text);
        if n.is_empty() {
            return true; // only punctuation or ♪
        }
        let bracketed = {
            let t = text.trim();
            (t.starts_with('[') && t.ends_with(']')) || (t.starts_with('(') && t.ends_with(')'))
        };
        if bracketed {
            return true; // [музыка], (Music), [APPLAUSE]
        }
        SIGN_OFFS
            .iter()
            .any(|s| n == *s || (n.starts_with(s) && n.len() <= s.len() + 12))
    }

    /// Drops hallucinated segments and immediate repeats; returns the kept cues and how many
    /// were dropped.
    pub fn apply(cues: Vec<Cue>) -> (Vec<Cue>, usize) {
        let total = cues.len();
        let mut out: Vec<Cue> = Vec::with_capacity(total);
        let mut last_norm = String::new();
        for cue in cues {
            if is_hallucination(&cue.text) {
                continue;
            }
            let n = normalize(&cue.text);
            if n == last_norm {
                continue; // the same line again: Whisper looping
            }
            last_norm = n;
            out.push(cue);
        }
        let dropped = total - out.len();
        (out, dropped)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn tokens_become_words_even_when_a_letter_is_split_across_two() {
            // «Привет, мир!»: "П" is 0xD0 0x9F; split across tokens as Whisper's byte-level
            // vocabulary does.
            let p = "Привет".as_bytes();
            let tokens: Vec<(&[u8], f64, f64)> = vec![
                (b" \xD0", 0.0, 0.1),
                (&p[1..6], 0.1, 0.3),
                (&p[6..], 0.3, 0.5),
                (b",", 0.5, 0.5),
                (" мир".as_bytes(), 0.6, 0.9),
                (b"!", 0.9, 1.0),
            ];
            let w = crate::transcribe::words_from_tokens(&tokens);
            let texts: Vec<&str> = w.iter().map(|w| w.text.as_str()).collect();
            assert_eq!(texts, ["Привет,", "мир!"]);
            assert_eq!((w[0].start, w[0].end), (0.0, 0.5));
            assert_eq!((w[1].start, w[1].end), (0.6, 1.0));
        }

        #[test]
        fn credits_sign_offs_and_repeats_go() {
            let cues = vec![
                Cue::new(0.0, 2.0, "Привет всем, сегодня поговорим о погоде."),
                Cue::new(2.0, 4.0, "Сегодня тепло."),
                Cue::new(4.0, 6.0, "Сегодня тепло."),
                Cue::new(6.0, 8.0, "[музыка]"),
                Cue::new(8.0, 9.0, "Субтитры создавал DimaTorzok"),
                Cue::new(9.0, 10.0, "Продолжение следует..."),
                Cue::new(10.0, 11.0, "♪ ♪"),
                Cue::new(11.0, 12.0, "Thanks for watching!"),
                Cue::new(
                    12.0,
                    14.0,
                    "Продолжение следует завтра в девять утра, а сейчас новости спорта.",
                ),
            ];
            let (kept, dropped) = apply(cues);
            let texts: Vec<&str> = kept.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(
                texts,
                [
                    "Привет всем, сегодня поговорим о погоде.",
                    "Сегодня тепло.",
                    "Продолжение следует завтра в девять утра, а сейчас новости спорта."
                ]
            );
            assert_eq!(dropped, 6);
        }
    }
}

#[cfg(feature = "whisper")]
pub use whisper_impl::Whisper;

#[cfg(feature = "whisper")]
mod whisper_impl {
    use super::*;
    use crate::error::Error;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;
    use whisper_rs::{
        FullParams, SamplingStrategy, SegmentCallbackData, WhisperContext, WhisperContextParameters,
    };

    /// whisper.cpp through whisper-rs.
    pub struct Whisper {
        ctx: WhisperContext,
        path: PathBuf,
        threads: i32,
        gpu: bool,
    }

    impl Whisper {
        /// Loads a ggml model file (e.g. `ggml-base.bin`).
        pub fn load(path: &Path) -> Result<Self> {
            if !path.is_file() {
                return Err(Error::WhisperModel(format!(
                    "{}: Whisper model file not found (pass --whisper FILE, a ggml .bin)",
                    path.display()
                )));
            }
            whisper_rs::install_logging_hooks();
            let mut params = WhisperContextParameters::default();
            // On the GPU where built with it (`whisper-cuda`); VIRALCLIP_WHISPER_GPU=0 keeps such a
            // build on the CPU (the same binary's words and times, side by side).
            let gpu = cfg!(feature = "whisper-cuda") && switch("VIRALCLIP_WHISPER_GPU", true);
            params.use_gpu(gpu);
            // Flash attention: off by default (whisper.cpp's CPU path was 1.5× slower with it on
            // the demo, 2 cores), and whisper.cpp drops DTW word timing when it is on (the word
            // times here are the tokens' own timestamps, which it keeps). VIRALCLIP_WHISPER_FLASH=1
            // turns it on, for comparison or a GPU.
            let flash = switch("VIRALCLIP_WHISPER_FLASH", false);
            params.flash_attn(flash);
            let ctx = WhisperContext::new_with_params(path, params)
                .map_err(|e| Error::WhisperModel(format!("{}: not a Whisper model: {e}", path.display())))?;
            // One thread per core, up to 8 (whisper.cpp gains little beyond); VIRALCLIP_WHISPER_THREADS
            // sets it.
            let threads = std::env::var("VIRALCLIP_WHISPER_THREADS")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(2)
                        .min(8)
                }) as i32;
            tracing::debug!(gpu, flash, threads, model = %path.display(), "whisper loaded");
            Ok(Whisper {
                ctx,
                path: path.to_path_buf(),
                threads,
                gpu,
            })
        }
    }

    impl Whisper {
        /// The threads whisper.cpp computes with.
        pub fn threads(&self) -> i32 {
            self.threads
        }

        /// Whether whisper.cpp was asked to run on the GPU (a `whisper-cuda` build, unless
        /// VIRALCLIP_WHISPER_GPU=0); whisper.cpp itself falls back to the CPU where no card is found.
        pub fn gpu(&self) -> bool {
            self.gpu
        }
    }

    /// An on/off switch from the environment (`0`/`off`/`false` is off), `default` when unset.
    fn switch(name: &str, default: bool) -> bool {
        match std::env::var(name) {
            Ok(v) => !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "0" | "off" | "false" | "no"
            ),
            Err(_) => default,
        }
    }

    impl Transcriber for Whisper {
        fn name(&self) -> String {
            self.path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        }

        fn transcribe(
            &mut self,
            samples: &[f32],
            language: Option<&str>,
            progress: Arc<dyn Fn(f32) + Send + Sync>,
            cancel: Arc<AtomicBool>,
            segments: Option<SegmentSink>,
        ) -> Result<Speech> {
            let mut state = self
                .ctx
                .create_state()
                .map_err(|e| Error::Transcription(e.to_string()))?;
            let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
            params.set_n_threads(self.threads);
            params.set_language(Some(language.unwrap_or("auto")));
            params.set_print_progress(false);
            params.set_print_realtime(false);
            params.set_print_special(false);
            params.set_print_timestamps(false);
            params.set_suppress_blank(true);
            params.set_no_speech_thold(0.6);
            // Word times for captions and clip edges (tokens' own timestamps: DTW would need the
            // model's alignment heads by name, and whisper.cpp drops DTW with flash attention).
            params.set_token_timestamps(true);
            let p = progress.clone();
            params.set_progress_callback_safe(move |pct: i32| p(pct as f32 / 100.0));
            let c = cancel.clone();
            // whisper-rs 0.16's abort trampoline casts its user data to `*mut F` although it
            // stored a `Box<dyn FnMut>`; with F = Box<dyn FnMut> the two agree.
            let abort: Box<dyn FnMut() -> bool> = Box::new(move || c.load(Ordering::Relaxed));
            params.set_abort_callback_safe(abort);
            // whisper-rs never frees a segment callback, so the sender sits behind a slot that is
            // emptied (closing the channel) as soon as whisper.cpp returns.
            let streaming = segments.is_some();
            let sink = Arc::new(Mutex::new(segments));
            if streaming {
                let slot = sink.clone();
                params.set_segment_callback_safe_lossy(move |seg: SegmentCallbackData| {
                    if let Some(tx) = slot.lock().expect("segment sink").as_ref() {
                        let (s, e) = (
                            seg.start_timestamp as f64 / 100.0,
                            seg.end_timestamp as f64 / 100.0,
                        );
                        let _ = tx.send(Cue::new(s, e, seg.text.trim()));
                    }
                });
            }
            let res = state.full(params, samples);
            sink.lock().expect("segment sink").take();
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            res.map_err(|e| Error::Transcription(e.to_string()))?;
            let mut cues = Vec::new();
            let eot = self.ctx.token_eot();
            for seg in state.as_iter() {
                let text = seg
                    .to_str_lossy()
                    .map_err(|e| Error::Transcription(e.to_string()))?;
                if seg.no_speech_probability() > 0.8 && text.split_whitespace().count() < 4 {
                    continue;
                }
                let (s, e) = (
                    seg.start_timestamp() as f64 / 100.0,
                    seg.end_timestamp() as f64 / 100.0,
                );
                let mut tokens = Vec::new();
                for k in 0..seg.n_tokens() {
                    let Some(tok) = seg.get_token(k) else { continue };
                    let data = tok.token_data();
                    if data.id >= eot {
                        continue; // [_BEG_], timestamps, <|endoftext|> and the other specials
                    }
                    let Ok(bytes) = tok.to_bytes() else { continue };
                    let (t0, t1) = (data.t0 as f64 / 100.0, data.t1 as f64 / 100.0);
                    tokens.push((bytes, t0.clamp(s, e), t1.clamp(s, e)));
                }
                cues.push(Cue::new(s, e, text.trim()).with_words(words_from_tokens(&tokens)));
            }
            let detected = whisper_rs::get_lang_str(state.full_lang_id_from_state())
                .unwrap_or(language.unwrap_or("unknown"))
                .to_string();
            let before = cues.len();
            let (cues, dropped) = filter::apply(cues);
            tracing::debug!(before, kept = cues.len(), "whisper segments filtered");
            progress(1.0);
            Ok(Speech {
                cues,
                language: detected,
                dropped,
            })
        }
    }
}
