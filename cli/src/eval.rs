//! `viralclip eval`: how well moments are found, on a corpus of talks with planted lines
//! (`bench/moments/build.sh` makes one: `NAME.mp4`, `NAME.srt`, `NAME.truth.json`). Each talk is
//! analysed as a user's would be (from its subtitles, and with `--whisper` also from its speech),
//! and the ranked moments are judged against the planted spans: hit@1, hit@3 and average
//! precision, the Rhapsody protocol (the planted span as the relevant segment; a moment is
//! relevant when it holds at least half of a planted span). The window scores are computed once
//! per talk, so several `--weights` are compared on the same scores.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use viralclip_engine::cue::Transcript;
use viralclip_engine::pipeline::{no_progress, Engine};
use viralclip_engine::score::ScoreWeights;
use viralclip_engine::select::{self, SelectConfig};
use viralclip_engine::whisper_model::WhisperModel;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The corpus folder (bench/moments/build.sh OUT).
    #[arg(long, default_value = "out/moments")]
    pub corpus: PathBuf,
    #[command(flatten)]
    pub model: crate::args::ModelOpts,
    /// Also judge the moments found from Whisper's transcript of each talk (a file or a name).
    #[arg(long)]
    pub whisper: Option<WhisperModel>,
    #[arg(long, default_value = "ru")]
    pub lang: String,
    /// At most this many talks (in name order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Virality weights to compare, POPULARITY:EMOTION each (default: the model's own).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<String>,
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    #[arg(long, default_value_t = 6.0)]
    pub min_secs: f64,
    #[arg(long, default_value_t = 15.0)]
    pub max_secs: f64,
    /// Score greetings, thank-yous and sign-offs too.
    #[arg(long)]
    pub keep_formulas: bool,
}

/// A talk's truth file.
#[derive(Debug, Deserialize)]
pub struct Truth {
    pub name: String,
    pub topic: String,
    pub duration: f64,
    pub planted: Vec<Span>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Span {
    pub start: f64,
    pub end: f64,
    pub kind: String,
}

/// How one ranked list of moments did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    pub hit1: bool,
    pub hit3: bool,
    pub ap: f64,
}

/// Whether a moment `[start, end]` holds at least half of `span`.
fn relevant(start: f64, end: f64, span: &Span) -> bool {
    let overlap = (end.min(span.end) - start.max(span.start)).max(0.0);
    overlap >= 0.5 * (span.end - span.start)
}

/// Judges moments (best first) against the planted spans. Average precision: the mean, over the
/// planted spans, of the precision at the rank where each is first found (0 when never found).
pub fn judge(moments: &[(f64, f64)], planted: &[Span]) -> Judged {
    let mut found = vec![false; planted.len()];
    let (mut hits, mut sum) = (0usize, 0.0);
    let mut first_hit = None;
    for (k, &(s, e)) in moments.iter().enumerate() {
        let new: Vec<usize> = (0..planted.len())
            .filter(|&i| !found[i] && relevant(s, e, &planted[i]))
            .collect();
        if planted.iter().any(|p| relevant(s, e, p)) && first_hit.is_none() {
            first_hit = Some(k);
        }
        if !new.is_empty() {
            hits += 1;
            for i in new {
                found[i] = true;
                sum += hits as f64 / (k + 1) as f64;
            }
        }
    }
    Judged {
        hit1: first_hit == Some(0),
        hit3: first_hit.is_some_and(|k| k < 3),
        ap: if planted.is_empty() {
            0.0
        } else {
            sum / planted.len() as f64
        },
    }
}

fn parse_weights(s: &str) -> Result<ScoreWeights> {
    let (p, e) = s
        .split_once(':')
        .with_context(|| format!("--weights {s:?}: expected POPULARITY:EMOTION, e.g. 0.8:0.2"))?;
    Ok(ScoreWeights {
        popularity: p.trim().parse()?,
        emotion: e.trim().parse()?,
    })
}

