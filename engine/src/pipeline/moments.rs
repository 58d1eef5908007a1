//! Each moment's report: its score, quote, reasons, title and tags, from the windows it holds.

use super::*;

impl Engine {
    pub(super) fn moment_report(
        &self,
        m: &Moment,
        t: &Transcript,
        a: &Analysis,
        whole: &WholeText,
    ) -> MomentReport {
        let labels = self.scorer.labels();
        let peak = &a.scores[m.peak_window];
        let quote = a.windows[m.peak_window].text.clone();
        let neutral = self.scorer.neutral();
        let emotions: Vec<EmotionProb> = peak
            .top_emotions(labels, 3)
            .into_iter()
            .map(|(l, p)| EmotionProb {
                label: l.to_string(),
                p,
            })
            .collect();
        let strongest = peak
            .emotions
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != neutral)
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map(|(i, p)| (labels.get(i).cloned().unwrap_or_default(), *p));
        let text = t.cues[m.first..=m.last]
            .iter()
            .map(|c| c.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut reasons = vec![format!(
            "peak virality {:.2} at {}: «{}»",
            m.peak,
            format_time(a.windows[m.peak_window].start),
            short(&quote, 90)
        )];
        let mut why = format!("popularity {:.2}", peak.popularity);
        if let Some((label, p)) = &strongest {
            why.push_str(&format!(", strongest emotion {label} {p:.2}"));
        }
        reasons.push(why);
        reasons.push(format!("mean virality {:.2} across the clip", m.mean));
        let opens = m.starts_sentence && m.opens_on_its_own;
        reasons.push(match (opens, m.ends_sentence) {
            (true, true) => "starts on a sentence that stands on its own and ends on a finished one".into(),
            (true, false) => "starts on a sentence that stands on its own; no sentence end fitted the length limits".into(),
            (false, true) if m.starts_sentence => "ends on a finished sentence; it opens on a line that leans on the one before (none better fitted)".into(),
            (false, true) => "ends on a finished sentence; no sentence start fitted the length limits".into(),
            (false, false) => "no sentence boundary fitted the length limits".into(),
        });
        if m.opens_with_peak {
            reasons.push("opens with its strongest line".into());
        }
        if !m.merged.is_empty() {
            let at: Vec<String> = m.merged.iter().map(|(s, _)| format_time(*s)).collect();
            reasons.push(format!(
                "{} near-duplicate moment{} (mostly the same lines, at {}) merged into this one",
                m.merged.len(),
                if m.merged.len() == 1 { "" } else { "s" },
                at.join(", ")
            ));
        }
        if m.shorter_than_min {
            reasons.push("the whole transcript is shorter than --min-secs, so all of it is one clip".into());
        }
        reasons.push(format!(
            "best {} of {} candidate clips without overlap",
            m.rank, m.candidates
        ));
        // Each line with the best virality of a window of the clip that holds it: the title is
        // the strongest sentence, the hashtags the clip's keywords and its strongest emotion.
        let scored: Vec<ScoredLine> = (m.first..=m.last)
            .map(|i| ScoredLine {
                text: &t.cues[i].text,
                score: a
                    .windows
                    .iter()
                    .zip(&a.virality)
                    .filter(|(w, _)| w.first <= i && i <= w.last && w.first >= m.first && w.last <= m.last)
                    .map(|(_, v)| *v)
                    .fold(f32::MIN, f32::max),
            })
            .collect();
        let lang = match &t.source {
            CueSource::Whisper { language, .. } if language.len() == 2 => language.as_str(),
            _ => crate::headline::guess_lang(&text),
        };
        let headline = crate::headline::headline(
            &scored,
            &whole.text,
            strongest.as_ref().map(|s| s.0.as_str()),
            lang,
        );
        // With word times (Whisper), the edges move onto word boundaries.
        let (start, end) = select::snap_to_words(m.start, m.end, &whole.words, a.media_end);
        MomentReport {
            rank: m.rank,
            start,
            end,
            duration: end - start,
            virality: 0.6 * m.peak + 0.4 * m.mean,
            popularity: peak.popularity,
            emotions,
            text,
            quote,
            reasons,
            title: headline.title,
            hashtags: headline.hashtags,
            clip: None,
        }
    }
}

/// What every moment's report reads from the whole transcript, gathered once per job: its text
/// (the video's keywords for hashtags) and its words with their times (clip edges).
pub(super) struct WholeText {
    text: String,
    words: Vec<crate::cue::Word>,
}

impl WholeText {
    pub(super) fn of(t: &Transcript) -> Self {
        WholeText {
            text: t
                .cues
                .iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            words: t.cues.iter().flat_map(|c| c.words.iter().cloned()).collect(),
        }
    }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}
