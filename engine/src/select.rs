//! Moment selection: windows of cues to score, candidate clips built from consecutive cues, and
//! the best non-overlapping ones with their edges snapped and padded. Pure and deterministic:
//! same cues and scores in, same moments out.

use crate::cue::Cue;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How clips are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectConfig {
    /// Shortest clip, seconds.
    pub min_secs: f64,
    /// Longest clip, seconds.
    pub max_secs: f64,
    /// How many clips at most.
    pub count: usize,
    /// Silence added before and after the cues of a clip when there is room, seconds.
    pub pad_secs: f64,
    /// Each scored window spans at least this many seconds of consecutive cues (or all that is
    /// left), but never more than `min_secs` (see [`SelectConfig::window_span`]).
    pub window_secs: f64,
    /// Drop greetings, thank-yous, goodbyes and subscribe calls from windows before scoring
    /// ([`crate::boilerplate`]); a window of nothing else scores 0.
    #[serde(default = "yes")]
    pub skip_formulas: bool,
}

fn yes() -> bool {
    true
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            min_secs: 15.0,
            max_secs: 60.0,
            count: 5,
            pad_secs: 0.3,
            window_secs: 8.0,
            skip_formulas: true,
        }
    }
}

impl SelectConfig {
    /// How long the scored windows are: `window_secs`, shortened to `min_secs` when that is
    /// less, so that every candidate clip (at least `min_secs` long) holds at least the window
    /// that starts at its first cue, and a clip's score never comes from text past its end.
    pub fn window_span(&self) -> f64 {
        self.window_secs.min(self.min_secs)
    }

    /// Rejects settings that cannot produce a clip.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Invalid(m.into()));
        if !(self.min_secs.is_finite() && self.max_secs.is_finite()) || self.min_secs < 1.0 {
            return bad("--min-secs must be at least 1");
        }
        if self.max_secs < self.min_secs {
            return bad("--max-secs must not be less than --min-secs");
        }
        if self.max_secs > 600.0 {
            return bad("--max-secs must be at most 600");
        }
        if self.count == 0 || self.count > 50 {
            return bad("--count must be between 1 and 50");
        }
        if !(0.0..=5.0).contains(&self.pad_secs) || !(1.0..=60.0).contains(&self.window_secs) {
            return bad("padding must be 0-5 s and windows 1-60 s");
        }
        Ok(())
    }
}

/// A run of consecutive cues scored as one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub first: usize,
    pub last: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// One window per cue: the cue and those after it until the window spans `window_secs`.
pub fn windows(cues: &[Cue], window_secs: f64) -> Vec<Window> {
    (0..cues.len())
        .map(|first| {
            let mut last = first;
            while last + 1 < cues.len() && cues[last].end - cues[first].start < window_secs {
                last += 1;
            }
            let text = cues[first..=last]
                .iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            Window {
                first,
                last,
                start: cues[first].start,
                end: cues[last].end,
                text,
            }
        })
        .collect()
}

/// A chosen clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moment {
    /// 1 = best.
    pub rank: usize,
    /// First and last cue (inclusive).
    pub first: usize,
    pub last: usize,
    /// Clip edges in the source, seconds, padding included.
    pub start: f64,
    pub end: f64,
    /// The candidate's score: 0.6·peak + 0.4·mean window virality, plus 0.02 for each edge on a
    /// sentence boundary and up to 0.03 for opening near its best line.
    pub score: f32,
    /// Highest and mean virality of the windows inside the clip.
    pub peak: f32,
    pub mean: f32,
    /// The window with the highest virality.
    pub peak_window: usize,
    pub starts_sentence: bool,
    pub ends_sentence: bool,
    /// Its first line stands on its own (no "and then…", no lower-case run-on).
    pub opens_on_its_own: bool,
    /// Its best window starts at its first line (the hook comes first).
    pub opens_with_peak: bool,
    /// Later moments that were mostly the same lines as this one, merged into it (their edges).
    pub merged: Vec<(f64, f64)>,
    /// Set when the transcript was too short for `min_secs` and the whole of it was taken.
    pub shorter_than_min: bool,
    /// How many candidates competed.
    pub candidates: usize,
}

impl Moment {
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }
}

#[derive(Debug, Clone)]
struct Candidate {
    first: usize,
    last: usize,
    score: f32,
    peak: f32,
    mean: f32,
    peak_window: usize,
    starts_sentence: bool,
    ends_sentence: bool,
    opens_on_its_own: bool,
}

