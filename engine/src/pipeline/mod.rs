//! The whole job: input → cues (subtitles, an embedded stream, or Whisper) → scored windows →
//! moments → clips and thumbnails → `report.json`.

use crate::cue::{format_time, Cue, CueSource, Transcript};
use crate::error::{Error, Result};
use crate::headline::ScoredLine;
use crate::media::{Media, MediaInfo};
use crate::report::*;
use crate::score::TextScore;
use crate::scorer::TextScorer;
use crate::select::{self, Moment, SelectConfig, Window};
use crate::subtitle;
use crate::transcribe::Transcriber;
use crate::whisper_model::WhisperModel;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

pub use crate::media::{CutMode, Limits};

mod clips;
mod input;
mod moments;
mod overlap;
mod request;

use clips::{clip_name, cut_one};
pub use clips::{Recut, CAPTION_FONT};
pub use input::{bound, inspect, Input};
pub use moments::short;
use moments::WholeText;
use overlap::model_text;
pub use overlap::score_as_heard;
pub use request::{is_subtitle_file, no_progress, ClipRequest, Progress, ShapeRequest, Stage};

/// Scored windows and the moments chosen from them: the part of the job that needs no media.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub windows: Vec<Window>,
    pub scores: Vec<TextScore>,
    pub virality: Vec<f32>,
    pub moments: Vec<Moment>,
    /// Windows whose scores came from the `known` scores (not from the model now).
    pub prefetched: usize,
    /// The media's end, when there is media: no clip runs past it.
    pub media_end: Option<f64>,
}

/// Scores by the text the model saw.
pub type Known = std::collections::HashMap<String, TextScore>;

/// The clip pipeline with its models.
pub struct Engine {
    scorer: Box<dyn TextScorer>,
    transcriber: Option<Box<dyn Transcriber>>,
    whisper: Option<WhisperModel>,
    /// Probes, decodes and cuts ([`crate::media::built_in`] unless set).
    media: Box<dyn Media>,
    /// Finds faces for framing shaped clips (one at a time: cutting threads share it).
    faces: Option<std::sync::Mutex<Box<dyn crate::faces::FaceDetector>>>,
    /// Seconds it took to load the model, copied into reports.
    pub model_load_secs: f64,
}

impl Engine {
    pub fn new(scorer: Box<dyn TextScorer>) -> Self {
        Engine {
            scorer,
            transcriber: None,
            whisper: Some(WhisperModel::default()),
            media: crate::media::built_in(),
            faces: None,
            model_load_secs: 0.0,
        }
    }

    /// Probe, decode and cut with this media instead of the built-in one.
    pub fn with_media(mut self, media: Box<dyn Media>) -> Self {
        self.media = media;
        self
    }

    /// Frame shaped clips (9:16 and the others) by the faces this detector finds; without one
    /// they get a still crop in the middle of the frame.
    pub fn with_faces(mut self, detector: Box<dyn crate::faces::FaceDetector>) -> Self {
        self.faces = Some(std::sync::Mutex::new(detector));
        self
    }

    /// Transcribe with this Whisper model (a file, or a name fetched from the hub), loaded the
    /// first time it is needed; `None`: videos without subtitles are refused. The default is
    /// [`WhisperModel::default`] (Whisper base from the hub).
    pub fn with_whisper(mut self, model: Option<WhisperModel>) -> Self {
        self.whisper = model;
        self
    }

    /// Loads the transcriber now (a service checks its models at start instead of in a job).
    pub fn load_transcriber(&mut self) -> Result<()> {
        self.transcriber().map(|_| ())
    }

    /// Transcribe with this transcriber.
    pub fn with_transcriber(mut self, t: Box<dyn Transcriber>) -> Self {
        self.transcriber = Some(t);
        self
    }

    pub fn scorer(&mut self) -> &mut dyn TextScorer {
        self.scorer.as_mut()
    }

