//! Burned-in captions: a clip's words with their times become short caption groups (at most two
//! lines), an ASS document that highlights the word being spoken (libass renders it, through
//! FFmpeg's `ass` filter, in [`crate::media`]) and an SRT of the same groups, written beside the
//! clip so a word can be fixed and the clip burned again. Pure.
//!
//! Placement: centred, with the text's bottom at least [`SAFE_BOTTOM`] of the frame's height
//! above the bottom edge (the band where Shorts, Reels and TikTok put their buttons and the
//! description) and at least [`SAFE_SIDE`] of its width from either side (the right-hand column of
//! buttons). Line length follows from the font size and the width left.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cue::Cue;
pub use crate::cue::Word;

/// The bottom band kept clear, as a share of the frame's height (9:16 and 4:5).
pub const SAFE_BOTTOM: f64 = 0.22;
/// The sides kept clear, as a share of the frame's width.
pub const SAFE_SIDE: f64 = 0.10;
/// A caption group shows at most this many lines.
pub const MAX_LINES: usize = 2;

/// What is burned in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Captions {
    /// Nothing.
    Off,
    /// Short groups with the word being spoken highlighted. The default.
    #[default]
    Words,
    /// The same groups, no highlight.
    Lines,
}

/// How they look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CaptionStyle {
    /// White bold text, a thick black outline, the spoken word in yellow. The default.
    #[default]
    Bold,
    /// White text on a dark translucent box, the spoken word in green.
    Boxed,
    /// Smaller white text with a thin outline and a soft shadow, the spoken word in light blue.
    Minimal,
}

impl std::str::FromStr for Captions {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "no" => Ok(Captions::Off),
            "words" | "word" | "karaoke" | "on" => Ok(Captions::Words),
            "lines" | "line" => Ok(Captions::Lines),
            other => Err(format!("unknown captions {other:?}: one of off, words, lines")),
        }
    }
}

impl std::str::FromStr for CaptionStyle {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bold" => Ok(CaptionStyle::Bold),
            "boxed" | "box" => Ok(CaptionStyle::Boxed),
            "minimal" => Ok(CaptionStyle::Minimal),
            other => Err(format!(
                "unknown caption style {other:?}: one of bold, boxed, minimal"
            )),
        }
    }
}

impl std::fmt::Display for Captions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Captions::Off => "off",
            Captions::Words => "words",
            Captions::Lines => "lines",
        })
    }
}

impl std::fmt::Display for CaptionStyle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaptionStyle::Bold => "bold",
            CaptionStyle::Boxed => "boxed",
            CaptionStyle::Minimal => "minimal",
        })
    }
}

/// The words of `cues` inside `[from, to)`, shifted to start at 0: the transcriber's word times
/// where the cue has them, else (subtitle input) the cue's words spread over its span in
/// proportion to their length.
pub fn spread_words(cues: &[Cue], from: f64, to: f64) -> Vec<Word> {
    cues.iter()
        .flat_map(Cue::timed_words)
        .filter(|w| w.end > from && w.start < to)
        .map(|w| Word {
            start: w.start.max(from) - from,
            end: w.end.min(to) - from,
            text: w.text,
        })
        .collect()
}

/// A caption group: up to [`MAX_LINES`] lines of whole words, shown from its first word's start
/// to the next group's start (or its last word's end plus a moment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub start: f64,
    pub end: f64,
    /// Indices into the words, per line.
    pub lines: Vec<Vec<usize>>,
}

/// The look in numbers, for a frame `w`×`h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layout {
    pub font_px: f64,
    /// Characters that fit on a line (an average glyph is ~0.55 of the font size; bold wider).
    pub line_chars: usize,
    pub margin_side: u32,
    pub margin_bottom: u32,
}

