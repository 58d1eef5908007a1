//! Cues: timed lines of text, the common currency between subtitles, transcription and selection.

use serde::{Deserialize, Serialize};

/// One timed line of text. Times are seconds from the start of the media.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cue {
    pub start: f64,
    pub end: f64,
    pub text: String,
    /// Its words with their own times, where the transcriber gave them (Whisper's token
    /// timestamps); empty for subtitles ([`crate::captions::spread_words`] fills in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub words: Vec<Word>,
}

/// One spoken word. Times are seconds (from the media's start in a cue, from the clip's start in
/// a clip's captions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    pub text: String,
    pub start: f64,
    pub end: f64,
}

impl Cue {
    pub fn new(start: f64, end: f64, text: impl Into<String>) -> Self {
        Cue {
            start,
            end,
            text: text.into(),
            words: Vec::new(),
        }
    }

    /// The same cue with its words.
    pub fn with_words(mut self, words: Vec<Word>) -> Self {
        self.words = words;
        self
    }

    /// Its words with times: the transcriber's where it gave them, else (subtitles) its words
    /// spread over its span in proportion to their length (a space counted with each word).
    pub fn timed_words(&self) -> Vec<Word> {
        if !self.words.is_empty() {
            return self.words.clone();
        }
        let words: Vec<&str> = self.text.split_whitespace().collect();
        let chars: usize = words.iter().map(|w| w.chars().count() + 1).sum();
        if words.is_empty() || self.end <= self.start {
            return Vec::new();
        }
        let per = (self.end - self.start) / chars as f64;
        let mut t = self.start;
        words
            .into_iter()
            .map(|w| {
                let start = t;
                t += (w.chars().count() + 1) as f64 * per;
                Word {
                    text: w.to_string(),
                    start,
                    end: t,
                }
            })
            .collect()
    }

    /// Duration in seconds.
    pub fn duration(&self) -> f64 {
        self.end - self.start
    }

    /// Whether the text ends a sentence (., !, ?, … and their closing quotes/brackets).
    pub fn ends_sentence(&self) -> bool {
        let t = self
            .text
            .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '»' | '”' | ')' | ']'));
        t.ends_with(['.', '!', '?', '…', '。', '！', '？'])
    }
}

/// Words that open a sentence leaning on the one before it ("and then…", «а потом…»): a clip
/// that starts there starts in the middle of a thought. Lower case, Russian and English.
const LEANING_OPENERS: &[&str] = &[
    "и",
    "а",
    "но",
    "или",
    "потом",
    "затем",
    "поэтому",
    "тогда",
    "причём",
    "причем",
    "зато",
    "однако",
    "также",
    "тоже",
    "ведь",
    "значит",
    "следовательно",
    "хотя",
    "and",
    "but",
    "so",
    "then",
    "because",
    "or",
    "also",
    "which",
    "though",
    "therefore",
    "thus",
];

impl Cue {
    /// Whether the text could open a clip on its own: it does not start in lower case (a
    /// sentence running on from the cue before) nor with a word that leans on what came before
    /// ("and", «потом», «поэтому»…). Says nothing about the previous cue; see
    /// [`crate::select`].
    pub fn opens_on_its_own(&self) -> bool {
        let t = self.text.trim_start_matches(|c: char| !c.is_alphanumeric());
        let Some(first) = t.chars().next() else {
            return false;
        };
        if first.is_lowercase() {
            return false;
        }
        let word: String = t
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '\'')
            .flat_map(char::to_lowercase)
            .collect();
        !LEANING_OPENERS.contains(&word.as_str())
    }
}

