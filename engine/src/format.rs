//! The shape a clip is delivered in: `9:16` for Shorts, Reels and TikTok, `1:1`, `4:5`, `16:9`, or
//! the source's own (`original`). Pure: which part of the source a crop may take and what size the
//! output is, from the source's size alone.
//!
//! Sizes: the crop is the largest window of the target shape that fits in the source; the output
//! is the platform size (1080×1920 for 9:16, 1080×1080, 1080×1350, 1920×1080), or the largest rung
//! below it (⅔, ½, ⅓, ¼ of it) that the crop reaches without being scaled up more than
//! [`MAX_UPSCALE`]×: a 720p source gives 720×1280 for 9:16 (its 404×720 crop, ×1.78). Every side is
//! even (yuv420p).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The most a crop is scaled up: past it a clip gets visibly soft, so the output shrinks instead.
pub const MAX_UPSCALE: f64 = 2.0;

/// Fractions of the platform size an output may take, largest first.
const LADDER: [(u32, u32); 5] = [(1, 1), (2, 3), (1, 2), (1, 3), (1, 4)];

/// The long edge of `original` clips (today's behaviour: the source, long edge at most 1920).
pub const ORIGINAL_MAX_EDGE: u32 = 1920;

/// A delivery shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Format {
    /// 9:16, 1080×1920: Shorts, Reels, TikTok. The default.
    #[default]
    #[serde(rename = "9:16")]
    Vertical,
    /// 1:1, 1080×1080.
    #[serde(rename = "1:1")]
    Square,
    /// 4:5, 1080×1350: the feed.
    #[serde(rename = "4:5")]
    Portrait,
    /// 16:9, 1920×1080.
    #[serde(rename = "16:9")]
    Landscape,
    /// The source's own shape and framing, long edge at most 1920.
    #[serde(rename = "original")]
    Original,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Vertical,
        Format::Square,
        Format::Portrait,
        Format::Landscape,
        Format::Original,
    ];

    /// Width:height, or `None` for `original`.
    pub fn ratio(self) -> Option<(u32, u32)> {
        match self {
            Format::Vertical => Some((9, 16)),
            Format::Square => Some((1, 1)),
            Format::Portrait => Some((4, 5)),
            Format::Landscape => Some((16, 9)),
            Format::Original => None,
        }
    }

    /// The platform's size for this shape, or `None` for `original`.
    pub fn full_size(self) -> Option<(u32, u32)> {
        match self {
            Format::Vertical => Some((1080, 1920)),
            Format::Square => Some((1080, 1080)),
            Format::Portrait => Some((1080, 1350)),
            Format::Landscape => Some((1920, 1080)),
            Format::Original => None,
        }
    }

    /// Where the crop goes and what comes out, for a `src_w`×`src_h` source.
    pub fn geometry(self, src_w: u32, src_h: u32) -> Geometry {
        let (src_w, src_h) = (src_w.max(2), src_h.max(2));
        let Some((rw, rh)) = self.ratio() else {
            let scale = (ORIGINAL_MAX_EDGE as f64 / src_w.max(src_h) as f64).min(1.0);
            return Geometry {
                crop_w: src_w,
                crop_h: src_h,
                out_w: even(src_w as f64 * scale),
                out_h: even(src_h as f64 * scale),
            };
        };
        // The largest window of the target shape inside the source.
        let (crop_w, crop_h) = if src_w as u64 * rh as u64 >= src_h as u64 * rw as u64 {
            (
                even_floor(src_h as f64 * rw as f64 / rh as f64),
                even_floor(src_h as f64),
            )
        } else {
            (
                even_floor(src_w as f64),
                even_floor(src_w as f64 * rh as f64 / rw as f64),
            )
        };
        let (full_w, full_h) = self.full_size().expect("a ratio has a size");
        // The platform's ladder (1080, 720, 540, 360, 270 wide for 9:16): the largest rung the
        // crop reaches within MAX_UPSCALE; below the last, the crop itself at MAX_UPSCALE.
        let rung = LADDER.iter().find_map(|&(num, den)| {
            let exact = (full_w * num) % den == 0 && (full_h * num) % den == 0;
            let (w, h) = (full_w * num / den, full_h * num / den);
            let fits = w as f64 <= crop_w as f64 * MAX_UPSCALE + 0.5;
            (exact && fits && w % 2 == 0 && h % 2 == 0).then_some((w, h))
        });
        let (out_w, out_h) = rung.unwrap_or_else(|| {
            // Keep the exact shape: an even multiple of the ratio, at most MAX_UPSCALE× the crop.
            let unit = (crop_w as f64 * MAX_UPSCALE / rw as f64 / 2.0).floor().max(1.0) * 2.0;
            (even(unit * rw as f64), even(unit * rh as f64))
        });
        Geometry {
            crop_w,
            crop_h,
            out_w,
            out_h,
        }
    }
}

/// The crop window's size in the source and the output size, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Geometry {
    pub crop_w: u32,
    pub crop_h: u32,
    pub out_w: u32,
    pub out_h: u32,
}