impl Candidate {
    /// Starts on a sentence that stands on its own and ends on a finished one.
    fn whole(&self) -> bool {
        self.starts_sentence && self.opens_on_its_own && self.ends_sentence
    }
}

/// Two clips are near-duplicates when most of their words are the same (Jaccard ≥ this).
const NEAR_DUPLICATE: f64 = 0.6;

fn words(cues: &[Cue]) -> std::collections::BTreeSet<String> {
    cues.iter()
        .flat_map(|c| c.text.split(|ch: char| !ch.is_alphanumeric()))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn jaccard(a: &std::collections::BTreeSet<String>, b: &std::collections::BTreeSet<String>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(b).count() as f64 / union as f64
}

/// Picks up to `cfg.count` non-overlapping moments. `windows` must come from [`windows`] over the
/// same cues (with [`SelectConfig::window_span`]) and `virality[i]` score `windows[i]`. A
/// candidate's score, peak and mean come only from the windows that lie wholly inside it.
/// Where any candidate starts on a sentence that stands on its own and ends on a finished one,
/// only those compete; among equals, the one that opens nearer its best line wins. A candidate
/// that is mostly the same lines as a chosen moment is merged into it instead of taking a slot.
/// `media_end`, when known, bounds every clip.
pub fn select(
    cues: &[Cue],
    windows: &[Window],
    virality: &[f32],
    media_end: Option<f64>,
    cfg: &SelectConfig,
) -> Vec<Moment> {
    assert_eq!(windows.len(), virality.len(), "one score per window");
    let end_limit = media_end.unwrap_or(f64::INFINITY);
    let usable = cues.iter().take_while(|c| c.start < end_limit).count();
    let cues = &cues[..usable];
    if cues.is_empty() {
        return Vec::new();
    }
    let mut prefix = vec![0.0f64; virality.len() + 1];
    for (i, v) in virality.iter().enumerate() {
        prefix[i + 1] = prefix[i] + *v as f64;
    }
    let span = |f: usize, l: usize| cues[l].end.min(end_limit) - cues[f].start;
    let mut shorter_than_min = false;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for f in 0..cues.len() {
        for l in f..cues.len() {
            let s = span(f, l);
            if s > cfg.max_secs {
                break;
            }
            if s >= cfg.min_secs {
                spans.push((f, l));
            }
        }
    }
    if spans.is_empty() {
        // Nothing fits: a transcript shorter than min_secs becomes one clip of all of it; cues
        // longer than max_secs on their own become clips cut at max_secs.
        shorter_than_min = span(0, cues.len() - 1) < cfg.min_secs;
        if shorter_than_min {
            spans.push((0, cues.len() - 1));
        } else {
            spans.extend((0..cues.len()).map(|i| (i, i)));
        }
    }
    let mut candidates: Vec<Candidate> = spans
        .into_iter()
        .filter_map(|(f, l)| {
            // Windows inside [f, l]: window i starts at cue i and their ends never decrease, so
            // they are f..=hi. None when even window f runs past l (windows longer than the
            // shortest clip): then nothing inside the clip was scored on its own.
            if windows.get(f).is_none_or(|w| w.last > l) {
                return None;
            }
            let mut hi = f;
            while hi < l && hi + 1 < windows.len() && windows[hi + 1].last <= l {
                hi += 1;
            }
            let lo = f;
            let (mut peak, mut peak_window) = (f32::MIN, lo);
            for (i, v) in virality.iter().enumerate().take(hi + 1).skip(lo) {
                if *v > peak {
                    peak = *v;
                    peak_window = i;
                }
            }
            let mean = ((prefix[hi + 1] - prefix[lo]) / (hi + 1 - lo) as f64) as f32;
            let starts_sentence = f == 0 || cues[f - 1].ends_sentence();
            let ends_sentence = cues[l].ends_sentence();
            let bonus = 0.02 * (starts_sentence as u8 + ends_sentence as u8) as f32;
            // The hook: how late in the clip its best window starts (0 = at its first line).
            let late = ((windows[peak_window].start - cues[f].start) / span(f, l).max(1e-9)).clamp(0.0, 1.0);
            let hook = 0.03 * (1.0 - late) as f32;
            Some(Candidate {
                first: f,
                last: l,
                score: 0.6 * peak + 0.4 * mean + bonus + hook,
                peak,
                mean,
                peak_window,
                starts_sentence,
                ends_sentence,
                opens_on_its_own: cues[f].opens_on_its_own(),
            })
        })
        .collect();
    if candidates.iter().any(Candidate::whole) {
        candidates.retain(Candidate::whole);
    }
    let total = candidates.len();
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.first.cmp(&b.first))
            .then(a.last.cmp(&b.last))
    });
    let mut chosen: Vec<Moment> = Vec::new();
    let mut chosen_words = Vec::new();
    for c in candidates {
        if chosen.len() == cfg.count {
            break;
        }
        let (start, end) = padded_edges(cues, c.first, c.last, end_limit, cfg);
        let taken = |m: &Moment| {
            (start < m.end && m.start < end) || m.merged.iter().any(|&(s, e)| start < e && s < end)
        };
        if end - start <= 0.0 || chosen.iter().any(taken) {
            continue;
        }
        let w = words(&cues[c.first..=c.last]);
        if let Some(k) = chosen_words.iter().position(|o| jaccard(o, &w) >= NEAR_DUPLICATE) {
            let m: &mut Moment = &mut chosen[k];
            m.merged.push((start, end));
            continue;
        }
        chosen_words.push(w);
        chosen.push(Moment {
            rank: 0,
            first: c.first,
            last: c.last,
            start,
            end,
            score: c.score,
            peak: c.peak,
            mean: c.mean,
            peak_window: c.peak_window,
            starts_sentence: c.starts_sentence,
            ends_sentence: c.ends_sentence,
            opens_on_its_own: c.opens_on_its_own,
            opens_with_peak: c.peak_window == c.first,
            merged: Vec::new(),
            shorter_than_min,
            candidates: total,
        });
    }
    for (i, m) in chosen.iter_mut().enumerate() {
        m.rank = i + 1;
    }
    chosen
}

