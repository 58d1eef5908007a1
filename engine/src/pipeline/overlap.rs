//! Scoring while Whisper transcribes: each window no later segment can change, scored once per
//! text as the segments arrive.

use super::*;

/// Scores windows of a transcript as its segments arrive, until the channel closes: each time,
/// the windows that later segments can no longer change (followed by another cue and a full
/// `window_secs` long) are scored, once per text. Returns the scores by the text the model saw,
/// for [`Engine::analyse_with`]. A scoring error stops it quietly: those windows are scored
/// (and the error reported) at the end.
pub fn score_as_heard(
    scorer: &mut dyn TextScorer,
    segments: std::sync::mpsc::Receiver<Cue>,
    cfg: &SelectConfig,
) -> Known {
    let mut known = Known::new();
    let mut raw: Vec<Cue> = Vec::new();
    let mut failed = false;
    // Cues whose windows were all final in an earlier round: their texts are scored (or, if a
    // later repair changed them, left to the end), so each round looks only past them.
    let mut settled = 0;
    while let Ok(cue) = segments.recv() {
        raw.push(cue);
        raw.extend(segments.try_iter());
        if failed {
            continue; // keep draining so the sender never notices
        }
        let (heard, _) = crate::transcribe::filter::apply(raw.clone());
        let source = CueSource::Whisper {
            model: String::new(),
            language: String::new(),
        };
        let cues = Transcript::repair(heard, source).cues;
        let rest = &cues[settled.min(cues.len())..];
        // Final windows come first: one that runs into the end of what was heard has every
        // later one doing the same.
        let fin: Vec<Window> = select::windows(rest, cfg.window_span())
            .into_iter()
            .take_while(|w| w.last + 1 < rest.len() && w.end - w.start >= cfg.window_span())
            .collect();
        settled += fin.len();
        let mut texts: Vec<String> = fin
            .iter()
            .map(|w| model_text(&w.text, cfg))
            .filter(|t| !t.trim().is_empty() && !known.contains_key(t))
            .collect();
        texts.sort();
        texts.dedup();
        if texts.is_empty() {
            continue;
        }
        match scorer.score(&texts, &mut |_, _| {}) {
            Ok(scores) => known.extend(texts.into_iter().zip(scores)),
            Err(e) => {
                tracing::warn!("scoring during transcription stopped: {e}");
                failed = true;
            }
        }
    }
    known
}

/// The text of a window as the model sees it.
pub(super) fn model_text(window: &str, cfg: &SelectConfig) -> String {
    if cfg.skip_formulas {
        crate::boilerplate::strip(window)
    } else {
        window.to_string()
    }
}
