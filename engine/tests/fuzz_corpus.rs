//! The subtitle fuzz targets' checks (fuzz/src/subtitles.rs) on every test run: over the corpus
//! kept in fuzz/corpus (the seeds, and every input that once found a bug, named `found-*`), and
//! over a bounded proptest of generated inputs. The long runs are `scripts/fuzz.sh` (libFuzzer).

#[path = "../../fuzz/src/subtitles.rs"]
#[allow(dead_code)]
mod checks;

use proptest::prelude::*;
use std::path::PathBuf;

/// The files of `fuzz/corpus/TARGET`.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: no corpus", dir.display());
    out
}

#[test]
fn the_kept_corpus_passes_the_fuzz_checks() {
    let mut n = 0;
    for (target, check) in [("srt", checks::srt as fn(&str)), ("webvtt", checks::webvtt)] {
        // libFuzzer gives a `&str` target only the inputs that are UTF-8.
        for (p, bytes) in corpus(target) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                eprintln!("{target}: {}", p.display());
                check(text);
                n += 1;
            }
        }
    }
    for (p, bytes) in corpus("encoding") {
        eprintln!("encoding: {}", p.display());
        checks::encoding(&bytes);
        n += 1;
    }
    assert!(n >= 10, "{n} inputs");
}

/// Pieces of real cues in both formats and the characters that break naive parsers.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1\n".to_string()),
        Just("00:00:01,000 --> 00:00:02,000\n".to_string()),
        Just("00:01.000 --> 00:02.000 align:start\n".to_string()),
        Just("WEBVTT\n\n".to_string()),
        Just("NOTE x\n".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just(",".to_string()),
        Just("-->".to_string()),
        Just(":".to_string()),
        Just(".".to_string()),
        "[0-9]{1,22}",
        "[ёЁж€😀\u{0301}<>/ib&;]{1,4}",
        "\\PC{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn generated_webvtt_and_srt_pass_the_fuzz_checks(parts in proptest::collection::vec(piece(), 0..40)) {
        let text = parts.concat();
        checks::srt(&text);
        checks::webvtt(&text);
    }

    /// Bytes as users' files come: a BOM or none, UTF-16 units, Windows-1251 letters, noise.
    #[test]
    fn generated_bytes_pass_the_encoding_checks(
        bom in prop_oneof![Just(vec![]), Just(vec![0xEF, 0xBB, 0xBF]), Just(vec![0xFF, 0xFE]), Just(vec![0xFE, 0xFF])],
        parts in proptest::collection::vec(piece(), 0..20),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
        wide in any::<bool>(),
    ) {
        let text = parts.concat();
        let mut bytes = bom;
        if wide {
            for u in text.encode_utf16() {
                bytes.extend_from_slice(&u.to_le_bytes());
            }
        } else {
            bytes.extend(text.bytes());
        }
        bytes.extend(noise);
        checks::encoding(&bytes);
    }
}
