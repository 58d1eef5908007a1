//! The trainer's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file that cannot be used at all.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid training setup: {0}")]
    Config(String),
    #[error(transparent)]
    Engine(#[from] viralclip_engine::Error),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A kernel's self-check disagreed with candle's operations (`bench --train-steps`).
    #[error("self-check failed: {0}")]
    Check(String),
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
