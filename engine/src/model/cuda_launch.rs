//! Every CUDA kernel of `kernels/fused.cu` through its Rust launcher (each `ops` family's and
//! `adam`'s `launch` module, `step`'s `cuda` module), candle and cudarc, against the CPU path on the same
//! inputs: the arguments' order and types, grids, shared memory, pointer tables, the views' offsets
//! and the output shapes, which the kernels' own checks (`kernels/emu/check.cpp`) launch by hand
//! and so never see.
//!
//! Built with `--features cuda`. On a GPU these run on the card; without one,
//! `scripts/cuda-emulated.sh` runs them on the CPU against a CUDA driver that executes the kernels
//! on the emulation (`kernels/emu/fake_cuda.cpp`). Where neither is there they print why and skip,
//! except under that script (`VIRALCLIP_CUDA_EMULATED=1`), where a device that does not start is a
//! failure.

use super::ops::testing::{max_abs, max_diff};
use super::ops::{attention, dropout, ffn, layout, loss, norm, projection, softmax, switches};
use super::step::{self, StepConfig, StepParam};
use super::{adam, checks};
use candle_core::{DType, Device, Result, Tensor};

/// The CUDA device, or `None` (with the reason printed) where there is none.
pub(crate) fn cuda() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) if std::env::var_os("VIRALCLIP_CUDA_EMULATED").is_some() => {
            panic!("the emulated CUDA device did not start: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: no CUDA device ({e}); scripts/cuda-emulated.sh runs these on the CPU");
            None
        }
    }
}

/// The CUDA device where the training path's fused kernels run on it (not `VIRALCLIP_FUSED_TRAIN=0`),
/// else `None` with the reason printed (a failure under `scripts/cuda-emulated.sh`).
pub(crate) fn cuda_training() -> Option<Device> {
    let dev = cuda()?;
    if switches::fused_train_cuda() {
        return Some(dev);
    }
    let why = "VIRALCLIP_FUSED_TRAIN=0 is set, so the training kernels do not run on CUDA";
    assert!(std::env::var_os("VIRALCLIP_CUDA_EMULATED").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    None
}

/// Seeded numbers uniform in [-scale, scale) (xorshift64): the same inputs every run.
pub(crate) fn numbers(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A CPU f32 tensor of seeded numbers, rounded through `dtype` (so both devices see the same).
pub(crate) fn input(shape: &[usize], seed: u64, scale: f32, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    let t = Tensor::from_vec(numbers(n, seed, scale), shape, &Device::Cpu).unwrap();
    t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap()
}

/// The additive attention mask (b, t) on the CPU of texts padded after token `keep`, all but the
/// first (which keeps all `t`).
pub(crate) fn padded_mask(b: usize, t: usize, keep: usize) -> Tensor {
    let mut m = vec![0f32; b * t];
    for text in m.chunks_mut(t).skip(1) {
        text[keep..].fill(-1e9);
    }
    Tensor::from_vec(m, (b, t), &Device::Cpu).unwrap()
}

/// `t` (CPU f32) on `dev` in `dtype`; the conversion happens on the CPU.
pub(crate) fn on(t: &Tensor, dev: &Device, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(dev).unwrap()
}

/// `t` back on the CPU in f32.
pub(crate) fn back(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
}

/// Asserts that `got` (any device, any float type) equals `want` (CPU f32) in shape and within
/// `tol` relative to max(1, the largest |want|).
#[track_caller]
pub(crate) fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let got = back(got);
    let scale = max_abs(want).max(1.0);
    let diff = max_diff(&got, want) / scale;
    assert!(
        diff <= tol,
        "{what}: differs from the CPU by {diff:e} (tolerance {tol:e})"
    );
    eprintln!("{what}: {diff:.2e}");
}

/// The tolerance of a kernel's output stored in `dtype` against the CPU's f32.
fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 1.6e-2,
        DType::F16 => 2e-3,
        _ => 2e-5,
    }
}

const TYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

