//! The subtitle targets' checks: the invariants the pipeline relies on in what a parser hands
//! it. Also replayed over the kept corpus by the engine's tests (engine/tests/fuzz_corpus.rs).

use viralclip_engine::cue::{CueSource, Transcript};
use viralclip_engine::subtitle;

/// Any text through the SRT parser and the repair.
pub fn srt(text: &str) {
    if let Ok(cues) = subtitle::parse_srt(text) {
        check_transcript(&Transcript::repair(cues, file("srt")));
    }
}

/// Any text through the WebVTT parser and the repair.
pub fn webvtt(text: &str) {
    if let Ok(cues) = subtitle::parse_vtt(text) {
        check_transcript(&Transcript::repair(cues, file("webvtt")));
    }
}

/// Any bytes decoded (BOMs, UTF-16, Windows-1251, broken UTF-8) and parsed whole.
pub fn encoding(bytes: &[u8]) {
    let (text, encoding) = subtitle::decode(bytes);
    assert!(
        !text.contains('\r') && !text.contains('\0'),
        "{encoding}: {text:?}"
    );
    assert!(!text.starts_with('\u{feff}'), "{encoding}: a BOM left in");
    if let Ok(t) = subtitle::parse_bytes(bytes) {
        assert!(!t.cues.is_empty());
        check_transcript(&t);
    }
}

fn file(format: &str) -> CueSource {
    CueSource::SubtitleFile {
        format: format.into(),
        encoding: "utf-8".into(),
    }
}

/// A transcript as the selection needs it: cues finite, in order, not overlapping, each longer
/// than a millisecond with text; folding it into lines (what a dense transcript gets) keeps every
/// word, each timed inside its line.
pub fn check_transcript(t: &Transcript) {
    for c in &t.cues {
        assert!(c.start.is_finite() && c.end.is_finite(), "{c:?}");
        assert!(c.start >= 0.0 && c.end - c.start > 1e-3, "{c:?}");
        assert!(!c.text.trim().is_empty(), "{c:?}");
    }
    for w in t.cues.windows(2) {
        assert!(w[0].end <= w[1].start + 1e-9, "overlap: {:?} {:?}", w[0], w[1]);
    }
    let words = t.words();
    let mut folded = t.clone();
    folded.merge_short(7.5);
    assert_eq!(folded.words(), words, "words lost folding");
    for c in &folded.cues {
        let timed = c.timed_words();
        assert_eq!(timed.len(), c.text.split_whitespace().count(), "{c:?}");
        for w in &timed {
            assert!(
                w.start >= c.start - 1e-6 && w.end <= c.end + 1e-6 && w.start <= w.end,
                "{w:?} in {c:?}"
            );
        }
    }
}
