//! `report.json`: what was found, why, and how long each stage took. Serialisable both ways so the
//! bot (or any caller) can read a finished job back.

use crate::cue::{CueSource, Repairs};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub viralclip_version: String,
    pub input: InputFacts,
    pub transcript: TranscriptFacts,
    pub model: serde_json::Value,
    pub settings: serde_json::Value,
    pub moments: Vec<MomentReport>,
    /// Virality of every scored window, in time order (for timelines).
    pub timeline: Vec<TimelinePoint>,
    /// Seconds per stage.
    pub timings: Timings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputFacts {
    pub path: PathBuf,
    /// `video` or `subtitles`.
    pub kind: String,
    pub size_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtitles: Option<PathBuf>,
    /// The link the video was fetched from (yt-dlp's version among its facts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::link::SourceFacts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TranscriptFacts {
    pub source: CueSource,
    pub cues: usize,
    pub words: usize,
    pub span_secs: f64,
    pub repairs: Repairs,
    /// Every cue, in order.
    pub lines: Vec<crate::cue::Cue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmotionProb {
    pub label: String,
    pub p: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MomentReport {
    pub rank: usize,
    pub start: f64,
    pub end: f64,
    pub duration: f64,
    /// 0.6·peak + 0.4·mean window virality.
    pub virality: f32,
    /// Popularity probability of the peak window.
    pub popularity: f32,
    /// The strongest emotions of the peak window.
    pub emotions: Vec<EmotionProb>,
    /// All the clip's words.
    pub text: String,
    /// The peak window's words: the line that made the clip.
    pub quote: String,
    pub reasons: Vec<String>,
    /// Its strongest complete sentence, at most 60 characters ([`crate::headline`]).
    #[serde(default)]
    pub title: String,
    /// 3 to 5, with the `#`: keywords and the top emotion.
    #[serde(default)]
    pub hashtags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<crate::report::ClipFacts>,
}

/// A clip file and its thumbnail, paths relative to the output directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipFacts {
    pub path: PathBuf,
    pub thumbnail: PathBuf,
    pub width: u32,
    pub height: u32,
    pub duration: f64,
    pub size_bytes: u64,
    pub thumbnail_bytes: u64,
    /// `precise` or `fast`.
    pub mode: String,
    /// Where the clip starts in the source (a keyframe before `start` in fast mode).
    pub source_start: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TimelinePoint {
    pub start: f64,
    pub end: f64,
    pub virality: f32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub probe: f64,
    pub audio_decode: f64,
    pub transcribe: f64,
    pub model_load: f64,
    pub score: f64,
    pub select: f64,
    pub cut: f64,
    pub total: f64,
    pub windows_scored: usize,
    /// Windows scored while Whisper was still transcribing (`ClipRequest::overlap`).
    #[serde(default)]
    pub windows_prefetched: usize,
}