/// What was fixed while turning raw cues into a clean, ordered transcript.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repairs {
    /// Cues that were out of order and were sorted into place.
    pub reordered: usize,
    /// Cues whose end came before their start (the two were swapped).
    pub reversed: usize,
    /// Cues that overlapped the next one and were trimmed to end where it starts.
    pub overlaps_trimmed: usize,
    /// Cues dropped because they had no text, or no duration after trimming.
    pub empty_dropped: usize,
    /// Whisper segments dropped as hallucinations (credits, repeats on silence).
    pub hallucinations_dropped: usize,
    /// Cues folded into the one before them by [`Transcript::merge_short`] (a dense transcript:
    /// many short cues).
    #[serde(default)]
    pub short_merged: usize,
    /// Cues dropped because they start at or after the video's end.
    #[serde(default)]
    pub past_end_dropped: usize,
}

/// Where the cues came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CueSource {
    /// A subtitle file next to the video (or alone).
    SubtitleFile { format: String, encoding: String },
    /// A text subtitle stream inside the container.
    EmbeddedStream { index: usize, codec: String },
    /// Whisper transcription.
    Whisper { model: String, language: String },
}

/// Ordered, non-overlapping cues with a record of what was repaired.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    pub cues: Vec<Cue>,
    pub repairs: Repairs,
    pub source: CueSource,
}

impl Transcript {
    /// Build a transcript from raw cues: strips markup, drops empty ones, sorts, un-reverses and
    /// trims overlaps, counting each repair.
    pub fn repair(raw: Vec<Cue>, source: CueSource) -> Self {
        let mut repairs = Repairs::default();
        let mut cues: Vec<Cue> = Vec::with_capacity(raw.len());
        for mut cue in raw {
            cue.text = clean_text(&cue.text);
            if cue.text.is_empty() || !cue.start.is_finite() || !cue.end.is_finite() {
                repairs.empty_dropped += 1;
                continue;
            }
            if cue.end < cue.start {
                std::mem::swap(&mut cue.start, &mut cue.end);
                repairs.reversed += 1;
            }
            cue.start = cue.start.max(0.0);
            cues.push(cue);
        }
        // Count cues that are not where a stable sort by start puts them.
        for w in cues.windows(2) {
            if w[1].start < w[0].start {
                repairs.reordered += 1;
            }
        }
        cues.sort_by(|a, b| a.start.total_cmp(&b.start).then(a.end.total_cmp(&b.end)));
        let mut out: Vec<Cue> = Vec::with_capacity(cues.len());
        for mut cue in cues {
            if let Some(prev) = out.last_mut() {
                if cue.start < prev.end {
                    prev.end = cue.start;
                    repairs.overlaps_trimmed += 1;
                    if prev.end - prev.start <= 1e-3 {
                        // The earlier cue vanished: keep its words by prefixing them to this one
                        // (which is then held to the same length as any other: the webvtt fuzz
                        // target found a merged cue of a millisecond).
                        let prev = out.pop().expect("checked above");
                        cue.start = prev.start;
                        cue.text = format!("{} {}", prev.text, cue.text);
                        let words = std::mem::take(&mut cue.words);
                        cue.words = prev.words.into_iter().chain(words).collect();
                        repairs.empty_dropped += 1;
                    }
                }
            }
            if cue.end - cue.start <= 1e-3 {
                repairs.empty_dropped += 1;
                continue;
            }
            out.push(cue);
        }
        Transcript {
            cues: out,
            repairs,
            source,
        }
    }

    /// Folds runs of short cues into lines of at most `span` seconds (first start to last end),
    /// so that the work done per cue (one scored window each, candidates from each) grows with
    /// the transcript's duration, not with its cue count: two consecutive lines always span more
    /// than `span` together, so there are at most `2·duration/span + 1` of them, whatever the
    /// count. A cue that alone spans more than `span` stays as it is. A merged line keeps every word with its time ([`Cue::timed_words`]),
    /// so captions and word snapping see what they saw before. Returns how many cues were folded.
    pub fn merge_short(&mut self, span: f64) -> usize {
        if span.is_nan() || span <= 0.0 || self.cues.len() < 2 {
            return 0;
        }
        let mut out: Vec<Cue> = Vec::with_capacity(self.cues.len());
        let mut parts = 0usize;
        let mut folded = 0usize;
        for cue in std::mem::take(&mut self.cues) {
            match out.last_mut() {
                Some(line) if cue.end - line.start <= span => {
                    if parts == 1 {
                        line.words = line.timed_words();
                    }
                    line.words.extend(cue.timed_words());
                    line.text.push(' ');
                    line.text.push_str(&cue.text);
                    line.end = line.end.max(cue.end);
                    parts += 1;
                    folded += 1;
                }
                _ => {
                    out.push(cue);
                    parts = 1;
                }
            }
        }
        self.cues = out;
        self.repairs.short_merged += folded;
        folded
    }

