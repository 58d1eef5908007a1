//! Formulaic openings and closings: greetings, thank-yous, goodbyes, subscribe calls.
//!
//! Nearly every video starts with «Добрый день» and ends with «Спасибо, что были с нами», and no
//! viewer shares those. The popularity head (trained on clickbait headlines, which address the
//! reader) and the emotion head (gratitude is its most confident class) both rate them high, so
//! the pipeline removes such sentences before scoring and lets the model judge what was said.
//! Pure code: a sentence is formulaic when nothing is left of it once leading formulas are
//! stripped, and is dropped; a sentence that goes on after a greeting («Добрый день, сегодня мы
//! поговорим…») loses the greeting; one that goes on after thanks («Спасибо, это было
//! невероятно») is kept whole, since what it thanks for is content. Russian and English.

use regex::Regex;
use std::sync::OnceLock;

/// Formulas, matched at the start of a normalised sentence (lowercase, ё→е, punctuation gone).
const FORMULAS: &[&str] = &[
    // Russian greetings.
    r"(всем |всех )?(привет(ствую)?|здравствуйте|здравствуй|добрый (день|вечер)|доброе утро|доброй ночи)",
    // Addressing the audience.
    r"(всем|друзья|ребята|дорогие (друзья|зрители|слушатели)|уважаемые (зрители|слушатели)|дамы и господа)",
    // Thanks for watching / for being with us.
    r"(спасибо|благодарю)( вам| всем)?( большое| огромное)?( за (внимание|просмотр|ваше внимание|то что (вы )?(были|смотрели|посмотрели|досмотрели)( с нами| это видео| до конца)?)| что (вы )?(были|смотрели|посмотрели|досмотрели|остаетесь|оставались)( с нами| это видео| до конца)?)?",
    // Goodbyes.
    r"(до свидания|до встречи|до скорой встречи|до новых встреч|до завтра|до следующей недели|до следующего (выпуска|видео|раза)|пока пока|пока|всего (доброго|хорошего)|увидимся( в следующем (видео|выпуске))?)",
    // Calls to subscribe, like, comment.
    r"((не забудьте )?(подписывайтесь|подпишитесь|подписаться)( на (наш |мой |этот )?канал)?|(ставьте|поставьте) (лайки?|лайк)|(жмите|нажмите)( на)? колокольчик|(пишите|оставляйте) (свои )?(комментарии|в комментариях))",
    r"(оставайтесь с нами|с вами был[аи]? \w+|на этом (все|наш выпуск (подошел к концу|окончен)))",
    // Joining words between formulas ("… и ставьте лайки").
    r"(и|а|ну|итак|and|so)",
    // English.
    r"((hi|hello|hey)( there)?|good (morning|afternoon|evening)|welcome( back)?( to (the|my|our|this) (channel|show|video|podcast|stream))?)",
    r"(everyone|everybody|guys|folks|friends|ladies and gentlemen)",
    r"(thank you|thanks)( (so|very) much)?( (for (watching|listening|your attention|tuning in|joining us)|all|everyone|guys))?",
    r"(goodbye|bye bye|bye|see you( (next time|soon|later|tomorrow|in the next (one|video|episode)))?|take care)",
    r"((please )?(don t forget to )?(like and )?subscribe( to (the|my|our) channel)?|hit the (like button|bell))",
];

/// The entries of [`FORMULAS`] that greet (Russian, English), and that address the audience.
const GREETINGS: [usize; 2] = [0, 7];
const ADDRESS: [usize; 2] = [1, 8];

fn alternation(formulas: &[&str]) -> Regex {
    let alts: Vec<String> = formulas.iter().map(|f| format!("(?:{f})")).collect();
    Regex::new(&format!(r"^(?:{})(?: |$)", alts.join("|"))).expect("formulas compile")
}

fn formulas() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| alternation(FORMULAS))
}

fn greetings() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| alternation(&GREETINGS.map(|i| FORMULAS[i])))
}

fn greetings_or_address() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        alternation(
            &[GREETINGS, ADDRESS]
                .concat()
                .iter()
                .map(|&i| FORMULAS[i])
                .collect::<Vec<_>>(),
        )
    })
}

/// How many words a leading greeting takes from the normalised `sentence`: a greeting first
/// («добрый день», «hi»), then more greetings or words addressing the audience («друзья»,
/// «everyone»). A sentence that starts with «Ребята нашли…» keeps its subject.
fn greeting_words(sentence: &str) -> usize {
    let norm = normalize(sentence);
    let mut rest = norm.as_str();
    let mut re = greetings();
    while let Some(m) = re.find(rest) {
        if m.end() == 0 {
            break;
        }
        rest = rest[m.end()..].trim_start();
        re = greetings_or_address();
    }
    norm.split_whitespace().count() - rest.split_whitespace().count()
}

