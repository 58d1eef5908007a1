//! YuNet on ONNX Runtime: `ort` with `load-dynamic`, so the binary links nothing and runs
//! without it; the library is the one a user points at (`VIRALCLIP_ONNXRUNTIME`, else ort's own
//! `ORT_DYLIB_PATH`), e.g. `libonnxruntime.so.1.32.0` from the `onnxruntime` wheel on PyPI
//! (scripts/setup.sh puts one in the fixtures; the Docker images ship one). ort's default build
//! would download a runtime at build time instead, one that needs a newer glibc than Debian 12's.
//!
//! Why it is worth a second runtime: on 2 cores it takes 8.8 ms a frame where tract takes 57
//! (`scripts/bench.sh --shorts`), and framing a short samples 5 frames a second.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;

use super::{decode, model_file, model_input, threads, FaceDetector, StrideOutput, YUNET_SIDE};
use crate::error::{Error, Result};
use crate::reframe::Face;

/// The ONNX Runtime library configured for this process: `VIRALCLIP_ONNXRUNTIME`, else
/// `ORT_DYLIB_PATH`; `None` when neither is set (or both are empty).
pub fn library() -> Option<PathBuf> {
    ["VIRALCLIP_ONNXRUNTIME", "ORT_DYLIB_PATH"]
        .iter()
        .find_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
}

/// ONNX Runtime allows one library and one environment a process: the first that loads decides
/// (a library that failed to load leaves nothing behind).
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

fn environment(lib: &Path) -> Result<Environment> {
    let mut held = RUNTIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((first, env)) = held.as_ref() {
        return if first == lib {
            Ok(env.clone())
        } else {
            Err(Error::Model(format!(
                "ONNX Runtime is already loaded from {} in this process, not {}",
                first.display(),
                lib.display()
            )))
        };
    }
    let failed = |e: &dyn std::fmt::Display| {
        Error::Model(format!(
            "ONNX Runtime library {}: {e} (VIRALCLIP_ONNXRUNTIME or ORT_DYLIB_PATH names \
             libonnxruntime.so, e.g. from the onnxruntime wheel on PyPI; unset both for tract)",
            lib.display()
        ))
    };
    if !lib.is_file() {
        return Err(failed(&"no such file"));
    }
    let env = ort::init_from(lib)
        .map_err(|e| failed(&e))?
        .with_name("viralclip")
        .build()
        .map_err(|e| failed(&e))?;
    *held = Some((lib.to_path_buf(), env.clone()));
    Ok(env)
}

/// YuNet on ONNX Runtime, one intra-op thread per core.
pub struct YuNetOrt {
    session: Session,
    pub min_score: f32,
}

impl YuNetOrt {
    /// Loads `face_detection_yunet_2023mar.onnx` (`model`) on the runtime in `lib`.
    pub fn load(model: &Path, lib: &Path) -> Result<YuNetOrt> {
        model_file(model)?;
        let env = environment(lib)?;
        let bad = |e: &dyn std::fmt::Display| {
            Error::Model(format!("{}: not the YuNet face model: {e}", model.display()))
        };
        let session = Session::builder(&env)
            .map_err(|e| bad(&e))?
            .with_intra_threads(threads())
            .map_err(|e| bad(&e))?
            .with_inter_threads(1)
            .map_err(|e| bad(&e))?
            .commit_from_file(model)
            .map_err(|e| bad(&e))?;
        let side = YUNET_SIDE as i64;
        match session.inputs() {
            [input]
                if input
                    .dtype()
                    .tensor_shape()
                    .is_some_and(|s| **s == [1, 3, side, side]) => {}
            inputs => return Err(bad(&format!("{} inputs, not one of 1×3×640×640", inputs.len()))),
        }
        for what in ["cls", "obj", "bbox", "kps"] {
            for s in [8, 16, 32] {
                let name = format!("{what}_{s}");
                if !session.outputs().iter().any(|o| o.name() == name) {
                    return Err(bad(&format!("no output {name}")));
                }
            }
        }
        Ok(YuNetOrt {
            session,
            min_score: 0.6,
        })
    }
}

impl FaceDetector for YuNetOrt {
    fn engine(&self) -> &'static str {
        "onnxruntime"
    }

    fn detect(&mut self, rgb: &[u8], w: u32, h: u32) -> Result<Vec<Face>> {
        let (planes, scale) = model_input(rgb, w, h)?;
        let side = YUNET_SIDE;
        let input = Tensor::from_array(([1usize, 3, side as usize, side as usize], planes))
            .map_err(|e| Error::Model(format!("face model input: {e}")))?;
        let out = self
            .session
            .run(ort::inputs![input])
            .map_err(|e| Error::Model(format!("face model: {e}")))?;
        let view = |name: String| -> Result<&[f32]> {
            let v = out
                .get(&name)
                .ok_or_else(|| Error::Model(format!("face model: no output {name}")))?;
            v.try_extract_tensor::<f32>()
                .map(|(_, data)| data)
                .map_err(|e| Error::Model(format!("face model output {name}: {e}")))
        };
        let mut strides = Vec::with_capacity(3);
        for s in [8u32, 16, 32] {
            strides.push(StrideOutput {
                stride: s,
                cls: view(format!("cls_{s}"))?,
                obj: view(format!("obj_{s}"))?,
                bbox: view(format!("bbox_{s}"))?,
                kps: view(format!("kps_{s}"))?,
            });
        }
        Ok(decode(&strides, side, scale, self.min_score, 0.3))
    }
}