impl CaptionStyle {
    pub fn layout(self, w: u32, h: u32) -> Layout {
        let short = w.min(h) as f64;
        let font_px = match self {
            CaptionStyle::Bold => short * 0.070,
            CaptionStyle::Boxed => short * 0.062,
            CaptionStyle::Minimal => short * 0.055,
        }
        .round()
        .max(12.0);
        let margin_side = (w as f64 * SAFE_SIDE).ceil() as u32;
        let usable = w as f64 - 2.0 * margin_side as f64;
        let glyph = font_px * if self == CaptionStyle::Bold { 0.62 } else { 0.56 };
        Layout {
            font_px,
            line_chars: ((usable / glyph).floor() as usize).max(8),
            margin_side,
            margin_bottom: (h as f64 * SAFE_BOTTOM).ceil() as u32,
        }
    }
}

/// Words → groups: a group ends at a sentence end, at a pause of 0.6 s or more, or when the next
/// word would not fit in [`MAX_LINES`] lines of `line_chars`; a single word longer than a line is
/// a group of its own.
pub fn group(words: &[Word], line_chars: usize) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut lines: Vec<Vec<usize>> = vec![Vec::new()];
    let mut len = 0usize;
    let flush = |lines: &mut Vec<Vec<usize>>, groups: &mut Vec<Group>| {
        lines.retain(|l| !l.is_empty());
        balance(lines, words, line_chars);
        if let (Some(first), Some(last)) = (
            lines.first().and_then(|l| l.first()),
            lines.last().and_then(|l| l.last()),
        ) {
            groups.push(Group {
                start: words[*first].start,
                end: words[*last].end,
                lines: std::mem::take(lines),
            });
        }
        *lines = vec![Vec::new()];
    };
    for (i, w) in words.iter().enumerate() {
        let wl = w.text.chars().count();
        let pause = i > 0 && w.start - words[i - 1].end >= 0.6;
        if pause {
            flush(&mut lines, &mut groups);
            len = 0;
        }
        let need = if len == 0 { wl } else { len + 1 + wl };
        if need > line_chars && len > 0 {
            if lines.len() >= MAX_LINES {
                flush(&mut lines, &mut groups);
            } else {
                lines.push(Vec::new());
            }
            len = 0;
        }
        lines.last_mut().expect("one line").push(i);
        len = if len == 0 { wl } else { len + 1 + wl };
        if w.text.ends_with(['.', '!', '?', '…']) {
            flush(&mut lines, &mut groups);
            len = 0;
        }
    }
    flush(&mut lines, &mut groups);
    // Each group stays up until the next one starts (short gaps) or a moment after its end.
    for k in 0..groups.len() {
        let next = groups.get(k + 1).map(|g| g.start);
        let hold = groups[k].end + 0.4;
        groups[k].end = match next {
            Some(n) if n - groups[k].end < 0.6 => n,
            Some(n) => hold.min(n),
            None => hold,
        };
    }
    groups
}

/// The characters of a line of `words[ix]`, with single spaces.
fn line_len(words: &[Word], ix: &[usize]) -> usize {
    ix.iter().map(|&i| words[i].text.chars().count()).sum::<usize>() + ix.len().saturating_sub(1)
}

/// Two lines filled greedily can leave one word alone on the second: the group's words are split
/// again where the longer line is shortest (both still fitting `line_chars`), the upper line
/// the shorter of the two when they cannot be equal (the eye reads a pyramid more easily).
fn balance(lines: &mut Vec<Vec<usize>>, words: &[Word], line_chars: usize) {
    if lines.len() != 2 {
        return;
    }
    let all: Vec<usize> = lines.iter().flatten().copied().collect();
    let best = (1..all.len())
        .map(|k| (k, line_len(words, &all[..k]), line_len(words, &all[k..])))
        .filter(|&(_, a, b)| a <= line_chars && b <= line_chars)
        .min_by_key(|&(_, a, b)| (a.max(b), a > b));
    if let Some((k, _, _)) = best {
        *lines = vec![all[..k].to_vec(), all[k..].to_vec()];
    }
}

fn ass_time(t: f64) -> String {
    let cs = (t.max(0.0) * 100.0).round() as u64;
    format!(
        "{}:{:02}:{:02}.{:02}",
        cs / 360_000,
        cs / 6000 % 60,
        cs / 100 % 60,
        cs % 100
    )
}