#[test]
fn cuda_launch_bias_gelu_and_merge_heads() {
    let Some(dev) = cuda() else { return };
    for dtype in TYPES {
        // Rows of a width that is not a multiple of the 16-byte vectors, and one that is.
        for (rows, d) in [(37, 100), (5, 384)] {
            let x = input(&[rows, d], 1, 3.0, dtype);
            let b = input(&[d], 2, 1.0, dtype);
            let want = ffn::bias_gelu(&x, &b).unwrap();
            let got = ffn::bias_gelu(&on(&x, &dev, dtype), &on(&b, &dev, dtype)).unwrap();
            assert_close(
                &format!("bias_gelu {dtype:?} {rows}×{d}"),
                &got,
                &want,
                tolerance(dtype),
            );
        }
        let x = input(&[2, 3, 13, 8], 3, 1.0, dtype);
        let want = layout::merge_heads(&x).unwrap();
        let got = layout::merge_heads(&on(&x, &dev, dtype)).unwrap();
        assert_close(&format!("merge_heads {dtype:?}"), &got, &want, 0.0);
    }
}

#[test]
fn cuda_launch_add_norm_both_kernels() {
    let Some(dev) = cuda() else { return };
    for dtype in TYPES {
        for (rows, d) in [(37, 100), (19, 384), (3, 768)] {
            let x = input(&[rows, d], 4, 2.0, dtype);
            let r = input(&[rows, d], 5, 2.0, dtype);
            // The params in f32 whatever the rows' dtype (a 16-bit model's norms, unrounded).
            let p = norm::pack_add_norm(
                &input(&[d], 6, 0.5, DType::F32),
                &input(&[d], 7, 1.0, DType::F32),
                &input(&[d], 8, 0.5, DType::F32),
            )
            .unwrap();
            let want = norm::add_norm(&x, &r, &p, 1e-12).unwrap();
            for vec in [false, true] {
                let got = switches::with_ln_vec(vec, || {
                    norm::add_norm(
                        &on(&x, &dev, dtype),
                        &on(&r, &dev, dtype),
                        &on(&p, &dev, DType::F32),
                        1e-12,
                    )
                })
                .unwrap();
                let what = format!("add_norm{} {dtype:?} {rows}×{d}", if vec { "_vec" } else { "" });
                assert_close(&what, &got, &want, tolerance(dtype));
            }
        }
        // A view that starts mid-allocation (the residual as rows 1.. of a bigger tensor): the
        // launcher passes the view's own elements, and the vectorised kernel declines an offset
        // its 16-byte loads cannot take.
        let d = 384;
        let big = input(&[9, d], 9, 2.0, dtype);
        let x = input(&[8, d], 10, 2.0, dtype);
        let p = norm::pack_add_norm(
            &input(&[d], 11, 0.5, DType::F32),
            &input(&[d], 12, 1.0, DType::F32),
            &input(&[d], 13, 0.5, DType::F32),
        )
        .unwrap();
        let want = norm::add_norm(&x, &big.narrow(0, 1, 8).unwrap(), &p, 1e-12).unwrap();
        let big_dev = on(&big, &dev, dtype);
        for vec in [false, true] {
            let got = switches::with_ln_vec(vec, || {
                norm::add_norm(
                    &on(&x, &dev, dtype),
                    &big_dev.narrow(0, 1, 8)?,
                    &on(&p, &dev, DType::F32),
                    1e-12,
                )
            })
            .unwrap();
            assert_close(
                &format!("add_norm (offset view, vec {vec}) {dtype:?}"),
                &got,
                &want,
                tolerance(dtype),
            );
        }
    }
}