    /// Time from the first cue's start to the last cue's end.
    pub fn span(&self) -> f64 {
        match (self.cues.first(), self.cues.last()) {
            (Some(a), Some(b)) => b.end - a.start,
            _ => 0.0,
        }
    }

    /// Number of words in all cues.
    pub fn words(&self) -> usize {
        self.cues.iter().map(|c| c.text.split_whitespace().count()).sum()
    }
}

/// Removes markup (`<i>`, `{\an8}`, ASS `\N`), joins lines and collapses whitespace.
pub fn clean_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '<' => {
                // Drop an HTML-like tag only if it closes on this line.
                let rest: String = chars.clone().take(64).collect();
                if let Some(end) = rest.find('>') {
                    for _ in 0..=rest[..end].chars().count() {
                        chars.next();
                    }
                } else {
                    out.push(c);
                }
            }
            '{' => {
                let rest: String = chars.clone().take(256).collect();
                if rest.starts_with('\\') {
                    if let Some(end) = rest.find('}') {
                        for _ in 0..=rest[..end].chars().count() {
                            chars.next();
                        }
                        continue;
                    }
                }
                out.push(c);
            }
            '\\' if matches!(chars.peek(), Some('N') | Some('n') | Some('h')) => {
                chars.next();
                out.push(' ');
            }
            _ => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Formats seconds as `H:MM:SS.s` or `M:SS.s`.