/// `HH:MM:SS,mmm`, as SRT writes a time.
pub(crate) fn srt_time(t: f64) -> String {
    let ms = (t.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02},{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// Text as ASS dialogue: braces and backslashes would be read as override tags.
fn ass_escape(s: &str) -> String {
    s.replace('\\', "\u{29F5}").replace('{', "(").replace('}', ")")
}

/// The clip's captions as an ASS document for a `w`×`h` frame, in `font` (a family name libass
/// finds through fontconfig, or in the fonts directory given to the filter).
pub fn ass(words: &[Word], mode: Captions, style: CaptionStyle, (w, h): (u32, u32), font: &str) -> String {
    let lay = style.layout(w, h);
    let groups = if mode == Captions::Off {
        Vec::new()
    } else {
        group(words, lay.line_chars)
    };
    // &HAABBGGRR.
    let (primary, outline, back, highlight, border_style, outline_px, shadow_px, bold) = match style {
        CaptionStyle::Bold => (
            "&H00FFFFFF",
            "&H00000000",
            "&H80000000",
            "&H0000E5FF",
            1,
            lay.font_px * 0.09,
            0.0,
            -1,
        ),
        CaptionStyle::Boxed => (
            "&H00FFFFFF",
            "&H64000000",
            "&H64000000",
            "&H0060FF60",
            3,
            lay.font_px * 0.18,
            0.0,
            -1,
        ),
        CaptionStyle::Minimal => (
            "&H00FFFFFF",
            "&H00202020",
            "&H96000000",
            "&H00FFD080",
            1,
            lay.font_px * 0.04,
            lay.font_px * 0.05,
            0,
        ),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "[Script Info]\nScriptType: v4.00+\nPlayResX: {w}\nPlayResY: {h}\nWrapStyle: 2\nScaledBorderAndShadow: yes\nYCbCr Matrix: TV.709\n\n\
         [V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n\
         Style: Caption,{font},{fs},{primary},{highlight},{outline},{back},{bold},0,0,0,100,100,0,0,{border_style},{outline_px:.1},{shadow_px:.1},2,{m},{m},{mv},1\n\n\
         [Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text\n",
        fs = lay.font_px,
        m = lay.margin_side,
        mv = lay.margin_bottom,
    );
    for g in &groups {
        let text_of = |hl: Option<usize>| {
            g.lines
                .iter()
                .map(|line| {
                    line.iter()
                        .map(|&i| {
                            let t = ass_escape(&words[i].text);
                            if Some(i) == hl {
                                format!("{{\\1c{highlight}&}}{t}{{\\1c{primary}&}}")
                            } else {
                                t
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect::<Vec<_>>()
                .join("\\N")
        };
        if mode == Captions::Lines {
            let _ = writeln!(
                out,
                "Dialogue: 0,{},{},Caption,,0,0,0,,{}",
                ass_time(g.start),
                ass_time(g.end),
                text_of(None)
            );
            continue;
        }
        // One event per word: the group with that word highlighted, until the next word starts.
        let idx: Vec<usize> = g.lines.iter().flatten().copied().collect();
        for (k, &i) in idx.iter().enumerate() {
            let s = if k == 0 { g.start } else { words[i].start };
            let e = idx.get(k + 1).map(|&n| words[n].start).unwrap_or(g.end);
            if e <= s {
                continue;
            }
            let _ = writeln!(
                out,
                "Dialogue: 0,{},{},Caption,,0,0,0,,{}",
                ass_time(s),
                ass_time(e),
                text_of(Some(i))
            );
        }
    }
    out
}

/// The same groups as SRT (one cue per group, its lines as they are shown).
pub fn srt(words: &[Word], line_chars: usize) -> String {
    let mut out = String::new();
    for (n, g) in group(words, line_chars).iter().enumerate() {
        let text = g
            .lines
            .iter()
            .map(|l| {
                l.iter()
                    .map(|&i| words[i].text.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n");
        let _ = write!(
            out,
            "{}\n{} --> {}\n{text}\n\n",
            n + 1,
            srt_time(g.start),
            srt_time(g.end)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, start: f64, per: f64) -> Vec<Word> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| Word {
                text: w.into(),
                start: start + i as f64 * per,
                end: start + i as f64 * per + per * 0.8,
            })
            .collect()
    }

    #[test]
    fn groups_hold_whole_words_on_at_most_two_lines_that_fit() {
        let w = words(
            "Учёные нашли настоящее сокровище прямо под нашим городом и никто не знает откуда оно там взялось",
            0.0,
            0.35,
        );
        let gs = group(&w, 18);
        assert!(gs.len() >= 3, "{gs:?}");
        let mut seen = Vec::new();
        for g in &gs {
            assert!(g.lines.len() <= MAX_LINES && !g.lines.is_empty());
            for l in &g.lines {
                let len: usize = l.iter().map(|&i| w[i].text.chars().count()).sum::<usize>() + l.len() - 1;
                assert!(len <= 18 || l.len() == 1, "{l:?}");
                seen.extend(l.iter().copied());
            }
        }
        // Every word once, in order.
        assert_eq!(seen, (0..w.len()).collect::<Vec<_>>());
        // Groups follow each other without overlapping.
        for p in gs.windows(2) {
            assert!(p[0].end <= p[1].start + 1e-9 && p[0].start < p[0].end, "{p:?}");
        }
    }

    #[test]
    fn two_lines_are_balanced_not_a_full_line_and_a_lone_word() {
        // Greedy filling at 24 characters: "Сегодня мы поговорим о" + "погоде".
        let w = words("Сегодня мы поговорим о погоде", 0.0, 0.3);
        let gs = group(&w, 24);
        assert_eq!(gs.len(), 1, "{gs:?}");
        let lens: Vec<usize> = gs[0].lines.iter().map(|l| line_len(&w, l)).collect();
        assert_eq!(lens.len(), 2, "{gs:?}");
        assert!(lens[0].abs_diff(lens[1]) <= 8, "unbalanced lines {lens:?}");
        assert!(lens.iter().all(|&l| l <= 24));
        assert!(lens[0] <= lens[1], "the upper line is the shorter: {lens:?}");
        // Still every word once, in order.
        let seen: Vec<usize> = gs[0].lines.iter().flatten().copied().collect();
        assert_eq!(seen, (0..w.len()).collect::<Vec<_>>());
    }

    #[test]
    fn a_sentence_end_or_a_pause_starts_a_new_group() {
        let mut w = words("Не может быть! Это невероятно", 0.0, 0.3);
        w.extend(words("Правда", 5.0, 0.3));
        let gs = group(&w, 40);
        let texts: Vec<Vec<&str>> = gs
            .iter()
            .map(|g| g.lines.iter().flatten().map(|&i| w[i].text.as_str()).collect())
            .collect();
        assert_eq!(
            texts,
            vec![
                vec!["Не", "может", "быть!"],
                vec!["Это", "невероятно"],
                vec!["Правда"]
            ]
        );
        // After the pause the earlier group does not linger until the next one.
        assert!(gs[1].end < 5.0);
    }

    #[test]
    fn the_ass_highlights_each_word_while_it_is_spoken_inside_the_safe_zone() {
        let w = words("Я в полном восторге", 1.0, 0.5);
        let doc = ass(
            &w,
            Captions::Words,
            CaptionStyle::Bold,
            (1080, 1920),
            "DejaVu Sans",
        );
        let events: Vec<&str> = doc.lines().filter(|l| l.starts_with("Dialogue:")).collect();
        assert_eq!(events.len(), 4, "{doc}");
        assert!(
            events[0].starts_with("Dialogue: 0,0:00:01.00,0:00:01.50,"),
            "{}",
            events[0]
        );
        assert!(
            events[2].contains("{\\1c&H0000E5FF&}полном{\\1c&H00FFFFFF&}"),
            "{}",
            events[2]
        );
        // Bottom-centred, above the platform's bottom band and clear of the sides.
        let style = doc.lines().find(|l| l.starts_with("Style: Caption")).unwrap();
        let f: Vec<&str> = style.split(',').collect();
        assert_eq!(f[18], "2");
        assert!(f[21].parse::<f64>().unwrap() >= 1920.0 * SAFE_BOTTOM);
        assert!(f[19].parse::<f64>().unwrap() >= 1080.0 * SAFE_SIDE);
        let lines = ass(
            &w,
            Captions::Lines,
            CaptionStyle::Boxed,
            (1080, 1920),
            "DejaVu Sans",
        );
        assert_eq!(lines.lines().filter(|l| l.starts_with("Dialogue:")).count(), 1);
        assert!(!lines.contains("\\1c"));
        let off = ass(&w, Captions::Off, CaptionStyle::Bold, (1080, 1920), "DejaVu Sans");
        assert_eq!(off.lines().filter(|l| l.starts_with("Dialogue:")).count(), 0);
    }

    #[test]
    fn user_text_cannot_inject_override_tags() {
        let w = words("{\\pos(0,0)}взлом \\N", 0.0, 0.5);
        let doc = ass(
            &w,
            Captions::Lines,
            CaptionStyle::Bold,
            (720, 1280),
            "DejaVu Sans",
        );
        let ev = doc.lines().find(|l| l.starts_with("Dialogue:")).unwrap();
        // The braces are gone, the backslashes are harmless look-alikes; only our own line break
        // (between the group's lines) is a tag.
        assert!(
            !ev.contains('{') && !ev.contains("\\pos") && ev.contains("⧵N"),
            "{ev}"
        );
        assert!(ev.matches("\\N").count() <= 1, "{ev}");
    }

    #[test]
    fn subtitle_cues_become_words_spread_by_length_and_srt_matches_the_groups() {
        let cues = vec![Cue::new(10.0, 12.0, "раз два"), Cue::new(12.0, 13.0, "три")];
        let w = spread_words(&cues, 10.5, 20.0);
        let names: Vec<&str> = w.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(names, ["раз", "два", "три"]);
        assert!(
            (w[0].start - 0.0).abs() < 1e-9 && (w[0].end - 0.5).abs() < 1e-9,
            "{w:?}"
        );
        assert!(
            (w[2].start - 1.5).abs() < 1e-9 && (w[2].end - 2.5).abs() < 1e-9,
            "{w:?}"
        );
        let s = srt(&w, 30);
        assert!(s.starts_with("1\n00:00:00,000 --> "), "{s}");
        assert!(s.contains("раз два три"), "{s}");
        let parsed = crate::subtitle::parse_bytes(s.as_bytes()).unwrap();
        assert_eq!(parsed.cues.len(), 1);
        assert_eq!("words".parse::<Captions>().unwrap(), Captions::Words);
        assert_eq!("box".parse::<CaptionStyle>().unwrap(), CaptionStyle::Boxed);
        assert!("loud"
            .parse::<CaptionStyle>()
            .unwrap_err()
            .contains("bold, boxed, minimal"));
    }

    #[test]
    fn lines_fit_the_frame_for_every_style_and_size() {
        for style in [CaptionStyle::Bold, CaptionStyle::Boxed, CaptionStyle::Minimal] {
            for (w, h) in [(1080, 1920), (720, 1280), (1080, 1080), (1920, 1080)] {
                let l = style.layout(w, h);
                // A line's estimate allows at least half an em per character (Cyrillic text in
                // DejaVu Sans averages ~0.55 em; the rendering test measures the real boxes).
                let usable = w as f64 - 2.0 * l.margin_side as f64;
                assert!(
                    l.line_chars as f64 * l.font_px * 0.5 <= usable,
                    "{style:?} {w}x{h} {l:?}"
                );
                assert!(
                    l.margin_side as f64 >= w as f64 * SAFE_SIDE
                        && l.margin_bottom as f64 >= h as f64 * SAFE_BOTTOM
                );
                assert!(l.line_chars >= 12, "{style:?} {w}x{h} {l:?}");
            }
        }
    }
}
