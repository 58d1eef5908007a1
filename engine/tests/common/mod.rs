//! Shared test helpers: the model fixtures from `../shared/tools/fetch-fixtures.sh`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A fixture path from `var` (set by `source $VIRALCLIP_FIXTURES/fixtures.env`), or its default
/// place in ~/.cache/viralclip-fixtures. Missing: the test fails with instructions, unless
/// VIRALCLIP_ALLOW_MISSING_FIXTURES=1, when it prints why it is skipped and returns None.
pub fn fixture(var: &str, default_rel: &str) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        let root = std::env::var_os("VIRALCLIP_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/viralclip-fixtures")
            });
        root.join(default_rel)
    });
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "fixture {var} not found at {}: run ../shared/tools/fetch-fixtures.sh and source $VIRALCLIP_FIXTURES/fixtures.env",
        p.display()
    );
    if std::env::var("VIRALCLIP_ALLOW_MISSING_FIXTURES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {msg}");
        None
    } else {
        panic!("{msg}");
    }
}

/// A file or folder of the project's shared data (`../shared/data/REL`, read in place, never
/// copied); missing, the test fails saying so.
pub fn shared_data(rel: &str) -> PathBuf {
    let p = repo().join("../shared/data").join(rel);
    assert!(p.exists(), "{} missing (the project's shared data)", p.display());
    p
}

pub fn e5() -> Option<PathBuf> {
    fixture("VIRALCLIP_ENCODER_MULTILINGUAL", "encoders/multilingual-e5-small")
}

pub fn minilm() -> Option<PathBuf> {
    fixture("VIRALCLIP_ENCODER_ENGLISH", "encoders/all-MiniLM-L6-v2")
}

pub fn whisper_base() -> Option<PathBuf> {
    fixture("VIRALCLIP_WHISPER_BASE", "whisper/ggml-base.bin")
}

/// Whether a command exists (ffmpeg, text2wave); if not, the test fails loudly.
pub fn require_tool(name: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} is not installed (Debian: ffmpeg, festival, festvox-ru); .ci/run installs it"
    );
}