    fn transcriber(&mut self) -> Result<&mut Box<dyn Transcriber>> {
        if self.transcriber.is_none() {
            let Some(model) = &self.whisper else {
                return Err(Error::WhisperModel(
                    "the video has no subtitles and this setup transcribes nothing (no Whisper model)".into(),
                ));
            };
            #[cfg(feature = "whisper")]
            {
                let path = model.resolve()?;
                self.transcriber = Some(Box::new(crate::transcribe::Whisper::load(&path)?));
            }
            #[cfg(not(feature = "whisper"))]
            {
                let _ = model;
                return Err(Error::Unsupported("whisper"));
            }
        }
        Ok(self.transcriber.as_mut().expect("set above"))
    }

    /// Scores windows of `transcript` and picks moments; `media_end` bounds them.
    pub fn analyse(
        &mut self,
        transcript: &Transcript,
        media_end: Option<f64>,
        cfg: &SelectConfig,
        progress: &Progress,
    ) -> Result<Analysis> {
        self.analyse_with(transcript, media_end, cfg, progress, &Known::new())
    }

    /// [`Engine::analyse`], taking the scores of texts in `known` from there instead of the model
    /// (what [`score_as_heard`] scored during transcription).
    pub fn analyse_with(
        &mut self,
        transcript: &Transcript,
        media_end: Option<f64>,
        cfg: &SelectConfig,
        progress: &Progress,
        known: &Known,
    ) -> Result<Analysis> {
        cfg.validate()?;
        let windows = select::windows(&transcript.cues, cfg.window_span());
        // The model judges what was said: formulaic sentences are taken out first, and a window
        // of nothing else is not scored (virality 0).
        let texts: Vec<String> = windows.iter().map(|w| model_text(&w.text, cfg)).collect();
        let to_score: Vec<usize> = (0..texts.len())
            .filter(|&i| !texts[i].trim().is_empty() && !known.contains_key(&texts[i]))
            .collect();
        let batch: Vec<String> = to_score.iter().map(|&i| texts[i].clone()).collect();
        let p = progress.clone();
        let scored = self.scorer.score(&batch, &mut |done, total| {
            p(Stage::Score, done as f32 / total.max(1) as f32)
        })?;
        let silent = TextScore {
            popularity: 0.0,
            emotions: vec![0.0; self.scorer.labels().len()],
        };
        let mut scores: Vec<TextScore> = texts
            .iter()
            .map(|t| known.get(t).unwrap_or(&silent).clone())
            .collect();
        let prefetched = texts.iter().filter(|t| known.contains_key(*t)).count();
        for (i, s) in to_score.into_iter().zip(scored) {
            scores[i] = s;
        }
        let (w, neutral) = (self.scorer.weights(), self.scorer.neutral());
        let virality: Vec<f32> = scores.iter().map(|s| s.virality(w, neutral)).collect();
        progress(Stage::Select, 0.0);
        let moments = select::select(&transcript.cues, &windows, &virality, media_end, cfg);
        progress(Stage::Select, 1.0);
        Ok(Analysis {
            windows,
            scores,
            virality,
            moments,
            prefetched,
            media_end,
        })
    }

    /// Runs the whole job. Writes `clips/clip-NN.mp4`, `clips/clip-NN.jpg` and `report.json` in
    /// `req.out_dir`.
    pub fn run(&mut self, req: &ClipRequest, progress: Progress, cancel: Arc<AtomicBool>) -> Result<Report> {
        progress(Stage::Probe, 0.0);
        let input = inspect(req, self.media.as_ref())?;
        self.run_inspected(req, input, progress, cancel)
    }

    /// [`Engine::run`] on an input its caller has already checked with [`inspect`] (before
    /// loading the models), so it is not probed and parsed twice.
    pub fn run_inspected(
        &mut self,
        req: &ClipRequest,
        input: Input,
        progress: Progress,
        cancel: Arc<AtomicBool>,
    ) -> Result<Report> {
        let t_all = Instant::now();
        let mut timings = Timings {
            model_load: self.model_load_secs,
            ..Default::default()
        };
        let Input {
            subtitle_only,
            size_bytes,
            info,
            subtitles,
            probe_secs,
        } = input;
        timings.probe = probe_secs;
        progress(Stage::Probe, 1.0);

        let mut known = Known::new();
        let mut transcript = match subtitles {
            Some(t) => t,
            None => {
                let info = info.as_ref().expect("probed");
                self.media_transcript(req, info, &mut timings, &progress, &cancel, &mut known)
                    .map_err(|e| e.on_input(&req.input))?
            }
        };
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }

        let media_end = info.as_ref().map(|i| i.duration).filter(|d| *d > 0.0);
        bound(&mut transcript, media_end, &req.select)?;
        let t = Instant::now();
        let analysis = self.analyse_with(&transcript, media_end, &req.select, &progress, &known)?;
        timings.score = t.elapsed().as_secs_f64();
        timings.windows_scored = analysis.windows.len();
        timings.windows_prefetched = analysis.prefetched;

        std::fs::create_dir_all(&req.out_dir).map_err(|e| Error::io(&req.out_dir, e))?;
        let whole = WholeText::of(&transcript);
        let mut moments: Vec<MomentReport> = analysis
            .moments
            .iter()
            .map(|m| self.moment_report(m, &transcript, &analysis, &whole))
            .collect();

        if !subtitle_only {
            let t = Instant::now();
            let clips_dir = req.out_dir.join("clips");
            std::fs::create_dir_all(&clips_dir).map_err(|e| Error::io(&clips_dir, e))?;
            let n = moments.len();
            let jobs = match req.cut_jobs {
                0 => std::thread::available_parallelism()
                    .map_or(1, |c| c.get() / 4)
                    .max(1),
                j => j,
            }
            .min(n.max(1));
            // Workers take moments in rank order from one queue; each writes its own clip-NN
            // files. The first error stops the others and fails the job.
            use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
            let queue = std::sync::Mutex::new(moments.iter_mut());
            let (media, faces) = (self.media.as_ref(), self.faces.as_ref());
            let (stop, done) = (AtomicBool::new(false), AtomicUsize::new(0));
            let worker = || -> Result<()> {
                while !stop.load(Relaxed) {
                    if cancel.load(Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    let Some(m) = queue.lock().expect("clip queue").next() else {
                        break;
                    };
                    let shaped = Self::shape_for(
                        media,
                        faces,
                        req,
                        info.as_ref(),
                        &transcript,
                        m.start,
                        m.end,
                        &clips_dir,
                        &clip_name(m.rank),
                    );
                    let facts = shaped.and_then(|shape| {
                        cut_one(
                            media,
                            &req.input,
                            &clips_dir,
                            &clip_name(m.rank),
                            (m.start, m.end),
                            req.mode,
                            shape,
                        )
                    });
                    m.clip = Some(facts.inspect_err(|_| stop.store(true, Relaxed))?);
                    let d = done.fetch_add(1, Relaxed) + 1;
                    progress(Stage::Cut, d as f32 / n as f32);
                }
                Ok(())
            };
            progress(Stage::Cut, 0.0);
            std::thread::scope(|scope| {
                let workers: Vec<_> = (0..jobs).map(|_| scope.spawn(worker)).collect();
                workers
                    .into_iter()
                    .try_for_each(|w| w.join().expect("a cutting thread panicked"))
            })
            .map_err(|e| e.on_input(&req.input))?;
            progress(Stage::Cut, 1.0);
            timings.cut = t.elapsed().as_secs_f64();
        }

        timings.total = t_all.elapsed().as_secs_f64() + self.model_load_secs;
        let report = Report {
            viralclip_version: env!("CARGO_PKG_VERSION").into(),
            input: InputFacts {
                path: req.input.clone(),
                kind: if subtitle_only {
                    "subtitles".into()
                } else {
                    "video".into()
                },
                size_bytes,
                media: info
                    .as_ref()
                    .map(|i| serde_json::to_value(i).expect("serialises")),
                subtitles: req.subs.clone(),
                source: req.source.clone(),
            },
            transcript: TranscriptFacts {
                source: transcript.source.clone(),
                cues: transcript.cues.len(),
                words: transcript.words(),
                span_secs: transcript.span(),
                repairs: transcript.repairs,
                lines: transcript.cues.clone(),
            },
            model: self.scorer.describe(),
            settings: self.settings(req),
            moments,
            timeline: analysis
                .windows
                .iter()
                .zip(&analysis.virality)
                .map(|(w, v)| TimelinePoint {
                    start: w.start,
                    end: w.end,
                    virality: *v,
                })
                .collect(),
            timings,
        };
        let path = req.out_dir.join("report.json");
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
        progress(Stage::Done, 1.0);
        Ok(report)
    }

