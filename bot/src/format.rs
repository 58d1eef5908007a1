//! What the bot says: captions, the moments list, status lines, and parsing of `/clip` arguments.
//! Pure functions, tested without Telegram.

use crate::settings::Settings;
use viralclip_engine::report::{MomentReport, Report};

/// `mm:ss` (or `h:mm:ss`) of a time in seconds.
pub fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    let t = text.trim();
    if t.chars().count() <= max_chars {
        return t.to_string();
    }
    let cut: String = t.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

fn emotions_line(m: &MomentReport) -> String {
    m.emotions
        .iter()
        .filter(|e| e.label != "neutral")
        .take(3)
        .map(|e| format!("{} {:.0}%", e.label, e.p * 100.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The caption of one clip: rank, time range in the source, virality; its title; top emotions;
/// a quote; its hashtags (last, as a post carries them). Telegram captions hold 1024 characters;
/// this stays well under.
pub fn caption(m: &MomentReport, total: usize) -> String {
    let emo = emotions_line(m);
    let mut s = format!(
        "#{} of {total} · {}–{} · virality {:.0}%",
        m.rank,
        clock(m.start),
        clock(m.end),
        m.virality * 100.0
    );
    if !m.title.is_empty() {
        s.push_str(&format!("\n{}", shorten(&m.title, 100)));
    }
    if !emo.is_empty() {
        s.push_str(&format!("\n{emo}"));
    }
    s.push_str(&format!("\n«{}»", shorten(&m.quote, 300)));
    if !m.hashtags.is_empty() {
        let tags: Vec<&str> = m.hashtags.iter().take(5).map(|t| t.as_str()).collect();
        s.push_str(&format!("\n{}", shorten(&tags.join(" "), 200)));
    }
    s
}

/// The reply to a subtitle file alone: the moments with timestamps (Telegram's 4096-character
/// message limit respected).
pub fn moments_text(report: &Report) -> String {
    if report.moments.is_empty() {
        return "No moments found: the subtitles are too short for a clip with these settings.".into();
    }
    let mut s = format!(
        "{} moments from {} subtitle lines:\n",
        report.moments.len(),
        report.transcript.cues
    );
    for m in &report.moments {
        let emo = emotions_line(m);
        let block = format!(
            "\n#{} {}–{} · virality {:.0}%{}\n«{}»\n",
            m.rank,
            clock(m.start),
            clock(m.end),
            m.virality * 100.0,
            if emo.is_empty() {
                String::new()
            } else {
                format!(" · {emo}")
            },
            shorten(&m.quote, 200)
        );
        if s.chars().count() + block.chars().count() > 4000 {
            s.push_str("\n…");
            break;
        }
        s.push_str(&block);
    }
    s
}

/// Arguments of `/clip` (and of a caption on a sent video): `[N] [MIN-MAX]` in any order, e.g.
/// `/clip 3 30-45`: three clips of 30 to 45 seconds. Applied over the chat's settings.
pub fn parse_clip_args(args: &str, base: &Settings) -> Result<Settings, String> {
    let mut s = base.clone();
    for word in args.split_whitespace() {
        if let Some((a, b)) = word.split_once('-') {
            let (min, max) = (
                a.parse::<f64>()
                    .map_err(|_| format!("{word:?}: expected MIN-MAX seconds, e.g. 30-45"))?,
                b.parse::<f64>()
                    .map_err(|_| format!("{word:?}: expected MIN-MAX seconds, e.g. 30-45"))?,
            );
            s.min_secs = min;
            s.max_secs = max;
        } else if let Ok(n) = word.parse::<usize>() {
            s.count = n;
        } else if word == "fast" || word == "precise" {
            s.fast = word == "fast";
        } else if let Ok(f) = word.parse::<viralclip_engine::format::Format>() {
            s.format = f;
        } else if let Some(c) = word
            .strip_prefix("captions=")
            .or(Some(word).filter(|w| *w == "nocaptions").map(|_| "off"))
        {
            s.captions = c.parse().map_err(|e: String| format!("{word:?}: {e}"))?;
        } else if word.len() == 2 && word.chars().all(|c| c.is_ascii_lowercase()) || word == "auto" {
            s.language = word.to_string();
        } else {
            return Err(format!(
                "{word:?}: /clip takes a clip count, a MIN-MAX length in seconds, a format (9:16, 1:1, 4:5, 16:9, original), captions=words|lines|off, fast|precise and a language code, e.g. /clip 3 30-45 9:16"
            ));
        }
    }
    s.validate()?;
    Ok(s)
}

/// Human size of a byte count.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use viralclip_engine::report::EmotionProb;

    fn moment(rank: usize) -> MomentReport {
        MomentReport {
            rank,
            start: 65.2,
            end: 3725.0,
            duration: 20.0,
            virality: 0.873,
            popularity: 0.9,
            emotions: vec![
                EmotionProb {
                    label: "neutral".into(),
                    p: 0.9,
                },
                EmotionProb {
                    label: "surprise".into(),
                    p: 0.41,
                },
                EmotionProb {
                    label: "excitement".into(),
                    p: 0.2,
                },
            ],
            text: "x".into(),
            quote: "Это невероятно!".into(),
            reasons: vec![],
            title: "Учёные нашли сокровище под городом!".into(),
            hashtags: vec!["#сокровище".into(), "#учёные".into(), "#удивление".into()],
            clip: None,
        }
    }

    #[test]
    fn captions_show_rank_range_score_emotions_and_quote() {
        let c = caption(&moment(2), 5);
        assert_eq!(
            c,
            "#2 of 5 · 1:05–1:02:05 · virality 87%\nУчёные нашли сокровище под городом!\nsurprise 41%, excitement 20%\n«Это невероятно!»\n#сокровище #учёные #удивление"
        );
        // A report from before titles: no empty lines.
        let mut old = moment(1);
        old.title.clear();
        old.hashtags.clear();
        assert!(!caption(&old, 1).contains("\n\n") && !caption(&old, 1).ends_with('\n'));
    }

    #[test]
    fn clip_arguments() {
        let base = Settings::default();
        let s = parse_clip_args("3 30-45", &base).unwrap();
        assert_eq!((s.count, s.min_secs, s.max_secs), (3, 30.0, 45.0));
        let s = parse_clip_args("fast ru", &base).unwrap();
        assert!(s.fast);
        assert_eq!(s.language, "ru");
        assert!(parse_clip_args("45-30", &base).is_err());
        assert!(parse_clip_args("lots", &base)
            .unwrap_err()
            .contains("/clip 3 30-45"));
        assert!(parse_clip_args("0", &base).is_err());
        let s = parse_clip_args("2 1:1 captions=lines", &base).unwrap();
        assert_eq!(
            (s.count, s.format, s.captions),
            (
                2,
                viralclip_engine::format::Format::Square,
                viralclip_engine::captions::Captions::Lines
            )
        );
        let s = parse_clip_args("original nocaptions", &base).unwrap();
        assert_eq!(
            (s.format, s.captions),
            (
                viralclip_engine::format::Format::Original,
                viralclip_engine::captions::Captions::Off
            )
        );
        assert!(parse_clip_args("captions=loud", &base)
            .unwrap_err()
            .contains("off, words, lines"));
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(0.4), "0:00");
        assert_eq!(clock(61.0), "1:01");
        assert_eq!(clock(3661.0), "1:01:01");
    }
}