/// Clip edges: the cues' own edges, widened by up to `pad_secs` into the silence around them
/// (at most half of it, never before 0 or past the media's end), and cut to `max_secs`.
fn padded_edges(cues: &[Cue], f: usize, l: usize, end_limit: f64, cfg: &SelectConfig) -> (f64, f64) {
    // Each side may take half the silence to its neighbour, so neighbouring clips never overlap.
    let floor = if f == 0 {
        0.0
    } else {
        (cues[f - 1].end.min(cues[f].start) + cues[f].start) / 2.0
    };
    let ceil = cues
        .get(l + 1)
        .map_or(end_limit, |n| (n.start.max(cues[l].end) + cues[l].end) / 2.0)
        .min(end_limit);
    let core_start = cues[f].start;
    let core_end = cues[l].end.min(end_limit).min(core_start + cfg.max_secs);
    let room = (cfg.max_secs - (core_end - core_start)).max(0.0) / 2.0;
    let pad = cfg.pad_secs.min(room);
    let start = (core_start - pad).max(floor).max(0.0);
    let end = (core_end + pad).min(ceil.max(core_end));
    (start, end)
}

/// The silence kept before a clip's first word and after its last (seconds).
pub const BREATH_SECS: f64 = 0.25;

/// Clip edges on word boundaries: a clip never starts or ends inside a word (one cut at the
/// edge is taken whole), and keeps [`BREATH_SECS`] of silence around its first and last words
/// where there is that much, else half the gap to the word outside. `words` are the source's,
/// in time order; without any inside `[start, end)` the edges stay as they are.
pub fn snap_to_words(start: f64, end: f64, words: &[crate::cue::Word], media_end: Option<f64>) -> (f64, f64) {
    let Some(first) = words.iter().position(|w| w.end > start) else {
        return (start, end);
    };
    let Some(last) = words.iter().rposition(|w| w.start < end) else {
        return (start, end);
    };
    if last < first {
        return (start, end);
    }
    let before = first.checked_sub(1).map(|i| words[i].end).unwrap_or(0.0);
    let after = words.get(last + 1).map(|w| w.start).unwrap_or(f64::INFINITY);
    let (a, b) = (words[first].start, words[last].end);
    let s = (a - BREATH_SECS).max((before + a) / 2.0).max(0.0);
    let mut e = (b + BREATH_SECS).min((b + after) / 2.0);
    if let Some(m) = media_end {
        e = e.min(m);
    }
    (s, e.max(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_edges_land_on_word_boundaries_with_a_breath() {
        use crate::cue::Word;
        let w = |text: &str, start: f64, end: f64| Word {
            text: text.into(),
            start,
            end,
        };
        let words = vec![
            w("раз", 0.0, 0.4),
            w("два", 0.5, 1.0),
            w("три", 2.0, 2.5),
            w("четыре", 3.5, 4.2),
        ];
        // Starting inside «два» and ending inside «три»: both taken whole, half the 0.1 s gap
        // before, a full breath after (the next gap is a second).
        let (s, e) = snap_to_words(0.7, 2.2, &words, None);
        assert!((s - 0.45).abs() < 1e-9 && (e - 2.75).abs() < 1e-9, "{s} {e}");
        // Long silence before the first word is cut down to a breath.
        let (s, _) = snap_to_words(1.1, 2.6, &words, None);
        assert!((s - 1.75).abs() < 1e-9, "{s}");
        // No edge ever falls inside a word, for any edges.
        for i in 0..50 {
            for j in i + 1..50 {
                let (s, e) = snap_to_words(i as f64 * 0.1, j as f64 * 0.1, &words, Some(4.3));
                for x in &words {
                    assert!(
                        !((x.start < s && s < x.end) || (x.start < e && e < x.end)),
                        "{s} {e} cut {x:?}"
                    );
                }
                assert!((e <= 4.3 || j as f64 * 0.1 > 4.3) && s <= e, "{s} {e}");
            }
        }
        assert_eq!(snap_to_words(5.0, 6.0, &words, None), (5.0, 6.0));
        assert_eq!(snap_to_words(1.0, 2.0, &[], None), (1.0, 2.0));
    }

    /// Cues of `len` seconds with `gap` between them; `text(i)` names them.
    fn cues(n: usize, len: f64, gap: f64) -> Vec<Cue> {
        (0..n)
            .map(|i| {
                let s = i as f64 * (len + gap);
                Cue::new(s, s + len, format!("Line {i}."))
            })
            .collect()
    }

    fn cfg(min: f64, max: f64, count: usize) -> SelectConfig {
        SelectConfig {
            min_secs: min,
            max_secs: max,
            count,
            ..SelectConfig::default()
        }
    }

    #[test]
    fn windows_cover_window_secs() {
        let c = cues(10, 3.0, 1.0);
        let w = windows(&c, 8.0);
        assert_eq!(w.len(), 10);
        assert_eq!((w[0].first, w[0].last), (0, 2)); // 0..3, 4..7, 8..11 → 11 s ≥ 8
        assert_eq!(w[0].text, "Line 0. Line 1. Line 2.");
        assert_eq!((w[9].first, w[9].last), (9, 9));
    }

    #[test]
    fn the_hot_spot_wins_and_clips_respect_bounds() {
        let c = cues(40, 3.0, 1.0); // 160 s
        let w = windows(&c, 8.0);
        let mut v = vec![0.1f32; w.len()];
        v[20] = 0.95; // cue 20 starts at 80 s
        let m = select(&c, &w, &v, Some(160.0), &cfg(15.0, 30.0, 3));
        assert_eq!(m.len(), 3);
        assert!(m[0].start <= 80.0 && m[0].end >= 91.0, "{:?}", m[0]);
        for x in &m {
            assert!(x.duration() >= 15.0 && x.duration() <= 30.0 + 1e-9, "{x:?}");
        }
        for (i, a) in m.iter().enumerate() {
            for b in &m[i + 1..] {
                assert!(a.end <= b.start || b.end <= a.start, "overlap {a:?} {b:?}");
            }
        }
        assert_eq!(m.iter().map(|x| x.rank).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn deterministic() {
        let c = cues(30, 2.5, 0.5);
        let w = windows(&c, 8.0);
        let v: Vec<f32> = (0..w.len()).map(|i| ((i * 7919) % 13) as f32 / 13.0).collect();
        let a = select(&c, &w, &v, None, &cfg(10.0, 20.0, 4));
        let b = select(&c, &w, &v, None, &cfg(10.0, 20.0, 4));
        assert_eq!(a, b);
    }

    #[test]
    fn padding_stays_in_silence_and_in_the_media() {
        let c = vec![
            Cue::new(0.1, 5.0, "Один."),
            Cue::new(5.1, 12.0, "Два три."),
            Cue::new(14.0, 19.9, "Четыре."),
        ];
        let cf = cfg(5.0, 10.0, 5);
        let w = windows(&c, cf.window_span());
        let v = vec![0.5; w.len()];
        let m = select(&c, &w, &v, Some(20.0), &cf);
        for x in &m {
            assert!(x.start >= 0.0 && x.end <= 20.0, "{x:?}");
        }
        let last = m.iter().find(|x| x.first == 2).expect("cue 2 is a clip");
        assert!((last.start - 13.7).abs() < 1e-9, "{last:?}");
        assert!((last.end - 20.0).abs() < 1e-9, "{last:?}");
    }

    #[test]
    fn neighbours_share_the_silence_between_them() {
        let c = vec![
            Cue::new(1.0, 9.0, "A."),
            Cue::new(10.0, 19.5, "B."),
            Cue::new(20.0, 30.0, "C."),
        ];
        let w = windows(&c, 1.0);
        let m = select(&c, &w, &[0.5, 0.6, 0.7], None, &cfg(8.0, 12.0, 3));
        assert_eq!(m.len(), 3);
        let mut spans: Vec<(f64, f64)> = m.iter().map(|x| (x.start, x.end)).collect();
        spans.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(spans, [(0.7, 9.3), (9.7, 19.75), (19.75, 30.3)]);
    }

    #[test]
    fn sentence_edges_are_preferred() {
        let c = vec![
            Cue::new(0.0, 4.0, "Intro words."),
            Cue::new(4.0, 8.0, "We start"),
            Cue::new(8.0, 12.0, "right here."),
            Cue::new(12.0, 16.0, "and then"),
            Cue::new(16.0, 20.0, "more"),
        ];
        let w = windows(&c, 1.0);
        let v = vec![0.5; 5];
        let m = select(&c, &w, &v, None, &cfg(8.0, 8.0, 1));
        // 0-8 ends mid-sentence, 8-16 starts and ends mid-sentence, 4-12 is a whole sentence.
        assert_eq!((m[0].first, m[0].last), (1, 2));
        assert!(m[0].starts_sentence && m[0].ends_sentence);
    }

    fn timed(lines: &[&str], len: f64) -> Vec<Cue> {
        lines
            .iter()
            .enumerate()
            .map(|(i, t)| Cue::new(i as f64 * len, (i + 1) as f64 * len, *t))
            .collect()
    }

    #[test]
    fn a_clip_never_opens_on_a_line_that_leans_on_the_one_before() {
        let c = timed(
            &[
                "Плановое заседание.",
                "А потом все закричали от восторга!",
                "Заседание закрыто.",
                "Всё.",
            ],
            4.0,
        );
        let cf = cfg(4.0, 8.0, 1);
        let w = windows(&c, cf.window_span());
        let m = select(&c, &w, &[0.1, 0.9, 0.1, 0.1], None, &cf);
        assert_eq!((m[0].first, m[0].last), (0, 1), "{m:?}");
        assert!(m[0].opens_on_its_own && m[0].starts_sentence && m[0].ends_sentence);
    }

    #[test]
    fn the_clip_opens_near_its_best_line() {
        let lines = ["Один.", "Два.", "Три.", "Вот это да!", "Пять.", "Шесть.", "Семь."];
        let c = timed(&lines, 4.0);
        let cf = cfg(8.0, 12.0, 1);
        let w = windows(&c, cf.window_span());
        let mut v = vec![0.2; w.len()];
        v[3] = 0.9;
        let m = select(&c, &w, &v, None, &cf);
        assert_eq!(m[0].first, 3, "no dead air before the hook: {m:?}");
        assert!(m[0].opens_with_peak);
    }

    #[test]
    fn near_duplicate_moments_are_merged() {
        let block = ["Это невероятно!", "Учёные нашли сокровище!", "Прямо под городом!"];
        let mut lines: Vec<&str> = block.to_vec();
        lines.extend(["Погода хорошая.", "Ветер слабый.", "Дождя нет.", "Тихо."]);
        lines.extend(block);
        let c = timed(&lines, 3.0);
        let cf = cfg(8.0, 9.0, 3);
        let w = windows(&c, cf.window_span());
        let v: Vec<f32> = c
            .iter()
            .map(|x| {
                if block.contains(&x.text.as_str()) {
                    0.9
                } else {
                    0.1
                }
            })
            .collect();
        let m = select(&c, &w, &v, None, &cf);
        assert_eq!((m[0].first, m[0].last), (0, 2), "{m:?}");
        assert_eq!(m[0].merged, [(21.0, 30.0)], "{m:?}");
        assert!(
            m.iter().all(|x| x.first < 7),
            "the repeat is not a moment of its own: {m:?}"
        );
    }

    #[test]
    fn short_transcript_becomes_one_clip() {
        let c = cues(2, 3.0, 1.0);
        let w = windows(&c, 8.0);
        let m = select(&c, &w, &[0.3, 0.4], Some(9.0), &cfg(15.0, 60.0, 5));
        assert_eq!(m.len(), 1);
        assert!(m[0].shorter_than_min);
        assert_eq!((m[0].first, m[0].last), (0, 1));
    }

    #[test]
    fn cues_past_the_media_end_are_ignored() {
        let c = cues(10, 3.0, 1.0);
        let cf = cfg(5.0, 10.0, 5);
        let w = windows(&c, cf.window_span());
        let m = select(&c, &w, &[0.5; 10], Some(20.0), &cf);
        assert!(!m.is_empty());
        assert!(m.iter().all(|x| x.end <= 20.0));
        assert!(m.iter().all(|x| x.last <= 4));
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(cfg(30.0, 20.0, 1).validate().is_err());
        assert!(cfg(10.0, 20.0, 0).validate().is_err());
        assert!(SelectConfig::default().validate().is_ok());
    }

    /// The selection defect of issue #22, by construction: whatever the cues, their scores and
    /// the length settings, a moment's score, its peak window (what the quote and the reasons
    /// are made of) and its mean come only from windows that lie wholly inside the clip.
    mod inside {
        use super::*;
        use proptest::prelude::*;

        fn transcript(parts: &[(f64, f64, bool, f32)]) -> (Vec<Cue>, Vec<f32>) {
            let mut t = 0.0;
            let mut cues = Vec::new();
            for (i, (len, gap, ends, _)) in parts.iter().enumerate() {
                let text = if *ends {
                    format!("Word {i}.")
                } else {
                    format!("word {i}")
                };
                cues.push(Cue::new(t, t + len, text));
                t += len + gap;
            }
            (cues, parts.iter().map(|p| p.3).collect())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn moments_hold_what_earned_their_score(
                parts in prop::collection::vec((0.3f64..12.0, 0.0f64..3.0, any::<bool>(), 0.0f32..1.0), 1..50),
                min_secs in 1.0f64..30.0,
                extra in 0.0f64..40.0,
                count in 1usize..6,
                window_secs in 1.0f64..20.0,
                cut in prop::option::of(0.2f64..1.2),
            ) {
                let (cues, v) = transcript(&parts);
                let cfg = SelectConfig { min_secs, max_secs: min_secs + extra, count, window_secs, ..SelectConfig::default() };
                prop_assert!(cfg.validate().is_ok());
                let media_end = cut.map(|c| c * cues.last().unwrap().end);
                let end_limit = media_end.unwrap_or(f64::INFINITY);
                let w = windows(&cues, cfg.window_span());
                let moments = select(&cues, &w, &v, media_end, &cfg);
                for m in &moments {
                    let inside: Vec<usize> = (0..w.len()).filter(|&i| w[i].first >= m.first && w[i].last <= m.last).collect();
                    prop_assert!(!inside.is_empty(), "no window inside {m:?}");
                    prop_assert!(inside.contains(&m.peak_window), "peak window {:?} outside {m:?}", w[m.peak_window]);
                    prop_assert_eq!(m.peak, v[m.peak_window]);
                    prop_assert!(inside.iter().all(|&i| v[i] <= m.peak));
                    let mean = inside.iter().map(|&i| v[i] as f64).sum::<f64>() / inside.len() as f64;
                    prop_assert!((m.mean as f64 - mean).abs() < 1e-5, "mean {} vs {mean}", m.mean);
                    // In time too: the quoted window lies within the clip's edges (where the
                    // cues fit max_secs at all; a single longer cue is cut at max_secs).
                    let pw = &w[m.peak_window];
                    prop_assert!(pw.start >= m.start - 1e-9, "{pw:?} starts before {m:?}");
                    if cues[m.last].end.min(end_limit) - cues[m.first].start <= cfg.max_secs {
                        prop_assert!(pw.end.min(end_limit) <= m.end + 1e-9, "{pw:?} ends after {m:?}");
                    }
                }
            }
        }
    }
}