    fn settings(&self, req: &ClipRequest) -> serde_json::Value {
        let framing = match (&req.shape.format, &self.faces) {
            (crate::format::Format::Original, _) => "none",
            (_, Some(_)) => "faces (YuNet)",
            (_, None) => "centre (no face detector)",
        };
        serde_json::json!({
            "select": req.select,
            "language": req.language,
            "mode": req.mode,
            "shape": req.shape,
            "framing": framing,
        })
    }

    fn media_transcript(
        &mut self,
        req: &ClipRequest,
        info: &MediaInfo,
        timings: &mut Timings,
        progress: &Progress,
        cancel: &Arc<AtomicBool>,
        known: &mut Known,
    ) -> Result<Transcript> {
        // A text subtitle stream in the container beats transcribing: prefer the asked language.
        let mut streams: Vec<_> = info.subtitles.iter().filter(|s| s.is_text).collect();
        streams.sort_by_key(|s| (s.language.as_deref() != req.language.as_deref(), s.index));
        for s in streams {
            let cues = self.media.subtitle_stream(&req.input, s.index)?;
            let t = Transcript::repair(
                cues,
                CueSource::EmbeddedStream {
                    index: s.index,
                    codec: s.codec.clone(),
                },
            );
            if !t.cues.is_empty() {
                return Ok(t);
            }
        }
        if info.audio.is_none() {
            return Err(Error::NoAudio(req.input.clone()));
        }
        // Load Whisper before decoding so a missing model fails fast.
        self.transcriber()?;
        let t = Instant::now();
        let p = progress.clone();
        let samples = self.media.audio_16k(
            &req.input,
            req.limits.max_duration_secs,
            &move |f| p(Stage::DecodeAudio, f),
            cancel,
        )?;
        timings.audio_decode = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let p: Arc<dyn Fn(f32) + Send + Sync> = {
            let p = progress.clone();
            Arc::new(move |f| p(Stage::Transcribe, f))
        };
        let overlap = req.overlap.unwrap_or_else(|| self.scorer.on_accelerator());
        let (tr, scorer) = (
            self.transcriber.as_mut().expect("loaded above"),
            self.scorer.as_mut(),
        );
        let model = tr.name();
        let language = req.language.as_deref();
        let speech = if overlap {
            // Whisper's segments go to a scoring thread as they are decoded; what it scored is
            // reused by `analyse_with`, which scores only what changed or came last.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::scope(|s| {
                let scoring = s.spawn(|| score_as_heard(scorer, rx, &req.select));
                let speech = tr.transcribe(&samples, language, p, cancel.clone(), Some(tx));
                *known = scoring.join().expect("the scoring thread panicked");
                speech
            })?
        } else {
            tr.transcribe(&samples, language, p, cancel.clone(), None)?
        };
        timings.transcribe = t.elapsed().as_secs_f64();
        let mut transcript = Transcript::repair(
            speech.cues,
            CueSource::Whisper {
                model,
                language: speech.language,
            },
        );
        transcript.repairs.hallucinations_dropped = speech.dropped;
        if transcript.cues.is_empty() {
            return Err(Error::EmptyTranscript(
                "Whisper heard no speech in the audio".into(),
            ));
        }
        Ok(transcript)
    }
}

#[cfg(test)]
mod tests;
