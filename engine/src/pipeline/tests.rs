//! The pipeline's own tests: scoring and selection with a fake scorer, and the video path through
//! a scripted [`Media`] (no FFmpeg).

use super::*;
use crate::cue::Cue;
use crate::media::{ClipFile, CutMode, Limits, OnFrame};
use crate::score::ScoreWeights;
use crate::shape::Shape;
use std::sync::Mutex;

/// Rates a text by its exclamation marks and by "спасибо" (as the clickbait-trained
/// popularity head does a thank-you), and remembers what it was asked.
struct Fake(Arc<Mutex<Vec<String>>>);

impl TextScorer for Fake {
    fn labels(&self) -> &[String] {
        &[]
    }
    fn neutral(&self) -> Option<usize> {
        None
    }
    fn weights(&self) -> ScoreWeights {
        ScoreWeights::default()
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn score(&mut self, texts: &[String], _: &mut dyn FnMut(usize, usize)) -> Result<Vec<TextScore>> {
        self.0.lock().unwrap().extend(texts.iter().cloned());
        Ok(texts
            .iter()
            .map(|t| TextScore {
                popularity: if t.to_lowercase().contains("спасибо") {
                    1.0
                } else {
                    (t.matches('!').count() as f32 * 0.3).min(0.9)
                },
                emotions: Vec::new(),
            })
            .collect())
    }
}

#[test]
fn formulas_are_left_out_before_scoring() {
    let cues = vec![
        Cue::new(0.0, 10.0, "Добрый день."),
        Cue::new(10.0, 20.0, "Сегодня облачно."),
        Cue::new(20.0, 30.0, "Не может быть! Это невероятно!"),
        Cue::new(30.0, 40.0, "Завтра дождь."),
        Cue::new(40.0, 50.0, "Спасибо, что были с нами. До свидания!"),
    ];
    let transcript = Transcript::repair(
        cues,
        CueSource::SubtitleFile {
            format: "srt".into(),
            encoding: "utf-8".into(),
        },
    );
    let cfg = SelectConfig {
        min_secs: 5.0,
        max_secs: 10.0,
        count: 1,
        window_secs: 5.0,
        ..SelectConfig::default()
    };
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut engine = Engine::new(Box::new(Fake(asked.clone())));
    let a = engine.analyse(&transcript, None, &cfg, &no_progress()).unwrap();
    let asked_now = asked.lock().unwrap().clone();
    assert_eq!(
        asked_now.len(),
        3,
        "the greeting and the sign-off are not scored: {asked_now:?}"
    );
    assert!(asked_now
        .iter()
        .all(|t| !t.contains("Спасибо") && !t.contains("Добрый")));
    assert_eq!(a.virality[0], 0.0);
    assert_eq!(a.virality[4], 0.0);
    assert_eq!(a.moments[0].first, 2, "the exclamation wins: {:?}", a.moments);

    // With formulas kept the thank-you wins, as it did before.
    let keep = SelectConfig {
        skip_formulas: false,
        ..cfg
    };
    let a = engine.analyse(&transcript, None, &keep, &no_progress()).unwrap();
    assert_eq!(a.moments[0].first, 4, "{:?}", a.moments);
}

#[test]
fn windows_scored_while_heard_are_reused() {
    let cues = vec![
        Cue::new(0.0, 5.0, "Добрый день."),
        Cue::new(5.0, 10.0, "Сегодня облачно."),
        Cue::new(10.0, 15.0, "Не может быть! Это невероятно!"),
        Cue::new(15.0, 20.0, "Завтра дождь."),
        Cue::new(20.0, 25.0, "Ветер стихнет!"),
        Cue::new(25.0, 30.0, "Спасибо, что были с нами."),
    ];
    let cfg = SelectConfig {
        min_secs: 10.0,
        max_secs: 20.0,
        count: 2,
        window_secs: 10.0,
        ..SelectConfig::default()
    };
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut fake = Fake(asked.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let known = std::thread::scope(|s| {
        let scoring = s.spawn(|| score_as_heard(&mut fake, rx, &cfg));
        for c in &cues {
            tx.send(c.clone()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(tx);
        scoring.join().unwrap()
    });
    let during = std::mem::take(&mut *asked.lock().unwrap());
    // Only windows no later segment can change, each text once: the window that starts at
    // the fifth cue still ran into the end of what had been heard.
    let mut unique = during.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), during.len(), "a text scored twice: {during:?}");
    assert!(!during.is_empty());
    assert!(!during.iter().any(|t| t == "Ветер стихнет!"), "{during:?}");
    assert_eq!(known.len(), during.len());

    let source = CueSource::Whisper {
        model: "test".into(),
        language: "ru".into(),
    };
    let transcript = Transcript::repair(cues, source);
    let mut engine = Engine::new(Box::new(Fake(asked.clone())));
    let reused = engine
        .analyse_with(&transcript, None, &cfg, &no_progress(), &known)
        .unwrap();
    let after = std::mem::take(&mut *asked.lock().unwrap());
    assert_eq!(after, ["Ветер стихнет!"], "only the last window is left to score");
    assert_eq!(reused.prefetched, 4);
    let fresh = engine.analyse(&transcript, None, &cfg, &no_progress()).unwrap();
    assert_eq!(fresh.prefetched, 0);
    assert_eq!(reused.virality, fresh.virality);
    assert_eq!(reused.moments, fresh.moments);
}

/// Media that knows one "video" by heart: 60 s, 640×360, an embedded text subtitle stream,
/// and that records what it was asked to cut (the pipeline's video path without FFmpeg).
#[derive(Default)]
struct Scripted(Arc<Mutex<Vec<(f64, f64, bool)>>>);

impl Media for Scripted {
    fn probe(&self, path: &Path, _: &Limits) -> Result<MediaInfo> {
        Ok(MediaInfo {
            container: "scripted".into(),
            duration: 60.0,
            size_bytes: std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len(),
            video: Some(crate::media::VideoInfo {
                codec: "h264".into(),
                width: 640,
                height: 360,
                fps: 25.0,
            }),
            audio: None,
            subtitles: vec![crate::media::SubtitleStream {
                index: 2,
                codec: "subrip".into(),
                language: Some("ru".into()),
                is_text: true,
            }],
        })
    }
    fn subtitle_stream(&self, _: &Path, index: usize) -> Result<Vec<Cue>> {
        assert_eq!(index, 2);
        Ok((0..12)
            .map(|i| {
                let text = if i == 7 {
                    "Не может быть! Это невероятно!"
                } else {
                    "Завтра дождь."
                };
                Cue::new(i as f64 * 5.0, i as f64 * 5.0 + 4.5, text)
            })
            .collect())
    }
    fn audio_16k(&self, _: &Path, _: f64, _: &dyn Fn(f32), _: &AtomicBool) -> Result<Vec<f32>> {
        panic!("the embedded subtitles are used: no audio is decoded")
    }
    fn audio_span(&self, _: &Path, _: f64, _: f64) -> Result<Vec<f32>> {
        panic!("no framing for original clips")
    }
    fn frames(&self, _: &Path, _: (f64, f64), _: f64, _: u32, _: &mut OnFrame) -> Result<(u32, u32)> {
        panic!("no framing for original clips")
    }
    fn cut(
        &self,
        _: &Path,
        (s, e): (f64, f64),
        _: CutMode,
        shape: Option<Shape>,
        out: &Path,
    ) -> Result<ClipFile> {
        self.0.lock().unwrap().push((s, e, shape.is_some()));
        std::fs::write(out, b"clip").unwrap();
        Ok(ClipFile {
            path: out.into(),
            width: 640,
            height: 360,
            duration: e - s,
            source_start: s,
            size_bytes: 4,
            mode: CutMode::Precise,
        })
    }
    fn thumbnail(&self, _: &Path, _: f64, _: u32, out: &Path) -> Result<crate::media::Thumbnail> {
        std::fs::write(out, b"jpeg").unwrap();
        Ok(crate::media::Thumbnail {
            path: out.into(),
            width: 320,
            height: 180,
            size_bytes: 4,
        })
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("viralclip-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The pipeline reaches media only through [`Media`]: a scripted one (no FFmpeg) gives a
/// video's facts and its embedded subtitles, and the clips are cut where the moments are.
#[test]
fn a_video_goes_through_the_media_trait() {
    let dir = scratch("media-trait");
    let video = dir.join("talk.mp4");
    std::fs::write(&video, b"not really a video").unwrap();
    let cut = Arc::new(Mutex::new(Vec::new()));
    let mut engine = Engine::new(Box::new(Fake(Arc::new(Mutex::new(Vec::new())))))
        .with_media(Box::new(Scripted(cut.clone())));
    let mut req = ClipRequest::new(&video, dir.join("out"));
    req.select = SelectConfig {
        min_secs: 5.0,
        max_secs: 10.0,
        count: 2,
        ..SelectConfig::default()
    };
    let report = engine
        .run(&req, no_progress(), Arc::new(AtomicBool::new(false)))
        .unwrap();
    assert!(
        matches!(
            report.transcript.source,
            CueSource::EmbeddedStream { index: 2, .. }
        ),
        "{:?}",
        report.transcript.source
    );
    assert!(
        report.moments[0].text.contains("Не может быть!"),
        "{:?}",
        report.moments[0]
    );
    let cuts = cut.lock().unwrap().clone();
    assert_eq!(cuts.len(), report.moments.len());
    for m in &report.moments {
        assert!(cuts.contains(&(m.start, m.end, false)), "{m:?} not cut: {cuts:?}");
        let c = m.clip.as_ref().expect("a clip");
        assert!(dir.join("out").join(&c.path).is_file() && dir.join("out").join(&c.thumbnail).is_file());
    }
    assert_eq!(report.settings["framing"], "none");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without media (a build without FFmpeg) a video is refused by name; a subtitle file alone
/// still gives its moments.
#[test]
fn without_media_a_video_is_refused_and_subtitles_still_work() {
    let dir = scratch("no-media");
    let video = dir.join("talk.mp4");
    std::fs::write(&video, b"not really a video").unwrap();
    let srt = dir.join("talk.srt");
    std::fs::write(&srt, "1\n00:00:00,000 --> 00:00:06,000\nНе может быть! Это невероятно!\n\n2\n00:00:06,500 --> 00:00:12,000\nЗавтра дождь.\n").unwrap();
    let mut engine = Engine::new(Box::new(Fake(Arc::new(Mutex::new(Vec::new())))))
        .with_media(Box::new(crate::media::NoMedia));
    let no = Arc::new(AtomicBool::new(false));
    let e = engine
        .run(
            &ClipRequest::new(&video, dir.join("a")),
            no_progress(),
            no.clone(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported("media")), "{e}");
    let mut req = ClipRequest::new(&srt, dir.join("b"));
    req.select.min_secs = 5.0;
    let report = engine.run(&req, no_progress(), no).unwrap();
    assert!(!report.moments.is_empty());
    assert!(report.moments.iter().all(|m| m.clip.is_none()));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Issue #22's defect: with `--min-secs 5 --max-secs 14`, a plain sentence standing just
/// before the emotional line took the score of the window running on into that line, and
/// its quote and reasons showed a line the clip did not hold.
#[test]
fn a_clip_is_scored_quoted_and_explained_by_what_it_holds() {
    let cues = vec![
        Cue::new(0.0, 6.0, "Сегодня мы поговорим о погоде."),
        Cue::new(6.5, 12.0, "Не может быть! Это невероятно!"),
        Cue::new(12.5, 18.0, "Завтра будет дождь."),
        Cue::new(18.5, 24.0, "В субботу сухо."),
    ];
    let source = CueSource::SubtitleFile {
        format: "srt".into(),
        encoding: "utf-8".into(),
    };
    let transcript = Transcript::repair(cues, source);
    let cfg = SelectConfig {
        min_secs: 5.0,
        max_secs: 14.0,
        count: 3,
        ..SelectConfig::default()
    };
    let mut engine = Engine::new(Box::new(Fake(Arc::new(Mutex::new(Vec::new())))));
    let a = engine.analyse(&transcript, None, &cfg, &no_progress()).unwrap();
    assert!(!a.moments.is_empty());
    let top = engine.moment_report(&a.moments[0], &transcript, &a, &WholeText::of(&transcript));
    assert!(
        top.text.contains("Не может быть!"),
        "the emotional line wins: {top:?}"
    );
    for m in &a.moments {
        let r = engine.moment_report(m, &transcript, &a, &WholeText::of(&transcript));
        assert!(r.text.contains(&r.quote), "quote outside the clip: {r:?}");
        assert!(
            r.reasons[0].contains(&format!("«{}»", r.quote)),
            "{:?}",
            r.reasons
        );
        if !r.text.contains('!') {
            assert!(r.virality < 0.1, "a plain clip scored by a line it lacks: {r:?}");
        }
    }
}

/// An SRT of `n` cues over `secs` seconds, each cue `words` words long.
fn srt(n: usize, secs: f64, words: usize) -> String {
    let per = secs / n as f64;
    let time = crate::captions::srt_time;
    (0..n)
        .map(|i| {
            let text: Vec<String> = (0..words).map(|k| format!("слово{}", i * words + k)).collect();
            let start = i as f64 * per;
            format!(
                "{}\n{} --> {}\n{}.\n\n",
                i + 1,
                time(start),
                time(start + per),
                text.join(" ")
            )
        })
        .collect()
}

/// Issue 25: scoring work follows the duration, not the cue count. The same 1,000 seconds of
/// words as 250 cues of 4 s and as 2,000 cues of 0.5 s: the dense file asks the model for about
/// as much text as the plain one (before, eight times as much: one 8 s window per cue), and the
/// plain one is left as it was.
#[test]
fn a_dense_transcript_costs_about_what_a_plain_one_costs() {
    let dir = scratch("dense");
    let mut asked_chars = Vec::new();
    for (name, n, words) in [("plain", 250, 8), ("dense", 2000, 1)] {
        let path = dir.join(format!("{name}.srt"));
        std::fs::write(&path, srt(n, 1000.0, words)).unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let mut engine = Engine::new(Box::new(Fake(asked.clone())));
        let report = engine
            .run(
                &ClipRequest::new(&path, dir.join(name)),
                no_progress(),
                Arc::new(AtomicBool::new(false)),
            )
            .unwrap();
        assert_eq!(report.transcript.words, 2000, "{name}: every word is kept");
        assert!(!report.moments.is_empty());
        if name == "plain" {
            assert_eq!(
                report.transcript.cues, 250,
                "a transcript that is not dense is not folded"
            );
        }
        let chars: usize = asked.lock().unwrap().iter().map(|t| t.chars().count()).sum();
        asked_chars.push(chars);
    }
    let ratio = asked_chars[1] as f64 / asked_chars[0] as f64;
    assert!(
        ratio < 1.5,
        "dense/plain text scored: {asked_chars:?} ({ratio:.2}×)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Subtitles alone that run past the duration limit are refused by name, before any scoring;
/// subtitles given with a video lose the cues that start after the video ends.
#[test]
fn subtitles_are_bounded_by_the_limit_and_by_the_video() {
    let dir = scratch("bounded-subs");
    let long = dir.join("long.srt");
    std::fs::write(
        &long,
        "1\n00:00:00,000 --> 00:00:05,000\nНачало.\n\n2\n05:00:00,000 --> 05:00:05,000\nКонец.\n",
    )
    .unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut engine = Engine::new(Box::new(Fake(asked.clone()))).with_media(Box::new(Scripted::default()));
    let no = Arc::new(AtomicBool::new(false));
    let e = engine
        .run(&ClipRequest::new(&long, dir.join("a")), no_progress(), no.clone())
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }) && e.is_bad_input(), "{e}");
    assert!(
        e.to_string().contains("long.srt") && e.to_string().contains("300 min"),
        "{e}"
    );
    assert!(asked.lock().unwrap().is_empty(), "refused before scoring");
    // The subtitle size cap is the request's (`--max-subs-mb`): this 80-byte file is over 64.
    let mut req = ClipRequest::new(&long, dir.join("a"));
    req.limits.max_subtitle_bytes = 64;
    let e = inspect(&req, &Scripted::default()).unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { .. }) && e.to_string().contains("long.srt"),
        "{e}"
    );

    // The scripted video is 60 s long; these subtitles run to 120 s.
    let video = dir.join("talk.mp4");
    std::fs::write(&video, b"not really a video").unwrap();
    let subs = dir.join("talk.srt");
    std::fs::write(&subs, srt(24, 120.0, 6)).unwrap();
    let mut req = ClipRequest::new(&video, dir.join("b"));
    req.subs = Some(subs);
    req.select.min_secs = 5.0;
    req.select.max_secs = 10.0;
    let report = engine.run(&req, no_progress(), no).unwrap();
    assert_eq!(report.transcript.cues, 12);
    assert_eq!(report.transcript.repairs.past_end_dropped, 12);
    assert!(report.transcript.lines.iter().all(|c| c.start < 60.0));
    assert!(
        asked.lock().unwrap().iter().all(|t| !t.contains("слово72")),
        "nothing past the end is scored"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