/// The FFN's first GEMM with cuBLASLt's bias + GELU epilogue (`ffn::gemm_gelu`, unless
/// `VIRALCLIP_GEMM_GELU=0`): the launcher's transposes, leading dimensions and the bias along the
/// output features, against `gelu_erf(x · wᵀ + b)` on the CPU (cuBLASLt's GELU is the tanh
/// approximation, within 5e-4 of erf's). Under `scripts/cuda-emulated.sh` the fake cuBLASLt
/// computes it; on a GPU, the card's.
#[test]
fn cuda_launch_gemm_gelu() {
    let Some(dev) = cuda() else { return };
    for dtype in [DType::F16, DType::BF16] {
        for (m, k, n) in [(37, 64, 96), (5, 384, 1536)] {
            let x = input(&[m, k], 90, 2.0, dtype);
            let w = input(&[n, k], 91, 4.0 / (k as f32).sqrt(), dtype);
            let b = input(&[n], 92, 1.0, dtype);
            let xd = on(&x, &dev, dtype);
            if !ffn::gemm_gelu_fits(&xd) {
                let why = "VIRALCLIP_GEMM_GELU=0 is set, so gemm_gelu does not run";
                assert!(std::env::var_os("VIRALCLIP_CUDA_EMULATED").is_none(), "{why}");
                eprintln!("SKIPPED: {why}");
                return;
            }
            let got = ffn::gemm_gelu(&xd, &on(&w, &dev, dtype), &on(&b, &dev, dtype)).unwrap();
            let want = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .gelu_erf()
                .unwrap();
            assert_close(
                &format!("gemm_gelu {dtype:?} {m}×{k}·{n}"),
                &got,
                &want,
                tolerance(dtype) + 5e-4,
            );
        }
    }
}

#[test]
fn cuda_launch_head_split_and_softmax() {
    let Some(dev) = cuda() else { return };
    for dtype in TYPES {
        let (b, t, heads, d) = (2, 13, 4, 16);
        let x = input(&[b * t, 3 * heads * d], 14, 1.0, dtype);
        let bias = input(&[3 * heads * d], 15, 1.0, dtype);
        let want = layout::qkv_split(&x, &bias, b, t, heads, d).unwrap();
        let got = layout::qkv_split(&on(&x, &dev, dtype), &on(&bias, &dev, dtype), b, t, heads, d).unwrap();
        // One addition rounded to the type: the CPU's sum in f32, the kernel's stored in `dtype`.
        assert_close(
            &format!("qkv_split {dtype:?}"),
            &got,
            &want,
            tolerance(dtype) / 2.0,
        );
        // The training path's single projection (parts = 1).
        let x1 = input(&[b * t, heads * d], 16, 1.0, dtype);
        let bias1 = input(&[heads * d], 17, 1.0, dtype);
        let want = layout::split_parts(&x1, &bias1, 1, [b, t, heads, d]).unwrap();
        let got = layout::split_parts(
            &on(&x1, &dev, dtype),
            &on(&bias1, &dev, dtype),
            1,
            [b, t, heads, d],
        )
        .unwrap();
        assert_close(
            &format!("split_parts ×1 {dtype:?}"),
            &got,
            &want,
            tolerance(dtype) / 2.0,
        );
        // Mask + softmax over rows of several lengths, the second text padded.
        for t in [1, 13, 40, 129] {
            let scores = input(&[b, heads, t, t], 18, 4.0, dtype);
            let mask = padded_mask(b, t, t.div_ceil(2));
            let want = softmax::mask_softmax(&scores, &mask).unwrap();
            let got = softmax::mask_softmax(&on(&scores, &dev, dtype), &on(&mask, &dev, dtype)).unwrap();
            assert_close(
                &format!("mask_softmax {dtype:?} t {t}"),
                &got,
                &want,
                tolerance(dtype),
            );
        }
    }
}

