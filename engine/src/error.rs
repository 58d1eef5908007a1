//! The engine's one error type. Every message here is written for the person who ran the command:
//! it names the file, the line or the limit that was hit.

use std::path::PathBuf;

/// Everything that can go wrong between an input file and clips on disk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input path does not exist.
    #[error("{}: no such file", .0.display())]
    NotFound(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A subtitle file could not be read; `line` is 1-based in the decoded text, `path` the file
    /// when it came from one ([`crate::subtitle::read_file`]).
    #[error("{}subtitles, line {line}: {message}", in_file(.path))]
    Subtitle {
        path: Option<PathBuf>,
        line: usize,
        message: String,
    },
    /// Subtitles (or a transcript) with no usable cue.
    #[error("no usable subtitle cues: {0}")]
    EmptyTranscript(String),
    /// The input is not a media file we accept.
    #[error("{}: not a video we can read ({reason})", path.display())]
    NotAVideo { path: PathBuf, reason: String },
    /// Transcription was needed but the input has no audio.
    #[error("{}: has no audio stream to transcribe (give subtitles with --subs)", .0.display())]
    NoAudio(PathBuf),
    /// The input breaks a configured bound (duration, resolution, size).
    #[error("{}: {limit}", path.display())]
    TooLarge { path: PathBuf, limit: String },
    /// FFmpeg failed while decoding or encoding.
    #[error("media: {0}")]
    Media(String),
    /// The model directory, manifest or weights are missing or inconsistent.
    #[error("model: {0}")]
    Model(String),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Whisper failed to transcribe.
    #[error("transcription: {0}")]
    Transcription(String),
    /// The Whisper model is missing, cannot be fetched or does not load.
    #[error("Whisper model: {0}")]
    WhisperModel(String),
    /// A request that makes no sense (min > max, count 0, ...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A feature this build lacks.
    #[error("this build has no {0} support (rebuild with --features {0})")]
    Unsupported(&'static str),
    /// A link that is refused or cannot be fetched for good (dead, private, live, over the
    /// limits, a host or address not allowed): the user's to fix.
    #[error("{url}: {reason}")]
    Link { url: String, reason: String },
    /// A link that failed for a passing reason (the network, the site's server): worth retrying.
    #[error("fetching {0}")]
    LinkNetwork(String),
    /// yt-dlp is missing or misbehaves (the installation's fault).
    #[error("downloader: {0}")]
    Downloader(String),
    /// The caller asked to stop.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    /// Whether the input itself is at fault (retrying cannot help; tell the user why).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::NotFound(_)
                | Error::Subtitle { .. }
                | Error::EmptyTranscript(_)
                | Error::NotAVideo { .. }
                | Error::NoAudio(_)
                | Error::TooLarge { .. }
                | Error::Invalid(_)
                | Error::Link { .. }
        )
    }

    /// The message for someone who sent the file from elsewhere (a chat, a web page): the same
    /// reason without this machine's paths, and without the command-line hints.
    pub fn for_user(&self) -> String {
        match self {
            Error::NotFound(_) => "the file is gone before it could be read".into(),
            Error::NotAVideo { reason, .. } => format!("this is not a video that can be read ({reason})"),
            Error::NoAudio(_) => {
                "the video has no sound to transcribe; send subtitles (.srt or .vtt) with it".into()
            }
            Error::TooLarge { limit, .. } => format!("this file is over the limits: {limit}"),
            Error::Subtitle { line, message, .. } => format!("subtitles, line {line}: {message}"),
            Error::Link { reason, .. } => reason.clone(),
            Error::Io { source, .. } => format!("the file could not be read ({})", source.kind()),
            other => other.to_string(),
        }
    }

    /// Whether the installation is at fault (a model that is missing or does not load, a feature
    /// the build lacks): retrying cannot help, and the person who runs the program must act.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Error::Model(_)
                | Error::Tokenizer(_)
                | Error::WhisperModel(_)
                | Error::Unsupported(_)
                | Error::Downloader(_)
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(path)
        } else {
            Error::Io { path, source }
        }
    }
}

/// `"PATH: "` for an error that names its file, else nothing.
fn in_file(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl Error {
    /// This error as one about the input `path` that FFmpeg failed on (decoding it, filtering
    /// it, cutting it): a failure inside an untrusted file is the file's fault, said with its
    /// name ([`Error::NotAVideo`]). Other errors are unchanged.
    pub fn on_input(self, path: &std::path::Path) -> Self {
        match self {
            Error::Media(reason) => Error::NotAVideo {
                path: path.into(),
                reason,
            },
            e => e,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
