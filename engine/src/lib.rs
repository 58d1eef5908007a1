//! viralclip's engine: everything between a video or subtitle file on disk and clips of its best
//! moments on disk.
//!
//! # Layout
//! - Pure, IO-free, millisecond-testable: [`cue`] (cues and their repair), [`subtitle`] (bytes →
//!   cues), [`score`] (virality), [`select`] (windows, candidates, moments), [`transcribe::filter`].
//! - The model, written once for inference and training: [`model`] (BERT + the seed's heads, the
//!   artifact format), [`scorer`] (tokenise, length-sorted batches, dynamic padding).
//! - Native pieces behind traits and features: [`transcribe`] (whisper-rs, feature `whisper`;
//!   [`whisper_model`] says which file: a path, or a name fetched from the hub),
//!   [`media`] (the [`media::Media`] trait; ffmpeg-next with feature `media`).
//! - [`pipeline`]: the whole job, from a request to a [`report::Report`] and clip files.

pub mod adjust;
pub mod boilerplate;
pub mod captions;
pub mod cue;
pub mod device;
pub mod error;
pub mod faces;
pub mod font;
pub mod format;
pub mod framing;
pub mod headline;
pub mod link;
pub mod media;
pub mod model;
pub mod pipeline;
pub mod reframe;
pub mod report;
pub mod score;
pub mod scorer;
pub mod select;
pub mod shape;
pub mod subtitle;
pub mod transcribe;
pub mod whisper_model;
#[cfg(feature = "whisper")]
pub mod whisper_quant;

pub use error::{Error, Result};