/// A 16-bit model's attention probabilities from f32 scores (`attention::attention_probs`: one
/// cuBLAS product of 16-bit queries and keys into f32, then `mask_softmax_f32s_*`), against the
/// CPU's f32 softmax of the same (rounded) inputs: within one rounding of the probabilities, which
/// scores rounded to the type before the softmax would not be (about 1e-2 in bf16 here).
#[test]
fn cuda_launch_attention_probs() {
    let Some(dev) = cuda() else { return };
    for (dtype, tol) in [(DType::BF16, 3e-3), (DType::F16, 4e-4)] {
        for (b, heads, t, d) in [(2, 3, 1, 16), (2, 3, 13, 32), (1, 2, 129, 64)] {
            let q = input(&[b, heads, t, d], 21, 1.5, dtype);
            let k = input(&[b, heads, t, d], 22, 1.5, dtype);
            let mask = padded_mask(b, t, t.div_ceil(2));
            let want = softmax::mask_softmax(&q.matmul(&k.t().unwrap()).unwrap(), &mask).unwrap();
            let (k_d, mask_d) = (on(&k, &dev, dtype), on(&mask, &dev, dtype));
            for tq in [t, 1] {
                let q_d = on(&q.narrow(2, 0, tq).unwrap().contiguous().unwrap(), &dev, dtype);
                let got = attention::attention_probs(&q_d, &k_d, &mask_d).unwrap();
                assert_eq!(got.dtype(), dtype);
                let what = format!("attention_probs {dtype:?} b {b} heads {heads} t {t} tq {tq} d {d}");
                assert_close(&what, &got, &want.narrow(2, 0, tq).unwrap(), tol);
            }
        }
    }
}

