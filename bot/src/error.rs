//! The bot library's one error type. What a job's error means for its user (retry or not, which
//! words) is [`crate::failure::Cause`]'s to say, from these variants.

use crate::failure::Panicked;
use crate::store::StoreError;
use crate::telegram::redact;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine refused or failed (the user's file, the installation, a cancelled job).
    #[error(transparent)]
    Engine(#[from] viralclip_engine::Error),
    /// A training run failed.
    #[error(transparent)]
    Trainer(#[from] viralclip_trainer::Error),
    /// The job store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Bot API call failed (after its retries); the text is redacted (no token).
    #[error("{0}")]
    Telegram(String),
    /// The bot's setup: a missing model, a bad URL.
    #[error("{0}")]
    Config(String),
    /// A job that cannot go on, in words for the log.
    #[error("{0}")]
    Job(String),
    /// A job's stored payload does not read back.
    /// What a job needs is no longer there (a re-cut after its files' retention): the user's
    /// to know, not worth retrying.
    #[error("{0}")]
    Gone(String),
    #[error("job payload: {0}")]
    Payload(serde_json::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// A file or directory of the bot's.
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A panic inside a job or a handler, carried as an error.
    #[error(transparent)]
    Panicked(#[from] Panicked),
    /// A blocking task that was stopped before it finished.
    #[error("{0} was stopped")]
    Stopped(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
}

/// A Bot API error as [`Error::Telegram`], prefixed with the call (`"getMe: "`, or `""`).
pub fn telegram(call: &'static str) -> impl Fn(teloxide::RequestError) -> Error {
    move |e| Error::Telegram(format!("{call}{}", redact(&e.to_string())))
}

/// A blocking task's outcome: its panic as [`Error::Panicked`], a stop as [`Error::Stopped`].
pub fn joined<T>(r: std::result::Result<T, tokio::task::JoinError>, what: &'static str) -> Result<T> {
    r.map_err(|e| Error::from_join(e, what))
}

impl Error {
    /// A task's join error: its panic as [`Error::Panicked`], a stop as [`Error::Stopped`].
    pub fn from_join(e: tokio::task::JoinError, what: &'static str) -> Self {
        match Panicked::from_join(e) {
            Some(p) => Error::Panicked(p),
            None => Error::Stopped(what),
        }
    }
}