/// `sentence` after its first `n` words (runs of letters and digits, as [`normalize`] counts
/// them), without the punctuation between.
fn after_words(sentence: &str, n: usize) -> &str {
    if n == 0 {
        return sentence;
    }
    let (mut words, mut in_word) = (0, false);
    for (i, c) in sentence.char_indices() {
        let w = c.is_alphanumeric();
        if w && !in_word {
            if words == n {
                return &sentence[i..];
            }
            words += 1;
        }
        in_word = w;
    }
    ""
}

/// Lowercase, ё→е, anything but letters and digits → one space (also the Whisper filter's key).
pub(crate) fn normalize(text: &str) -> String {
    let mapped: String = text
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'ё' => 'е',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        })
        .collect();
    mapped.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether `sentence` is only formulas (greetings, thanks, goodbyes, subscribe calls).
pub fn is_formulaic(sentence: &str) -> bool {
    let norm = normalize(sentence);
    let mut rest = norm.as_str();
    if rest.is_empty() {
        return false;
    }
    while let Some(m) = formulas().find(rest) {
        if m.end() == 0 {
            break;
        }
        rest = rest[m.end()..].trim_start();
        if rest.is_empty() {
            return true;
        }
    }
    false
}

/// Sentences of `text`, each with its closing punctuation.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?' | '…' | '\n') {
            // Keep runs like "?!" or "..." together.
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if matches!(d, '.' | '!' | '?' | '…') {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(&text[start..end]);
            start = end;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// `text` without its formulaic sentences (empty when it held nothing else).
pub fn strip(text: &str) -> String {
    sentences(text)
        .into_iter()
        .filter(|s| !is_formulaic(s))
        .map(|s| after_words(s, greeting_words(s)).trim())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_thanks_and_goodbyes_are_formulaic() {
        for s in [
            "Добрый день.",
            "Всем привет, друзья!",
            "Спасибо, что были с нами. До свидания.",
            "Спасибо, что были с нами до свидания",
            "Спасибо за внимание!",
            "Спасибо большое за просмотр, подписывайтесь на канал и ставьте лайки!",
            "До новых встреч!",
            "Пока-пока!",
            "Здравствуйте, дорогие зрители.",
            "Thanks for watching, see you next time!",
            "Hi everyone, welcome back to the channel.",
            "Don't forget to like and subscribe.",
        ] {
            assert_eq!(strip(s), "", "{s:?} kept");
        }
    }

    #[test]
    fn content_stays_even_after_a_formula() {
        for s in [
            "Спасибо, это было просто невероятно!",
            "Не может быть! Это просто невероятно!",
            "До свидания, сказал он и выпрыгнул из самолёта.",
            "Thank you for saving my life.",
            "Всем известно, что это правда.",
            "Ребята нашли сокровище!",
            "В понедельник будет облачно.",
        ] {
            assert_eq!(strip(s), s, "{s:?} changed");
        }
    }

    #[test]
    fn a_greeting_before_content_goes_and_the_content_stays() {
        for (s, want) in [
            (
                "Добрый день, сегодня мы поговорим о погоде.",
                "сегодня мы поговорим о погоде.",
            ),
            (
                "Всем привет, друзья! Сегодня — сокровище.",
                "Сегодня — сокровище.",
            ),
            (
                "Привет, сегодня я расскажу, как мы нашли сокровище.",
                "сегодня я расскажу, как мы нашли сокровище.",
            ),
            (
                "Hi everyone, welcome back to the channel: today we launch a rocket!",
                "today we launch a rocket!",
            ),
            ("Здравствуйте... Это ёлка!", "Это ёлка!"),
        ] {
            assert_eq!(strip(s), want, "{s:?}");
        }
    }

    #[test]
    fn only_the_formulaic_sentences_go() {
        assert_eq!(
            strip("На следующей неделе погода не изменится. Спасибо, что были с нами. До свидания."),
            "На следующей неделе погода не изменится."
        );
        assert_eq!(
            strip("Добрый день. Сегодня мы поговорим о погоде?! Всем пока"),
            "Сегодня мы поговорим о погоде?!"
        );
        assert_eq!(strip(""), "");
        assert_eq!(strip("..."), "...", "punctuation alone is not a formula");
    }
}