pub fn format_time(secs: f64) -> String {
    let secs = secs.max(0.0);
    let tenths = (secs * 10.0).round() as u64;
    let (h, m, s, t) = (tenths / 36000, tenths / 600 % 60, tenths / 10 % 60, tenths % 10);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}.{t}")
    } else {
        format!("{m}:{s:02}.{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cue that vanishes under the next one is merged into it, and the merged cue is held to
    /// the same millisecond as any other (the webvtt fuzz target found one of 1 ms kept).
    #[test]
    fn a_merged_cue_is_as_long_as_any_other_or_dropped() {
        let src = || CueSource::SubtitleFile {
            format: "srt".into(),
            encoding: "utf-8".into(),
        };
        let t = Transcript::repair(vec![Cue::new(1.0, 5.0, "a"), Cue::new(1.0005, 1.001, "b")], src());
        assert!(t.cues.iter().all(|c| c.end - c.start > 1e-3), "{:?}", t.cues);
        let t = Transcript::repair(vec![Cue::new(1.0, 5.0, "a"), Cue::new(1.0005, 3.0, "b")], src());
        assert_eq!(t.cues.len(), 1);
        assert_eq!(
            (t.cues[0].start, t.cues[0].end, t.cues[0].text.as_str()),
            (1.0, 3.0, "a b")
        );
    }

    #[test]
    fn short_cues_fold_into_lines_that_keep_every_word_and_its_time() {
        let mut cues: Vec<Cue> = (0..20)
            .map(|i| Cue::new(i as f64 * 0.5, i as f64 * 0.5 + 0.5, format!("слово{i} ещё")))
            .collect();
        cues.push(Cue::new(10.0, 13.0, "Длинная строка остаётся собой."));
        cues.push(Cue::new(13.0, 13.4, "Да.").with_words(vec![Word {
            text: "Да.".into(),
            start: 13.1,
            end: 13.3,
        }]));
        let source = CueSource::SubtitleFile {
            format: "srt".into(),
            encoding: "utf-8".into(),
        };
        let before = Transcript::repair(cues, source);
        let mut t = before.clone();
        let folded = t.merge_short(2.0);
        // 0.5 s cues: four to a 2 s line; the 3 s cue alone; «Да.» joins nothing it fits with.
        assert_eq!(t.cues.len(), 5 + 1 + 1, "{:?}", t.cues);
        assert_eq!(folded, 15);
        assert_eq!(t.repairs.short_merged, 15);
        assert_eq!(t.cues[0].text, "слово0 ещё слово1 ещё слово2 ещё слово3 ещё");
        assert_eq!((t.cues[0].start, t.cues[0].end), (0.0, 2.0));
        assert_eq!(t.cues[5], before.cues[20], "a long cue stays as it is");
        assert!(
            t.cues[6].words[0].start == 13.1,
            "the transcriber's word times are kept"
        );
        // Every word, in order, at the time it had in its own cue.
        let words = |cues: &[Cue]| -> Vec<Word> { cues.iter().flat_map(Cue::timed_words).collect() };
        assert_eq!(words(&t.cues), words(&before.cues));
        assert_eq!(t.words(), before.words());
        for w in t.cues.windows(2) {
            assert!(
                w[1].end - w[0].start > 2.0,
                "two lines in a row span more than 2 s: {w:?}"
            );
        }
        // Already lines: nothing more to fold.
        assert_eq!(t.clone().merge_short(2.0), 0);
    }

    #[test]
    fn a_clip_may_open_on_a_sentence_that_stands_on_its_own() {
        let opens = |t: &str| Cue::new(0.0, 1.0, t).opens_on_its_own();
        assert!(opens("Не может быть! Это невероятно!"));
        assert!(opens("«Вот это да!» — сказал он."));
        assert!(opens("What a day."));
        assert!(!opens("А потом случилось вот что."));
        assert!(!opens("Поэтому дома строили тесно."));
        assert!(!opens("and then we left."));
        assert!(!opens("And then we left."));
        assert!(!opens("продолжение фразы"));
        assert!(!opens("…"));
    }

    fn src() -> CueSource {
        CueSource::SubtitleFile {
            format: "srt".into(),
            encoding: "utf-8".into(),
        }
    }

    #[test]
    fn markup_is_stripped() {
        assert_eq!(
            clean_text("<i>Привет</i>,\n  {\\an8}мир\\Nи всё"),
            "Привет, мир и всё"
        );
        assert_eq!(clean_text("a < b and {c}"), "a < b and {c}");
    }

    #[test]
    fn repairs_are_counted() {
        let raw = vec![
            Cue::new(5.0, 7.0, "third"),
            Cue::new(0.0, 2.5, "first"),
            Cue::new(4.0, 2.0, "second reversed"),
            Cue::new(8.0, 9.0, "  <b></b> "),
        ];
        let t = Transcript::repair(raw, src());
        let texts: Vec<_> = t.cues.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["first", "second reversed", "third"]);
        assert_eq!(t.repairs.reversed, 1);
        assert_eq!(t.repairs.reordered, 1);
        assert_eq!(t.repairs.empty_dropped, 1);
        assert_eq!(t.repairs.overlaps_trimmed, 1); // 0-2.5 overlaps 2-4
        assert_eq!(t.cues[0].end, 2.0);
    }

    #[test]
    fn sentence_ends() {
        assert!(Cue::new(0., 1., "Вот так!»").ends_sentence());
        assert!(Cue::new(0., 1., "Really?").ends_sentence());
        assert!(!Cue::new(0., 1., "and then,").ends_sentence());
    }

    #[test]
    fn times_format() {
        assert_eq!(format_time(83.46), "1:23.5");
        assert_eq!(format_time(3725.0), "1:02:05.0");
    }
}
