//! Which Whisper model file to load: a local ggml `.bin`, or a model named like whisper.cpp's
//! (`base`, `large-v3-turbo`, `small-q5_1`, …) fetched from the Hugging Face hub
//! (`ggerganov/whisper.cpp`, file `ggml-NAME.bin`) into the hub's cache, like the encoders. A
//! local path always wins: a spec that names an existing file, contains a `/` or ends in `.bin`
//! is a path. Parsing is pure; only [`WhisperModel::resolve`] touches the disk or the network.

use crate::error::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// The model used when none is given: multilingual Whisper base in q8_0 (82 MB instead of 148,
/// the same word error on Russian speech and faster on a CPU; Russian works).
pub const DEFAULT_NAME: &str = "base-q8_0";
/// The hub repository whisper.cpp publishes its ggml models in.
pub const HUB_REPO: &str = "ggerganov/whisper.cpp";

/// Model names whisper.cpp publishes (each also as `-q5_0`, `-q5_1` or `-q8_0` where it exists).
const NAMES: &[&str] = &[
    "tiny",
    "tiny.en",
    "base",
    "base.en",
    "small",
    "small.en",
    "small.en-tdrz",
    "medium",
    "medium.en",
    "large-v1",
    "large-v2",
    "large-v3",
    "large-v3-turbo",
];
const QUANTS: &[&str] = &["q5_0", "q5_1", "q8_0"];

/// A Whisper model: where it is, or what it is called on the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhisperModel {
    /// A ggml file on disk.
    File(PathBuf),
    /// `ggml-NAME.bin` in [`HUB_REPO`].
    Hub(String),
}

impl Default for WhisperModel {
    fn default() -> Self {
        WhisperModel::Hub(DEFAULT_NAME.into())
    }
}

impl fmt::Display for WhisperModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhisperModel::File(p) => write!(f, "{}", p.display()),
            WhisperModel::Hub(n) => write!(f, "{n} ({HUB_REPO} on the Hugging Face hub)"),
        }
    }
}

impl std::str::FromStr for WhisperModel {
    type Err = Error;

    /// `FILE` or `NAME`; an unknown name that is no file is an error that lists the names.
    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(WhisperModel::default());
        }
        let path = Path::new(spec);
        if path.exists() || spec.contains('/') || spec.ends_with(".bin") {
            return Ok(WhisperModel::File(path.to_path_buf()));
        }
        let name = spec.strip_prefix("ggml-").unwrap_or(spec);
        if is_known_name(name) {
            Ok(WhisperModel::Hub(name.to_string()))
        } else {
            Err(Error::WhisperModel(format!(
                "{spec}: no such file, and not a Whisper model name (one of {}, optionally with -q5_0, -q5_1 or -q8_0)",
                NAMES.join(", ")
            )))
        }
    }
}

fn is_known_name(name: &str) -> bool {
    NAMES.contains(&name)
        || name
            .rsplit_once('-')
            .is_some_and(|(base, q)| QUANTS.contains(&q) && NAMES.contains(&base))
}

impl WhisperModel {
    /// The file name in [`HUB_REPO`] for a hub model.
    pub fn hub_file(name: &str) -> String {
        format!("ggml-{name}.bin")
    }

    /// The local file to load: the given path (which must be a regular file), or the hub's cached
    /// copy of the named model, downloaded the first time.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            WhisperModel::File(p) => {
                if p.is_file() {
                    Ok(p.clone())
                } else if p.exists() {
                    Err(Error::WhisperModel(format!(
                        "{}: not a regular file",
                        p.display()
                    )))
                } else {
                    Err(Error::WhisperModel(format!(
                        "{}: Whisper model file not found (pass --whisper FILE, a ggml .bin, or a model name such as {DEFAULT_NAME})",
                        p.display()
                    )))
                }
            }
            WhisperModel::Hub(name) => from_hub(name),
        }
    }
}

#[cfg(feature = "hub")]
fn from_hub(name: &str) -> Result<PathBuf> {
    use hf_hub::api::sync::ApiBuilder;
    let file = WhisperModel::hub_file(name);
    let api = ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| Error::WhisperModel(format!("Hugging Face hub: {e}")))?;
    tracing::info!(%file, repo = HUB_REPO, "fetching the Whisper model (cached after the first time)");
    api.model(HUB_REPO.to_string()).get(&file).map_err(|e| {
        Error::WhisperModel(format!(
            "cannot fetch {file} from {HUB_REPO} on the Hugging Face hub ({e}); download it and pass it with --whisper FILE"
        ))
    })
}

#[cfg(not(feature = "hub"))]
fn from_hub(name: &str) -> Result<PathBuf> {
    Err(Error::WhisperModel(format!(
        "Whisper model {name}: this build cannot reach the Hugging Face hub; pass --whisper FILE (a ggml .bin)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<WhisperModel> {
        s.parse()
    }

    #[test]
    fn names_go_to_the_hub_and_paths_stay_local() {
        assert_eq!(parse("").unwrap(), WhisperModel::Hub("base-q8_0".into()));
        assert_eq!(parse("base").unwrap(), WhisperModel::Hub("base".into()));
        assert_eq!(
            parse("large-v3-turbo").unwrap(),
            WhisperModel::Hub("large-v3-turbo".into())
        );
        assert_eq!(
            parse("ggml-small-q5_1").unwrap(),
            WhisperModel::Hub("small-q5_1".into())
        );
        assert_eq!(parse("base.en").unwrap(), WhisperModel::Hub("base.en".into()));
        assert_eq!(
            parse("models/ggml-base.bin").unwrap(),
            WhisperModel::File("models/ggml-base.bin".into())
        );
        assert_eq!(parse("x.bin").unwrap(), WhisperModel::File("x.bin".into()));
        assert_eq!(
            WhisperModel::hub_file("large-v3-turbo"),
            "ggml-large-v3-turbo.bin"
        );
        let e = parse("huge").unwrap_err().to_string();
        assert!(
            e.contains("huge: no such file") && e.contains("large-v3-turbo"),
            "{e}"
        );
        assert!(parse("base-q4_9").is_err());
    }

    #[test]
    fn an_existing_file_wins_over_a_name() {
        let dir = tempfile::tempdir().unwrap();
        // A file called "base" is that file, not the hub's model of that name.
        let f = dir.path().join("base");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(parse(f.to_str().unwrap()).unwrap(), WhisperModel::File(f.clone()));
        assert_eq!(WhisperModel::File(f.clone()).resolve().unwrap(), f);
        let missing = WhisperModel::File(dir.path().join("nope.bin"))
            .resolve()
            .unwrap_err();
        assert!(missing.to_string().contains("not found"), "{missing}");
        let not_file = WhisperModel::File(dir.path().to_path_buf())
            .resolve()
            .unwrap_err();
        assert!(not_file.to_string().contains("not a regular file"), "{not_file}");
    }
}
