//! How a clip is delivered in a shape ([`crate::format::Format`]): its geometry, where the crop
//! goes along the clip ([`crate::reframe::Plan`]) and the captions burned in. Plain data: the
//! [`crate::media::Media`] that cuts the clip renders it (FFmpeg's: `media/ffmpeg/shaper.rs`).

use std::path::PathBuf;

use crate::format::Geometry;
use crate::reframe::{Axis, Layout, Plan};

/// How a clip is shaped: the crop and output sizes, where the crop goes, the captions.
#[derive(Debug, Clone)]
pub struct Shape {
    pub geometry: Geometry,
    /// Clip time (seconds from the clip's start).
    pub plan: Plan,
    /// An ASS file burned in (libass), and a directory it may take fonts from.
    pub captions: Option<PathBuf>,
    pub fonts_dir: Option<PathBuf>,
}

impl Shape {
    /// A still crop in the middle of the frame for the whole clip (the framing when nothing
    /// says where the people are).
    pub fn centred(geometry: Geometry, (src_w, src_h): (u32, u32), duration: f64) -> Shape {
        let axis = if geometry.crop_w + 2 < src_w {
            Axis::X
        } else {
            Axis::Y
        };
        let (crop, extent) = match axis {
            Axis::X => (geometry.crop_w as f32, src_w as f32),
            Axis::Y => (geometry.crop_h as f32, src_h as f32),
        };
        Shape {
            geometry,
            plan: Plan {
                axis,
                crop,
                extent,
                segments: vec![crate::reframe::Segment {
                    start: 0.0,
                    end: duration,
                    layout: Layout::Track(vec![(0.0, extent / 2.0)]),
                }],
            },
            captions: None,
            fonts_dir: None,
        }
    }
}
