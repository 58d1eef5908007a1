//! The bot fuzz target's checks (fuzz/src/bot.rs) on every test run: over the corpus kept in
//! fuzz/corpus/bot_command and over a bounded proptest of generated messages. The long runs are
//! `scripts/fuzz.sh` (libFuzzer).

#[path = "../../fuzz/src/bot.rs"]
mod checks;

use proptest::prelude::*;
use std::path::PathBuf;

#[test]
fn the_kept_corpus_passes_the_fuzz_checks() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/bot_command");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        if let Ok(text) = std::str::from_utf8(&bytes) {
            checks::message_text(text);
            n += 1;
        }
    }
    assert!(n >= 5, "{n} inputs in {}", dir.display());
}

/// Words of commands and /clip arguments, and what breaks naive parsers.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/clip".to_string()),
        Just("/CLIP".to_string()),
        Just("@viralclip_bot".to_string()),
        Just("@other_bot".to_string()),
        Just("/train".to_string()),
        Just("/cancel".to_string()),
        Just("9:16".to_string()),
        Just("captions=".to_string()),
        Just("fast".to_string()),
        Just("nocaptions".to_string()),
        Just("-".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        "[0-9]{1,25}",
        "[0-9.eE+-]{1,12}",
        "[a-zё]{1,3}",
        "\\PC{0,5}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn generated_messages_pass_the_fuzz_checks(words in proptest::collection::vec(word(), 0..12)) {
        checks::message_text(&words.concat());
    }
}