/// One talk's material: its truth and its transcripts (subtitles, and Whisper's when asked).
struct Talk {
    truth: Truth,
    transcripts: Vec<(&'static str, Transcript)>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    let mut truths: Vec<PathBuf> = std::fs::read_dir(&a.corpus)
        .with_context(|| {
            format!(
                "{}: no corpus here (bench/moments/build.sh makes one)",
                a.corpus.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".truth.json"))
        .collect();
    truths.sort();
    truths.truncate(a.limit.unwrap_or(usize::MAX));
    if truths.is_empty() {
        bail!(
            "{}: no *.truth.json files (bench/moments/build.sh makes them)",
            a.corpus.display()
        );
    }
    let cfg = SelectConfig {
        min_secs: a.min_secs,
        max_secs: a.max_secs,
        count: a.count,
        skip_formulas: !a.keep_formulas,
        ..SelectConfig::default()
    };
    cfg.validate()?;
    let (scorer, _) = crate::load_scorer(&a.model)?;
    let own = viralclip_engine::scorer::TextScorer::weights(&scorer);
    let weights: Vec<ScoreWeights> = if a.weights.is_empty() {
        vec![own]
    } else {
        a.weights
            .iter()
            .map(|s| parse_weights(s))
            .collect::<Result<_>>()?
    };
    let mut whisper = match &a.whisper {
        Some(m) => Some(load_whisper(m)?),
        None => None,
    };
    let mut engine = Engine::new(Box::new(scorer)).with_whisper(None);
    let mut talks = Vec::new();
    for path in &truths {
        let truth: Truth =
            serde_json::from_slice(&std::fs::read(path)?).with_context(|| format!("{}", path.display()))?;
        let srt = a.corpus.join(format!("{}.srt", truth.name));
        let mut transcripts = vec![("subs", viralclip_engine::subtitle::read_file(&srt)?)];
        if let Some(w) = whisper.as_mut() {
            let video = a.corpus.join(format!("{}.mp4", truth.name));
            transcripts.push(("whisper", transcribe(w.as_mut(), &video, &a.lang)?));
        }
        // As `Engine::run` does: no cue past the video, short cues folded into lines.
        for (_, t) in &mut transcripts {
            viralclip_engine::pipeline::bound(t, Some(truth.duration), &cfg)?;
        }
        talks.push(Talk { truth, transcripts });
    }

    let modes: Vec<&str> = talks[0].transcripts.iter().map(|(m, _)| *m).collect();
    let mut totals = vec![vec![(0usize, 0usize, 0.0f64); weights.len()]; modes.len()];
    for talk in &talks {
        for (mi, (mode, transcript)) in talk.transcripts.iter().enumerate() {
            let analysis = engine.analyse(transcript, Some(talk.truth.duration), &cfg, &no_progress())?;
            let neutral = engine.scorer().neutral();
            for (wi, w) in weights.iter().enumerate() {
                let virality: Vec<f32> = analysis.scores.iter().map(|s| s.virality(*w, neutral)).collect();
                let moments = select::select(
                    &transcript.cues,
                    &analysis.windows,
                    &virality,
                    Some(talk.truth.duration),
                    &cfg,
                );
                let spans: Vec<(f64, f64)> = moments.iter().map(|m| (m.start, m.end)).collect();
                let j = judge(&spans, &talk.truth.planted);
                let t = &mut totals[mi][wi];
                t.0 += j.hit1 as usize;
                t.1 += j.hit3 as usize;
                t.2 += j.ap;
                println!(
                    "{}",
                    serde_json::json!({
                        "case": "moments", "talk": talk.truth.name, "topic": talk.truth.topic, "mode": mode,
                        "weights": [w.popularity, w.emotion],
                        "planted": talk.truth.planted.iter().map(|p| serde_json::json!([p.kind, p.start, p.end])).collect::<Vec<_>>(),
                        "moments": spans.iter().map(|(s, e)| [(s * 10.0).round() / 10.0, (e * 10.0).round() / 10.0]).collect::<Vec<_>>(),
                        "hit@1": j.hit1, "hit@3": j.hit3, "ap": (j.ap * 1000.0).round() / 1000.0,
                    })
                );
            }
        }
    }
    let n = talks.len() as f64;
    eprintln!("\n| transcript | weights (popularity:emotion) | talks | hit@1 | hit@3 | AP |");
    eprintln!("| --- | --- | --- | --- | --- | --- |");
    for (mi, mode) in modes.iter().enumerate() {
        for (wi, w) in weights.iter().enumerate() {
            let (h1, h3, ap) = totals[mi][wi];
            println!(
                "{}",
                serde_json::json!({
                    "case": "moments_summary", "mode": mode, "weights": [w.popularity, w.emotion],
                    "talks": talks.len(), "hit@1": h1 as f64 / n, "hit@3": h3 as f64 / n, "map": ap / n,
                    "min_secs": cfg.min_secs, "max_secs": cfg.max_secs, "count": cfg.count,
                })
            );
            eprintln!(
                "| {mode} | {}:{} | {} | {:.2} | {:.2} | {:.3} |",
                w.popularity,
                w.emotion,
                talks.len(),
                h1 as f64 / n,
                h3 as f64 / n,
                ap / n
            );
        }
    }
    Ok(())
}

#[cfg(feature = "whisper")]
fn load_whisper(m: &WhisperModel) -> Result<Box<dyn viralclip_engine::transcribe::Transcriber>> {
    Ok(Box::new(viralclip_engine::transcribe::Whisper::load(
        &m.resolve()?,
    )?))
}

#[cfg(not(feature = "whisper"))]
fn load_whisper(_: &WhisperModel) -> Result<Box<dyn viralclip_engine::transcribe::Transcriber>> {
    Err(viralclip_engine::Error::Unsupported("whisper").into())
}

fn transcribe(
    w: &mut dyn viralclip_engine::transcribe::Transcriber,
    video: &Path,
    lang: &str,
) -> Result<Transcript> {
    use std::sync::{atomic::AtomicBool, Arc};
    use viralclip_engine::cue::CueSource;
    let cancel = Arc::new(AtomicBool::new(false));
    let media = viralclip_engine::media::built_in();
    let samples = media.audio_16k(video, f64::INFINITY, &|_| {}, &cancel)?;
    let speech = w.transcribe(&samples, Some(lang), Arc::new(|_| {}), cancel, None)?;
    let source = CueSource::Whisper {
        model: w.name(),
        language: speech.language,
    };
    Ok(Transcript::repair(speech.cues, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: f64, end: f64) -> Span {
        Span {
            start,
            end,
            kind: "shock".into(),
        }
    }

    #[test]
    fn judged_like_the_rhapsody_protocol() {
        let planted = [span(20.0, 28.0)];
        // Holds 6 of the 8 planted seconds at rank 1.
        let j = judge(&[(22.0, 35.0), (0.0, 10.0)], &planted);
        assert_eq!(
            j,
            Judged {
                hit1: true,
                hit3: true,
                ap: 1.0
            }
        );
        // Holds only 3 s at rank 1 (not relevant), all of it at rank 2.
        let j = judge(&[(25.0, 40.0), (15.0, 29.0), (0.0, 10.0)], &planted);
        assert_eq!(
            j,
            Judged {
                hit1: false,
                hit3: true,
                ap: 0.5
            }
        );
        // Found at rank 4: no hit@3, AP 1/4.
        let j = judge(&[(0.0, 5.0), (5.0, 10.0), (10.0, 15.0), (19.0, 30.0)], &planted);
        assert_eq!(
            j,
            Judged {
                hit1: false,
                hit3: false,
                ap: 0.25
            }
        );
        assert_eq!(judge(&[], &planted).ap, 0.0);
        // Two planted spans, one moment holding both: both count at rank 1.
        let two = [span(10.0, 12.0), span(13.0, 15.0)];
        assert_eq!(judge(&[(9.0, 16.0)], &two).ap, 1.0);
        assert_eq!(judge(&[(0.0, 5.0), (9.0, 12.5)], &two).ap, 0.25);
    }

    #[test]
    fn weights_parse() {
        let w = parse_weights("0.5:0.5").unwrap();
        assert_eq!((w.popularity, w.emotion), (0.5, 0.5));
        assert!(parse_weights("0.5").is_err());
    }
}