/// Attention read straight from the packed projection (`ffn::gemm_bias`, then
/// `attention::packed_attention`: the bias in cuBLASLt's epilogue, cuBLAS's pointer-array batched
/// GEMMs reading each head's queries, keys and values in the packed rows and writing the context
/// in token order, the f32 scores' softmax between): the pointer tables, leading dimensions and
/// the softmax's rows, against the split path's arithmetic in f32 (`check_packed_attention`: texts
/// of 1 to 200 tokens with padding, head sizes 32 and 64, [CLS]-only queries). A wrong table entry
/// or stride reads another head's or text's values: off by the values' size, not by rounding.
#[test]
fn cuda_launch_packed_attention() {
    let Some(dev) = cuda() else { return };
    let mut results = Vec::new();
    for (dtype, tol) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
        let (worst, ran) = checks::check_packed_attention(&dev, dtype).unwrap();
        results.push((dtype, tol, worst, ran));
    }
    for (dtype, tol, worst, ran) in results {
        if !ran {
            let why = "VIRALCLIP_PACKED_ATTN=0 is set, so packed_attention does not run";
            assert!(std::env::var_os("VIRALCLIP_CUDA_EMULATED").is_none(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
        eprintln!("packed attention {dtype:?}: {worst:.2e} of the largest context value");
        assert!(
            worst < tol,
            "packed attention {dtype:?}: {worst} relative (tolerance {tol})"
        );
    }
}

#[test]
fn cuda_launch_attention_in_one_kernel() {
    let Some(dev) = cuda() else { return };
    let tensor_cores = crate::model::ops::cuda::tensor_cores(&dev);
    assert!(tensor_cores || std::env::var_os("VIRALCLIP_CUDA_EMULATED").is_none());
    if !tensor_cores {
        eprintln!("SKIPPED: attention in one kernel needs compute capability 8.0 or later");
        return;
    }
    for dtype in [DType::BF16, DType::F16] {
        for (b, t, heads, d) in [(2, 1, 2, 32), (2, 13, 2, 64), (1, 70, 3, 32), (1, 256, 1, 64)] {
            let h = heads * d;
            let qkv = input(&[b * t, 3 * h], 19, 1.0, dtype);
            let bias = input(&[3 * h], 20, 0.5, dtype);
            let mask = padded_mask(b, t, t.div_ceil(2));
            let (qkv_d, bias_d, mask_d) = (
                on(&qkv, &dev, dtype),
                on(&bias, &dev, dtype),
                on(&mask, &dev, dtype),
            );
            for tq in [t, 1] {
                let want = attention::attention(&qkv, &bias, &mask, b, t, tq, heads, d).unwrap();
                let got = attention::attention(&qkv_d, &bias_d, &mask_d, b, t, tq, heads, d).unwrap();
                let what = format!("attention {dtype:?} b {b} t {t} tq {tq} heads {heads} d {d}");
                assert_close(&what, &got, &want, 2.0 * tolerance(dtype));
            }
        }
    }
}

#[test]
fn cuda_launch_adam_in_place() {
    let Some(dev) = cuda() else { return };
    let n = 5000;
    let run = |dev: &Device| -> Result<Vec<Vec<f32>>> {
        let t = |seed, scale| Tensor::from_vec(numbers(n, seed, scale), n, dev);
        let (w, g, m) = (t(21, 1.0)?, t(22, 0.1)?, t(23, 0.01)?);
        let v = Tensor::from_vec(numbers(n, 24, 0.01).iter().map(|x| x.abs()).collect(), n, dev)?;
        assert!(adam::adam_in_place(&[&w, &g, &m, &v]));
        adam::adam_moment(&m, &g, 0.9, false)?;
        adam::adam_moment(&v, &g, 0.999, true)?;
        let u = adam::AdamUpdate {
            lr: 1e-3,
            bc1: 0.1,
            bc2: 0.001,
            eps: 1e-8,
            decay: 0.01,
        };
        adam::adam_update(&w, &m, &v, u)?;
        [w, m, v].iter().map(|t| t.to_vec1::<f32>()).collect()
    };
    let (want, got) = (run(&Device::Cpu).unwrap(), run(&dev).unwrap());
    for (name, (a, b)) in ["w", "m", "v"].iter().zip(want.iter().zip(&got)) {
        let diff = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-6, "adam {name}: differs from the CPU by {diff:e}");
    }
}

#[test]
fn cuda_launch_fused_step() {
    let Some(dev) = cuda_training() else { return };
    // Four tensors: shared ones with both tasks' gradients (one spanning several chunks), a head's
    // with one task's, and one whose second gradient is missing.
    let sizes = [3 * step::CHUNK + 17, 200, 64, 1000];
    for pcgrad in [true, false] {
        let run = |dev: &Device| -> Result<(step::StepStats, Vec<Vec<f32>>)> {
            let t = |v: Vec<f32>| {
                let n = v.len();
                Tensor::from_vec(v, n, dev)
            };
            let mut owned = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let s = 100 * i as u64;
                let a = numbers(n, s + 1, 0.1);
                // The second task's gradient leans against the first's, so PCGrad projects.
                let b = a
                    .iter()
                    .zip(numbers(n, s + 2, 0.05))
                    .map(|(a, e)| -0.7 * a + e)
                    .collect();
                let v = numbers(n, s + 5, 0.01).iter().map(|x| x.abs()).collect();
                let (w, m) = (numbers(n, s + 3, 1.0), numbers(n, s + 4, 0.01));
                owned.push((t(w)?, t(m)?, t(v)?, t(a)?, t(b)?));
            }
            let params: Vec<StepParam> = owned
                .iter()
                .enumerate()
                .map(|(i, (w, m, v, a, b))| StepParam {
                    w,
                    m,
                    v,
                    a: (i != 2).then_some(a),
                    b: (i != 3).then_some(b),
                    shared: i < 2,
                    update: adam::AdamUpdate {
                        lr: 1e-3,
                        bc1: 0.19,
                        bc2: 0.002,
                        eps: 1e-8,
                        decay: if i == 1 { 0.0 } else { 0.01 },
                    },
                })
                .collect();
            assert!(step::supported(&params));
            let cfg = StepConfig {
                pcgrad,
                clip_norm: 1.0,
                beta1: 0.9,
                beta2: 0.999,
            };
            let stats = step::fused_step(&params, cfg)?;
            let mut out = Vec::new();
            for (w, m, v, _, _) in &owned {
                for t in [w, m, v] {
                    out.push(t.to_device(&Device::Cpu)?.to_vec1::<f32>()?);
                }
            }
            Ok((stats, out))
        };
        let (want, got) = (run(&Device::Cpu).unwrap(), run(&dev).unwrap());
        let rel = |a: f64, b: f64| (a - b).abs() / a.abs().max(1e-12);
        for (name, a, b) in [
            ("dot", want.0.dot, got.0.dot),
            ("n1", want.0.n1, got.0.n1),
            ("n2", want.0.n2, got.0.n2),
            ("norm", want.0.norm, got.0.norm),
        ] {
            assert!(
                rel(a, b) < 1e-5,
                "fused step (pcgrad {pcgrad}) {name}: {a} on the CPU, {b} on CUDA"
            );
        }
        assert_eq!(want.0.conflict(), pcgrad, "the inputs should conflict");
        for (k, (a, b)) in want.1.iter().zip(&got.1).enumerate() {
            let diff = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                diff < 1e-6,
                "fused step (pcgrad {pcgrad}): tensor {k} differs by {diff:e}"
            );
        }
    }
}

