//! What the engine needs from media, as one trait ([`Media`]) over plain types: probing
//! ([`MediaInfo`] against [`Limits`]), 16 kHz mono audio for Whisper (the whole file's, or one
//! clip's for the framing's loudness), text subtitle streams, sampled frames for the framing,
//! cutting a clip ([`CutMode`], shaped by a [`crate::shape::Shape`]) and its thumbnail.
//!
//! The pipeline holds a `Box<dyn Media>` and is not gated on the `media` feature: [`built_in`]
//! is the one place that chooses. With the feature it is [`Ffmpeg`] (ffmpeg-next, [`ffmpeg`]);
//! without it, [`NoMedia`], which refuses every video with [`Error::Unsupported`] (subtitle
//! files alone still work).

mod budget;
#[cfg(feature = "media")]
mod ffmpeg;

pub use budget::{DecodeBudget, Meter};

#[cfg(feature = "media")]
pub use ffmpeg::{
    ass_dialogue_text, cut, cut_shaped, decode_audio_16k, decode_audio_span, open_input, probe,
    read_subtitle_stream, sample_frames, thumbnail, Ffmpeg, DEMUXERS,
};

use crate::cue::Cue;
use crate::error::{Error, Result};
use crate::shape::Shape;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// What [`Media::frames`] calls with each frame: `(t, rgb, w, h)`; an error stops decoding.
pub type OnFrame<'a> = dyn FnMut(f64, &[u8], u32, u32) -> Result<()> + 'a;

/// Media as the pipeline uses it. Inputs are untrusted: an implementation opens regular files
/// only, reads no other file or address than the one named, and bounds its work while decoding
/// ([`DecodeBudget`], counted by a [`Meter`] per pass), not only by what a header says.
/// Shared by the cutting threads.
pub trait Media: Send + Sync {
    /// Reads the container's facts and checks them against `limits`.
    fn probe(&self, path: &Path, limits: &Limits) -> Result<MediaInfo>;

    /// The cues of text subtitle stream `index` (as in [`MediaInfo::subtitles`]).
    fn subtitle_stream(&self, path: &Path, index: usize) -> Result<Vec<Cue>>;

    /// The best audio stream at 16 kHz mono f32, for Whisper; stops with [`Error::TooLarge`] once
    /// the decoded audio passes `max_secs`. `progress` gets 0..=1.
    fn audio_16k(
        &self,
        path: &Path,
        max_secs: f64,
        progress: &dyn Fn(f32),
        cancel: &AtomicBool,
    ) -> Result<Vec<f32>>;

    /// The sound of `[start, end)` at 16 kHz mono, its first sample at `start`.
    fn audio_span(&self, path: &Path, start: f64, end: f64) -> Result<Vec<f32>>;

    /// Frames of `[start, end)`, `per_sec` a second, at most `max_edge` px on the long side, as
    /// packed RGB: `each(t, rgb, w, h)` with `t` from `start`. Returns the source's size.
    fn frames(
        &self,
        path: &Path,
        span: (f64, f64),
        per_sec: f64,
        max_edge: u32,
        each: &mut OnFrame,
    ) -> Result<(u32, u32)>;

    /// Cuts `span` seconds of `src` into a fast-start MP4 at `out`, in `shape` when given (then
    /// re-encoded whatever `mode` says); no file is left at `out` when it fails.
    fn cut(
        &self,
        src: &Path,
        span: (f64, f64),
        mode: CutMode,
        shape: Option<Shape>,
        out: &Path,
    ) -> Result<ClipFile>;

    /// A JPEG of the frame at `at` seconds of `src`, at most `max_edge` px on its long side.
    fn thumbnail(&self, src: &Path, at: f64, max_edge: u32, out: &Path) -> Result<Thumbnail>;
}

/// The media this build has: [`Ffmpeg`] with the `media` feature, else [`NoMedia`].
pub fn built_in() -> Box<dyn Media> {
    #[cfg(feature = "media")]
    return Box::new(Ffmpeg::default());
    #[cfg(not(feature = "media"))]
    return Box::new(NoMedia);
}

/// Media for a build without FFmpeg: every video is refused with [`Error::Unsupported`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMedia;

impl Media for NoMedia {
    fn probe(&self, _: &Path, _: &Limits) -> Result<MediaInfo> {
        Err(Error::Unsupported("media"))
    }
    fn subtitle_stream(&self, _: &Path, _: usize) -> Result<Vec<Cue>> {
        Err(Error::Unsupported("media"))
    }
    fn audio_16k(&self, _: &Path, _: f64, _: &dyn Fn(f32), _: &AtomicBool) -> Result<Vec<f32>> {
        Err(Error::Unsupported("media"))
    }
    fn audio_span(&self, _: &Path, _: f64, _: f64) -> Result<Vec<f32>> {
        Err(Error::Unsupported("media"))
    }
    fn frames(&self, _: &Path, _: (f64, f64), _: f64, _: u32, _: &mut OnFrame) -> Result<(u32, u32)> {
        Err(Error::Unsupported("media"))
    }
    fn cut(&self, _: &Path, _: (f64, f64), _: CutMode, _: Option<Shape>, _: &Path) -> Result<ClipFile> {
        Err(Error::Unsupported("media"))
    }
    fn thumbnail(&self, _: &Path, _: f64, _: u32, _: &Path) -> Result<Thumbnail> {
        Err(Error::Unsupported("media"))
    }
}

/// Bounds on what an input may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    pub max_duration_secs: f64,
    pub max_width: u32,
    pub max_height: u32,
    pub max_bytes: u64,
    /// The largest subtitle file read, counted while reading ([`crate::subtitle::MAX_BYTES`]).
    pub max_subtitle_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_duration_secs: 4.0 * 3600.0,
            max_width: 7680,
            max_height: 4320,
            max_bytes: 4 << 30,
            max_subtitle_bytes: crate::subtitle::MAX_BYTES,
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MediaInfo {
    pub container: String,
    pub duration: f64,
    pub size_bytes: u64,
    pub video: Option<VideoInfo>,
    pub audio: Option<AudioInfo>,
    pub subtitles: Vec<SubtitleStream>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VideoInfo {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudioInfo {
    pub codec: String,
    pub sample_rate: u32,
    pub channels: u16,
}

/// A subtitle stream inside the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubtitleStream {
    pub index: usize,
    pub codec: String,
    pub language: Option<String>,
    /// Text (subrip, mov_text, webvtt, ass) rather than bitmaps.
    pub is_text: bool,
}

/// How a clip is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CutMode {
    /// Re-encode H.264/AAC, yuv420p: frame-exact edges.
    Precise,
    /// Copy streams from the keyframe at or before the start: fast, edges on keyframes.
    Fast,
}

/// A clip written to disk, with what Telegram's sendVideo wants to know.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipFile {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub duration: f64,
    /// Where the clip really starts in the source (a keyframe in fast mode).
    pub source_start: f64,
    pub size_bytes: u64,
    pub mode: CutMode,
}

/// A JPEG thumbnail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Thumbnail {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub size_bytes: u64,
}
