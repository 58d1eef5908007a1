//! A clip's title and hashtags, from its own words. Pure.
//!
//! - Title: extractive, the clip's strongest complete sentence (the one inside its best-scored
//!   window) of at most [`TITLE_MAX_CHARS`] characters; when every sentence is longer, the
//!   strongest one up to the last whole word that fits, with `…`. Never a cut-off word.
//! - Hashtags: 3 to 5: the clip's keywords by YAKE (`yake-rust`, with its stopword list for the
//!   clip's language; a statistical extractor that needs no model), then its top emotion (in the
//!   clip's language), then platform tags to reach 3.

use serde::{Deserialize, Serialize};

/// The longest title, in characters.
pub const TITLE_MAX_CHARS: usize = 60;

/// What a clip is posted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Headline {
    pub title: String,
    /// With the `#`.
    pub hashtags: Vec<String>,
}

/// One line of the clip: its text and the virality of the best window it is part of.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredLine<'a> {
    pub text: &'a str,
    pub score: f32,
}

/// The title and hashtags for a clip made of `lines`, from a video whose whole transcript is
/// `context` (its keywords that the clip holds come first: what the video is about, not the
/// clip's filler), whose strongest emotion is `emotion` (a GoEmotions label; `neutral` and `None`
/// give no emotion tag), in language `lang` (ISO 639-1).
pub fn headline(lines: &[ScoredLine], context: &str, emotion: Option<&str>, lang: &str) -> Headline {
    Headline {
        title: title(lines),
        hashtags: hashtags_in(lines, context, emotion, lang),
    }
}

/// The clip's language when nothing else says: Russian for Cyrillic letters, else English.
pub fn guess_lang(text: &str) -> &'static str {
    let (mut cyr, mut letters) = (0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        if ('\u{0400}'..='\u{04FF}').contains(&c) {
            cyr += 1;
        }
    }
    if letters > 0 && cyr * 2 >= letters {
        "ru"
    } else {
        "en"
    }
}