#[test]
fn cuda_launch_training_passes() {
    let Some(dev) = cuda_training() else { return };
    let f32 = DType::F32;
    let tol = tolerance(f32);
    let to = |t: &Tensor| on(t, &dev, f32);
    let (rows, h) = (37, 96);
    let x = input(&[rows, h], 30, 2.0, f32);
    let g = input(&[h], 31, 1.0, f32);
    let beta = input(&[h], 32, 0.5, f32);
    let dy = input(&[rows, h], 33, 1.0, f32);
    let eps = 1e-12;

    // Layer norm, forward and backward (with and without the dropout below it).
    let want = norm::layer_norm(&x, &g, &beta, eps).unwrap();
    let got = norm::layer_norm(&to(&x), &to(&g), &to(&beta), eps).unwrap();
    assert_close("ln_train_fwd", &got, &want, tol);
    for seed in [None, Some(77)] {
        let want = norm::layer_norm_backward_rows_dropout(&x, &g, &dy, eps, 0.1, seed).unwrap();
        let got = norm::layer_norm_backward_rows_dropout(&to(&x), &to(&g), &to(&dy), eps, 0.1, seed).unwrap();
        for (name, a, b) in [
            ("dx", &want.0, &got.0),
            ("dgx", &want.1, &got.1),
            ("dropped", &want.2, &got.2),
        ] {
            assert_close(&format!("ln_train_bwd {name} (seed {seed:?})"), b, a, 1e-4);
        }
    }

    // Scaled, masked softmax forward and backward.
    let (b, heads, t) = (2, 3, 11);
    let scores = input(&[b, heads, t, t], 34, 4.0, f32);
    let mask = padded_mask(b, t, 7);
    let want = softmax::scaled_masked_softmax(&scores, &mask, 0.125).unwrap();
    let got = softmax::scaled_masked_softmax(&to(&scores), &to(&mask), 0.125).unwrap();
    assert_close("softmax_train_fwd", &got, &want, tol);
    let dp = input(&[b, heads, t, t], 35, 1.0, f32);
    let want_ds = softmax::softmax_backward(&want, &dp, 0.125).unwrap();
    let got_ds = softmax::softmax_backward(&got, &to(&dp), 0.125).unwrap();
    assert_close("softmax_train_bwd", &got_ds, &want_ds, tol);

    // Bias + GELU forward, and its gradient.
    let want = ffn::bias_gelu_train(&x, &beta).unwrap();
    let got = ffn::bias_gelu_train(&to(&x), &to(&beta)).unwrap();
    assert_close("bias_gelu (training)", &got, &want, tol);
    let want = ffn::gelu_backward(&x, &beta, &dy).unwrap();
    let got = ffn::gelu_backward(&to(&x), &to(&beta), &to(&dy)).unwrap();
    assert_close("gelu_train_bwd", &got, &want, tol);

    // A head's bias + ReLU + dropout, forward and back; dropout alone.
    for seed in [None, Some(78)] {
        let want = ffn::bias_relu_dropout(&x, &beta, 0.1, seed).unwrap();
        let got = ffn::bias_relu_dropout(&to(&x), &to(&beta), 0.1, seed).unwrap();
        assert_close(&format!("bias_relu_drop fwd (seed {seed:?})"), &got, &want, tol);
        let want = ffn::bias_relu_dropout_backward(&x, &beta, &dy, 0.1, seed).unwrap();
        let got = ffn::bias_relu_dropout_backward(&to(&x), &to(&beta), &to(&dy), 0.1, seed).unwrap();
        assert_close(&format!("bias_relu_drop bwd (seed {seed:?})"), &got, &want, tol);
    }
    let want = dropout::dropout_with(&x, 0.25, Some(79)).unwrap();
    let got = dropout::dropout_with(&to(&x), 0.25, Some(79)).unwrap();
    assert_close("dropout", &got, &want, tol);

    // The loss and its gradient, with and without the positive class's weights.
    let logits = input(&[rows, 28], 36, 5.0, f32);
    let targets = input(&[rows, 28], 37, 1.0, f32)
        .ge(0.3f32)
        .unwrap()
        .to_dtype(f32)
        .unwrap();
    let pw = input(&[28], 38, 4.0, f32).abs().unwrap();
    for weight in [None, Some(&pw)] {
        let want = loss::bce_with_logits(&logits, &targets, weight).unwrap();
        let got = loss::bce_with_logits(&to(&logits), &to(&targets), weight.map(to).as_ref()).unwrap();
        assert_close(
            &format!("bce_fwd (weighted {})", weight.is_some()),
            &got,
            &want,
            tol,
        );
        let want = loss::bce_with_logits_grad(&logits, &targets, weight).unwrap();
        let got = loss::bce_with_logits_grad(&to(&logits), &to(&targets), weight.map(to).as_ref()).unwrap();
        assert_close(
            &format!("bce_grad (weighted {})", weight.is_some()),
            &got,
            &want,
            tol,
        );
    }

    // Column sums of several tensors, whole and split at a row (two tasks sharing a batch).
    let a = input(&[rows, h], 39, 1.0, f32);
    let c = input(&[300, 40], 40, 1.0, f32);
    let want = projection::column_sums(&[(&a, None), (&c, Some(123)), (&x, Some(0))]).unwrap();
    let (ad, cd, xd) = (to(&a), to(&c), to(&x));
    let got = projection::column_sums(&[(&ad, None), (&cd, Some(123)), (&xd, Some(0))]).unwrap();
    for (k, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_close(&format!("col_sums {k}"), &g.0, &w.0, 1e-5);
        assert_eq!(w.1.is_some(), g.1.is_some());
        if let (Some(w1), Some(g1)) = (&w.1, &g.1) {
            assert_close(&format!("col_sums {k} (second part)"), g1, w1, 1e-5);
        }
    }

    // A residual branch in one pass: the sum and its layer norm.
    let res = input(&[rows, h], 41, 1.0, f32);
    for seed in [None, Some(80)] {
        let want = norm::bias_dropout_add_norm(&x, &beta, &res, &g, &beta, 0.1, seed, eps).unwrap();
        let got = norm::bias_dropout_add_norm(
            &to(&x),
            &to(&beta),
            &to(&res),
            &to(&g),
            &to(&beta),
            0.1,
            seed,
            eps,
        )
        .unwrap();
        assert_close(
            &format!("bias_drop_add_norm sum (seed {seed:?})"),
            &got.0,
            &want.0,
            tol,
        );
        assert_close(
            &format!("bias_drop_add_norm norm (seed {seed:?})"),
            &got.1,
            &want.1,
            tol,
        );
    }

    // The head split with its bias, and the merge back (training's layout).
    let (b, t, heads) = (2, 7, 4);
    let xh = input(&[b * t, 64], 42, 1.0, f32);
    let bh = input(&[64], 43, 1.0, f32);
    let want = layout::split_heads_bias(&xh, &bh, b, t, heads).unwrap();
    let got = layout::split_heads_bias(&to(&xh), &to(&bh), b, t, heads).unwrap();
    assert_close("split_heads_bias", &got, &want, tol);
    let want = layout::merge_heads_train(&want).unwrap();
    let got = layout::merge_heads_train(&got).unwrap();
    assert_close("merge_heads (training)", &got, &want, tol);
}

