//! The page's one error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The setup: a model missing, an address that needs a token, a port taken.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Bot(#[from] viralclip_bot::Error),
    #[error(transparent)]
    Store(#[from] viralclip_bot::store::StoreError),
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