impl Geometry {
    /// Whether the crop takes the whole source (nothing to frame).
    pub fn is_whole(&self, src_w: u32, src_h: u32) -> bool {
        self.crop_w + 2 >= src_w && self.crop_h + 2 >= src_h
    }
}

/// The nearest even size, at least 2 (yuv420p needs even sides).
pub(crate) fn even(x: f64) -> u32 {
    ((x / 2.0).round() as u32 * 2).max(2)
}

fn even_floor(x: f64) -> u32 {
    ((x / 2.0).floor() as u32 * 2).max(2)
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Vertical => "9:16",
            Format::Square => "1:1",
            Format::Portrait => "4:5",
            Format::Landscape => "16:9",
            Format::Original => "original",
        })
    }
}

impl FromStr for Format {
    type Err = String;

    /// `9:16`, `1:1`, `4:5`, `16:9`, `original`; also `9x16`, `vertical`, `square`, `horizontal`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase().replace(['x', '/'], ":");
        Ok(match s.as_str() {
            "9:16" | "vertical" | "shorts" | "reels" | "tiktok" => Format::Vertical,
            "1:1" | "square" => Format::Square,
            "4:5" | "portrait" => Format::Portrait,
            "16:9" | "horizontal" | "landscape" => Format::Landscape,
            "original" | "orig" | "source" => Format::Original,
            _ => {
                return Err(format!(
                    "unknown format {s:?}: one of 9:16, 1:1, 4:5, 16:9, original"
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_720p_source_gives_720x1280_and_1080p_the_full_size() {
        let g = Format::Vertical.geometry(1280, 720);
        assert_eq!((g.crop_w, g.crop_h), (404, 720));
        assert_eq!((g.out_w, g.out_h), (720, 1280));
        let g = Format::Vertical.geometry(1920, 1080);
        assert_eq!((g.crop_w, g.crop_h), (606, 1080));
        assert_eq!((g.out_w, g.out_h), (1080, 1920));
        let g = Format::Square.geometry(1920, 1080);
        assert_eq!((g.crop_w, g.crop_h, g.out_w, g.out_h), (1080, 1080, 1080, 1080));
        let g = Format::Portrait.geometry(1920, 1080);
        assert_eq!((g.out_w, g.out_h), (1080, 1350));
        let g = Format::Landscape.geometry(1920, 1080);
        assert!(g.is_whole(1920, 1080));
        assert_eq!((g.out_w, g.out_h), (1920, 1080));
    }

    #[test]
    fn original_keeps_the_source_shape_with_a_long_edge_of_at_most_1920() {
        assert_eq!(Format::Original.geometry(1280, 720).out_w, 1280);
        let g = Format::Original.geometry(3840, 2160);
        assert_eq!((g.crop_w, g.crop_h, g.out_w, g.out_h), (3840, 2160, 1920, 1080));
    }

    #[test]
    fn every_shape_is_even_exact_in_ratio_inside_the_source_and_never_upscaled_past_2x() {
        for f in Format::ALL {
            for (w, h) in [
                (1280, 720),
                (640, 360),
                (1920, 1080),
                (1080, 1920),
                (721, 405),
                (3840, 2160),
                (100, 100),
                (2, 2),
            ] {
                let g = f.geometry(w, h);
                assert!(g.crop_w <= w.max(2) && g.crop_h <= h.max(2), "{f} {w}x{h} {g:?}");
                for v in [g.out_w, g.out_h] {
                    assert!(v % 2 == 0 && v >= 2, "{f} {w}x{h} {g:?}");
                }
                if let Some((rw, rh)) = f.ratio() {
                    assert!(g.crop_w % 2 == 0 && g.crop_h % 2 == 0, "{f} {w}x{h} {g:?}");
                    // The output's shape is the format's exactly; the crop's within a pixel pair.
                    if g.out_w >= 2 * rw && g.out_h >= 2 * rh {
                        assert_eq!(g.out_w * rh, g.out_h * rw, "{f} {w}x{h} {g:?}");
                    }
                    let crop = g.crop_w as f64 / g.crop_h as f64;
                    let want = rw as f64 / rh as f64;
                    assert!(
                        (crop / want - 1.0).abs() <= 2.0 / g.crop_h.min(g.crop_w) as f64 + 1e-9,
                        "{f} {w}x{h} {g:?}"
                    );
                    // (Below the smallest even shape of the ratio, that shape is the output.)
                    if g.crop_w >= 2 * rw {
                        assert!(
                            g.out_w as f64 <= g.crop_w as f64 * MAX_UPSCALE + 2.0,
                            "{f} {w}x{h} {g:?}"
                        );
                    }
                    let (fw, fh) = f.full_size().unwrap();
                    assert!(g.out_w <= fw && g.out_h <= fh);
                }
            }
        }
    }

    #[test]
    fn formats_read_the_way_people_type_them() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{f}\""));
        }
        assert_eq!("9x16".parse::<Format>().unwrap(), Format::Vertical);
        assert_eq!(" Vertical ".parse::<Format>().unwrap(), Format::Vertical);
        assert_eq!(Format::default(), Format::Vertical);
        let e = "3:2".parse::<Format>().unwrap_err();
        assert!(e.contains("one of 9:16"), "{e}");
    }
}