/// Training by hand as the trainer runs it on a GPU (the layers' and heads' taped passes, the one
/// backward pass PCGrad's two tasks share, column sums, the fused residual branch), and the fused
/// operations inside candle's graph, against candle's own operations on the same device: the
/// checks `bench --train-steps` prints (`by_hand_check`, `train_ops_check`), with the bar
/// `scripts/gpu-check.sh` sets before a training run may use the kernels.
#[test]
fn cuda_launch_training_checks() {
    let Some(dev) = cuda_training() else { return };
    for (name, check) in [
        ("train_ops_check", super::checks::training_ops(&dev).unwrap()),
        ("by_hand_check", super::checks::training_by_hand(&dev).unwrap()),
    ] {
        eprintln!("{name}: {:.2e} ({})", check.max_diff, check.worst);
        assert!(check.fused, "{name}: the fused kernels did not run");
        assert!(
            check.max_diff < 1e-3,
            "{name}: {} at {}",
            check.max_diff,
            check.worst
        );
    }
}

/// The products and element-wise operations candle launches between the engine's kernels, on
/// the device against the CPU (under `scripts/cuda-emulated.sh`, the fake driver's own versions
/// of cuBLAS's GEMM and candle's kernels: what the whole-model checks above rest on).
#[test]
fn cuda_launch_candle_operations() {
    let Some(dev) = cuda() else { return };
    for dtype in TYPES {
        let tol = tolerance(dtype) * 2.0;
        let a = input(&[2, 5, 7], 50, 1.0, dtype);
        let b = input(&[2, 7, 3], 51, 1.0, dtype);
        let bt = input(&[2, 3, 7], 52, 1.0, dtype);
        let w = input(&[6, 7], 53, 1.0, dtype);
        let (ad, bd, btd, wd) = (
            on(&a, &dev, dtype),
            on(&b, &dev, dtype),
            on(&bt, &dev, dtype),
            on(&w, &dev, dtype),
        );
        let cases: Vec<(&str, Tensor, Tensor)> = vec![
            ("matmul", a.matmul(&b).unwrap(), ad.matmul(&bd).unwrap()),
            (
                "matmul bᵀ",
                a.matmul(&bt.t().unwrap()).unwrap(),
                ad.matmul(&btd.t().unwrap()).unwrap(),
            ),
            (
                "linear (x·wᵀ)",
                a.reshape((10, 7)).unwrap().matmul(&w.t().unwrap()).unwrap(),
                ad.reshape((10, 7)).unwrap().matmul(&wd.t().unwrap()).unwrap(),
            ),
            (
                "broadcast_matmul",
                a.broadcast_matmul(&w.t().unwrap()).unwrap(),
                ad.broadcast_matmul(&wd.t().unwrap()).unwrap(),
            ),
            (
                "transpose + contiguous",
                a.transpose(1, 2).unwrap().contiguous().unwrap(),
                ad.transpose(1, 2).unwrap().contiguous().unwrap(),
            ),
            ("sum(1)", a.sum(1).unwrap(), ad.sum(1).unwrap()),
            ("max(2)", a.max(2).unwrap(), ad.max(2).unwrap()),
            (
                "broadcast_add",
                a.broadcast_add(&w.get(0).unwrap()).unwrap(),
                ad.broadcast_add(&wd.get(0).unwrap()).unwrap(),
            ),
            (
                "exp · 2 + 1",
                ((a.exp().unwrap() * 2.0).unwrap() + 1.0).unwrap(),
                ((ad.exp().unwrap() * 2.0).unwrap() + 1.0).unwrap(),
            ),
        ];
        for (name, want, got) in cases {
            let want = want.to_dtype(DType::F32).unwrap();
            assert_close(&format!("{name} {dtype:?}"), &got, &want, tol);
        }
        // An embedding lookup.
        let ids = Tensor::new(&[3u32, 0, 5, 5, 1], &Device::Cpu).unwrap();
        let want = w.index_select(&ids, 0).unwrap();
        let got = wd.index_select(&ids.to_device(&dev).unwrap(), 0).unwrap();
        assert_close(&format!("index_select {dtype:?}"), &got, &want, 0.0);
        let want = w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
        assert_close(
            &format!("cast {dtype:?}"),
            &wd.to_dtype(DType::F32).unwrap(),
            &want,
            0.0,
        );
    }
}