/// Sentences with the best score of the lines they touch.
fn sentences(lines: &[ScoredLine]) -> Vec<(String, f32)> {
    let mut out: Vec<(String, f32)> = Vec::new();
    let mut cur = String::new();
    let mut cur_score = f32::MIN;
    for line in lines {
        let mut chars = line.text.trim().chars().peekable();
        if !cur.is_empty() && chars.peek().is_some() {
            cur.push(' ');
        }
        // A sentence takes the best score of the lines it touches.
        cur_score = if cur.trim().is_empty() {
            line.score
        } else {
            cur_score.max(line.score)
        };
        while let Some(c) = chars.next() {
            cur.push(c);
            let ends = matches!(c, '.' | '!' | '?' | '…')
                && chars
                    .peek()
                    .is_none_or(|n| n.is_whitespace() || matches!(n, '"' | '»' | ')'));
            if ends {
                while let Some(&n) = chars.peek() {
                    if matches!(n, '.' | '!' | '?' | '…' | '"' | '»' | ')') {
                        cur.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                push_sentence(&mut out, &mut cur, cur_score);
                cur_score = line.score;
            }
        }
    }
    push_sentence(&mut out, &mut cur, cur_score);
    out
}

fn push_sentence(out: &mut Vec<(String, f32)>, cur: &mut String, score: f32) {
    let s = cur.split_whitespace().collect::<Vec<_>>().join(" ");
    // Dialogue dashes and stray punctuation at the start say nothing.
    let s = s.trim_start_matches(['-', '—', '–', ',', ' ']).to_string();
    if s.chars().any(char::is_alphanumeric) {
        out.push((s, score));
    }
    cur.clear();
}

fn title(lines: &[ScoredLine]) -> String {
    let sents = sentences(lines);
    let words = |s: &str| s.split_whitespace().count();
    // The strongest sentence that fits and says something (3 words or more when one does).
    let mut ranked: Vec<&(String, f32)> = sents.iter().collect();
    // Best first; of equal scores the one that says more (more words, up to ten).
    ranked.sort_by(|a, b| {
        b.1.total_cmp(&a.1)
            .then_with(|| words(&b.0).min(10).cmp(&words(&a.0).min(10)))
    });
    let fits = |s: &&(String, f32)| s.0.chars().count() <= TITLE_MAX_CHARS;
    let pick = ranked
        .iter()
        .find(|s| fits(s) && words(&s.0) >= 3)
        .or_else(|| ranked.iter().find(|s| fits(s)));
    let best_score = ranked.first().map(|s| s.1).unwrap_or(0.0);
    match pick {
        // A fitting sentence is used whole unless a stronger one is much stronger (by a sixth):
        // then the stronger one, shortened at a word.
        Some(s) if s.1 >= best_score - best_score.abs() / 6.0 => tidy(&s.0),
        _ => match ranked.first() {
            Some(s) => shorten(&s.0, TITLE_MAX_CHARS),
            None => String::new(),
        },
    }
}

/// A sentence as a title: no trailing period or comma (`?` and `!` stay), first letter capital.
fn tidy(s: &str) -> String {
    let s = s.trim().trim_end_matches(['.', ',', ';', ':', '…', ' ']);
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The words of `s` that fit in `max` characters with `…`; never part of a word.
fn shorten(s: &str, max: usize) -> String {
    let s = tidy(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut out = String::new();
    for w in s.split_whitespace() {
        let len = out.chars().count() + usize::from(!out.is_empty()) + w.chars().count();
        if len + 1 > max {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    }
    if out.is_empty() {
        // One word longer than a title: it is the title, whole.
        return s.split_whitespace().next().unwrap_or("").to_string();
    }
    let out = out.trim_end_matches([',', ';', ':', '-', '—', '.']).to_string();
    format!("{out}…")
}

#[cfg(test)]
fn hashtags(lines: &[ScoredLine], emotion: Option<&str>, lang: &str) -> Vec<String> {
    hashtags_in(lines, "", emotion, lang)
}

fn hashtags_in(lines: &[ScoredLine], context: &str, emotion: Option<&str>, lang: &str) -> Vec<String> {
    let text: String = lines.iter().map(|l| l.text.trim()).collect::<Vec<_>>().join(" ");
    let words: std::collections::HashSet<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let stop = yake_rust::StopWords::predefined(lang)
        .or_else(|| yake_rust::StopWords::predefined("en"))
        .unwrap_or_default();
    let config = yake_rust::Config {
        ngrams: 1,
        ..yake_rust::Config::default()
    };
    let mut tags: Vec<String> = Vec::new();
    let push = |tag: String, tags: &mut Vec<String>| {
        let key = tag.to_lowercase();
        if tag.chars().count() > 1 && !tags.iter().any(|t| t.to_lowercase() == key) {
            tags.push(tag);
        }
    };
    // The video's keywords the clip says, then the clip's own.
    let video: Vec<yake_rust::ResultItem> = if context.trim().is_empty() {
        Vec::new()
    } else {
        yake_rust::get_n_best(40, context, &stop, &config)
            .into_iter()
            .filter(|k| words.contains(&k.keyword.to_lowercase()))
            .collect()
    };
    for k in video
        .into_iter()
        .take(2)
        .chain(yake_rust::get_n_best(12, &text, &stop, &config))
    {
        if tags.len() >= 4 {
            break;
        }
        let tag: String = k
            .keyword
            .split_whitespace()
            .flat_map(|w| w.chars().filter(|c| c.is_alphanumeric()))
            .collect::<String>()
            .to_lowercase();
        // A hashtag of digits or of two letters finds nobody.
        if tag.chars().count() < 3 || tag.chars().all(|c| c.is_numeric()) {
            continue;
        }
        // A word already inside a longer tag (or holding one) adds nothing.
        let bare = |t: &String| t.trim_start_matches('#').to_string();
        if tags
            .iter()
            .any(|t| bare(t).contains(&tag) || tag.contains(&bare(t)))
        {
            continue;
        }
        push(format!("#{tag}"), &mut tags);
    }
    if let Some(e) = emotion.and_then(|e| emotion_word(e, lang)) {
        // Not beside a keyword of the same word («#восторге» and «#восторг»).
        let stem: String = e.chars().take(5).collect();
        if !tags.iter().any(|t| t.contains(&stem)) {
            push(format!("#{e}"), &mut tags);
        }
    }
    for generic in ["#shorts", "#viral", "#clip"] {
        if tags.len() >= 3 {
            break;
        }
        push(generic.to_string(), &mut tags);
    }
    tags.truncate(5);
    tags
}

/// A GoEmotions label as a hashtag word in `lang` (`neutral` has none).
fn emotion_word(label: &str, lang: &str) -> Option<String> {
    const RU: [(&str, &str); 27] = [
        ("admiration", "восхищение"),
        ("amusement", "юмор"),
        ("anger", "гнев"),
        ("annoyance", "раздражение"),
        ("approval", "одобрение"),
        ("caring", "забота"),
        ("confusion", "замешательство"),
        ("curiosity", "любопытство"),
        ("desire", "желание"),
        ("disappointment", "разочарование"),
        ("disapproval", "неодобрение"),
        ("disgust", "отвращение"),
        ("embarrassment", "неловкость"),
        ("excitement", "восторг"),
        ("fear", "страх"),
        ("gratitude", "благодарность"),
        ("grief", "горе"),
        ("joy", "радость"),
        ("love", "любовь"),
        ("nervousness", "волнение"),
        ("optimism", "оптимизм"),
        ("pride", "гордость"),
        ("realization", "озарение"),
        ("relief", "облегчение"),
        ("remorse", "раскаяние"),
        ("sadness", "грусть"),
        ("surprise", "удивление"),
    ];
    if label == "neutral" {
        return None;
    }
    if lang == "ru" {
        RU.iter().find(|(l, _)| *l == label).map(|(_, w)| w.to_string())
    } else {
        crate::score::GOEMOTIONS_LABELS
            .contains(&label)
            .then(|| label.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines<'a>(v: &[(&'a str, f32)]) -> Vec<ScoredLine<'a>> {
        v.iter()
            .map(|&(text, score)| ScoredLine { text, score })
            .collect()
    }

    #[test]
    fn the_title_is_the_strongest_whole_sentence_that_fits() {
        let l = lines(&[
            (
                "Сегодня мы поговорим о погоде и о том, как провести выходные.",
                0.2,
            ),
            ("Я никогда в жизни так не боялся!", 0.9),
            ("Потом мы пошли домой.", 0.3),
        ]);
        assert_eq!(title(&l), "Я никогда в жизни так не боялся!");
        // A sentence spread over two cues is one sentence, with the better cue's score.
        let l = lines(&[
            ("Мы пошли домой.", 0.3),
            ("А там нас ждал", 0.5),
            ("настоящий сюрприз.", 0.95),
        ]);
        assert_eq!(title(&l), "А там нас ждал настоящий сюрприз");
        // Of sentences in the same best line, the one that says the most.
        let l = lines(&[(
            "Не может быть! Учёные нашли сокровище прямо под нашим городом!",
            0.9,
        )]);
        assert_eq!(title(&l), "Учёные нашли сокровище прямо под нашим городом!");
    }

    #[test]
    fn a_long_strong_sentence_is_shortened_at_a_word_never_inside_one() {
        let long =
            "Это была самая невероятная история, которую я когда-либо слышал от своего дедушки в деревне";
        let l = lines(&[(long, 0.9), ("Да.", 0.1)]);
        let t = title(&l);
        assert!(t.chars().count() <= TITLE_MAX_CHARS, "{t}");
        assert!(t.ends_with('…'), "{t}");
        let body = t.trim_end_matches('…');
        assert!(long.starts_with(body), "{t}");
        // The next character in the sentence is a space: no word was cut.
        let next = long[body.len()..].chars().next();
        assert!(
            next.is_none_or(|c| c == ' ' || c == ','),
            "{t}: cut before {next:?}"
        );
        // Nothing past a multibyte character was sliced: every title is valid text by type, and
        // a title of one enormous word keeps the word whole.
        let word = "Превысокомногорассмотрительствующий".repeat(3);
        assert_eq!(title(&lines(&[(&word, 0.5)])), word);
    }

    #[test]
    fn hashtags_are_three_to_five_keywords_and_the_emotion_in_the_clips_language() {
        let l = lines(&[
            ("Криптовалюта снова упала, и биткоин потерял половину цены.", 0.8),
            (
                "Инвесторы в панике продают биткоин, а криптовалюта дешевеет.",
                0.7,
            ),
        ]);
        let tags = hashtags(&l, Some("fear"), "ru");
        assert!((3..=5).contains(&tags.len()), "{tags:?}");
        assert!(
            tags.iter()
                .all(|t| t.starts_with('#') && !t.trim_start_matches('#').contains([' ', ',', '.', '#'])),
            "{tags:?}"
        );
        assert!(tags.iter().any(|t| t.contains("биткоин")), "{tags:?}");
        assert!(tags.iter().any(|t| t.contains("криптовалют")), "{tags:?}");
        assert!(tags.contains(&"#страх".to_string()), "{tags:?}");
        // No stopword becomes a tag.
        for stop in ["#и", "#а", "#снова", "#в"] {
            assert!(!tags.contains(&stop.to_string()), "{tags:?}");
        }
        let en = hashtags(
            &lines(&[("Bitcoin crashed again and investors panic.", 0.5)]),
            Some("surprise"),
            "en",
        );
        assert!(
            en.contains(&"#surprise".to_string()) && en.iter().any(|t| t.contains("bitcoin")),
            "{en:?}"
        );
        // Too few words for keywords: platform tags make up three; neutral adds none.
        let dup = hashtags(
            &lines(&[("Я в полном восторге, такого не было никогда!", 0.5)]),
            Some("excitement"),
            "ru",
        );
        assert!(
            !(dup.contains(&"#восторг".to_string()) && dup.iter().any(|t| t.starts_with("#восторге"))),
            "{dup:?}"
        );
        let few = hashtags(&lines(&[("Да.", 0.5)]), Some("neutral"), "ru");
        assert_eq!(few.len(), 3, "{few:?}");
    }

    #[test]
    fn the_videos_own_keywords_come_first_when_the_clip_says_them() {
        let video = "Биткоин сегодня. Биткоин растёт, биткоин падает. Инвесторы спорят про биткоин. \
                     Погода хорошая. Биткоин снова в новостях.";
        let clip = lines(&[("Такого роста никто не ждал, биткоин удивил всех.", 0.9)]);
        let tags = hashtags_in(&clip, video, None, "ru");
        assert_eq!(tags.first().map(String::as_str), Some("#биткоин"), "{tags:?}");
        // Keywords of the video that the clip does not say are not its tags.
        assert!(!tags.iter().any(|t| t.contains("погода")), "{tags:?}");
    }

    #[test]
    fn the_language_is_guessed_from_the_script() {
        assert_eq!(guess_lang("Привет, как дела? OK"), "ru");
        assert_eq!(guess_lang("Hello there"), "en");
        assert_eq!(guess_lang(""), "en");
    }

    #[test]
    fn a_headline_has_both() {
        let l = lines(&[("Вы не поверите, что случилось дальше!", 0.9)]);
        let h = headline(&l, "", Some("surprise"), guess_lang(l[0].text));
        assert_eq!(h.title, "Вы не поверите, что случилось дальше!");
        assert!(h.hashtags.contains(&"#удивление".to_string()), "{h:?}");
    }
}
