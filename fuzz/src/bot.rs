//! The bot target's checks: a message's text or a video's caption read as a command and as /clip
//! arguments over the chat's settings. Also replayed over the kept corpus by the bot's tests
//! (bot/tests/fuzz_corpus.rs).

use viralclip_bot::commands::Command;
use viralclip_bot::format::parse_clip_args;
use viralclip_bot::settings::Settings;

/// Whatever the text, reading it does not panic, and settings it yields are valid ones.
pub fn message_text(text: &str) {
    let base = Settings::default();
    let valid = |s: &Settings| {
        assert!(s.validate().is_ok(), "{s:?}");
        assert!(
            s.min_secs.is_finite() && s.max_secs.is_finite() && s.min_secs <= s.max_secs,
            "{s:?}"
        );
    };
    if let Some(Command::Clip(args)) = Command::parse_for(text, "viralclip_bot") {
        if let Ok(s) = parse_clip_args(&args, &base) {
            valid(&s);
        }
    }
    // A caption on a sent video is read as /clip arguments as it is.
    if let Ok(s) = parse_clip_args(text, &base) {
        valid(&s);
    }
}
