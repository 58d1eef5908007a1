//! The training path's fused operations, each with its backward pass: layer norm, masked and
//! scaled softmax, bias + GELU, and dropout. [`super::Mode::Training`] builds a layer from candle's
//! operations otherwise: about seventy per layer forward, each with its own backward and a zero
//! gradient plus an addition for every node it reaches. On a GPU the trainer's step is bound by
//! launching those one at a time; here one operation does each forward pass and one or three do
//! its backward.
//!
//! Each function falls back to candle's operations computing the same where it has no kernel
//! (dtypes other than f32; CUDA with `VIRALCLIP_FUSED_TRAIN=0`, see
//! [`kernels::fused_train_cuda`]), and a test holds each to them,
//! values and gradients. CPU loops here and CUDA kernels in `kernels/fused.cu` (`*_train_*`,
//! `dropout_f32`) compute the same.

use super::kernels::{self, contiguous_f32, fused_train_cuda};
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::cell::Cell;

thread_local! {
    static OFF: Cell<bool> = const { Cell::new(false) };
    static NO_DROPOUT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with dropout switched off on this thread (even in [`super::Mode::Training`]): for
/// comparing two ways of computing the same training step, whose masks would differ.
pub fn without_dropout<R>(f: impl FnOnce() -> R) -> R {
    let was = NO_DROPOUT.with(|o| o.replace(true));
    let r = f();
    NO_DROPOUT.with(|o| o.set(was));
    r
}

/// Runs `f` with the fused training operations and the fused optimiser step
/// ([`super::step`]) switched off on this thread (candle's operations instead): for comparing the
/// two.
pub fn without_fused<R>(f: impl FnOnce() -> R) -> R {
    let was = OFF.with(|o| o.replace(true));
    let r = f();
    OFF.with(|o| o.set(was));
    r
}

/// Whether the fused operations (and training by hand, and the fused optimiser step) run on
/// these tensors.
pub(crate) fn usable(ts: &[&Tensor]) -> bool {
    if OFF.with(|o| o.get()) {
        return false;
    }
    let f32s = ts.iter().all(|t| t.dtype() == DType::F32);
    let cpu = ts.iter().all(|t| t.device().is_cpu());
    f32s && (cpu || (fused_train_cuda() && ts.iter().all(|t| t.device().is_cuda())))
}

/// Mean and 1/√(var + eps) of a row, as the CUDA kernels compute them (two passes).
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let h = x.len() as f32;
    let mean = x.iter().sum::<f32>() / h;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
    (mean, 1.0 / (var + eps).sqrt())
}

// ---------------------------------------------------------------- layer norm

struct LayerNorm {
    eps: f32,
}

struct LayerNormBwd {
    eps: f32,
    /// Also `dx` through this dropout (rate, seed), as a third plane.
    drop: Option<(f32, u64)>,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-train"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, b) = (
            contiguous_f32(s1, l1, "layer norm x")?,
            contiguous_f32(s2, l2, "gain")?,
            contiguous_f32(s3, l3, "bias")?,
        );
        let h = g.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
            let (mean, rstd) = row_stats(x, self.eps);
            for i in 0..h {
                y[i] = (x[i] - mean) * rstd * g[i] + b[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm(s1, l1, s2, l2, s3, l3, self.eps)
    }
    fn bwd(
        &self,
        x: &Tensor,
        g: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dg, db) = layer_norm_backward(x, g, dy, self.eps as f64)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "layer-norm-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, g, dy) = (
            contiguous_f32(s1, l1, "layer norm x")?,
            contiguous_f32(s2, l2, "gain")?,
            contiguous_f32(s3, l3, "dy")?,
        );
        let h = g.len();
        let rows = x.len() / h;
        let planes = 2 + self.drop.is_some() as usize;
        let mut out = vec![0f32; planes * x.len()];
        let (dx, rest) = out.split_at_mut(x.len());
        let (dgx, dropped) = rest.split_at_mut(x.len());
        dx.par_chunks_mut(h)
            .zip(dgx.par_chunks_mut(h))
            .zip(x.par_chunks(h).zip(dy.par_chunks(h)))
            .for_each(|((dx, dgx), (x, dy))| {
                let (mean, rstd) = row_stats(x, self.eps);
                let (mut sg, mut sgx) = (0f32, 0f32);
                for i in 0..h {
                    let (xh, gi) = ((x[i] - mean) * rstd, dy[i] * g[i]);
                    sg += gi;
                    sgx += gi * xh;
                }
                let (sg, sgx) = (sg / h as f32, sgx / h as f32);
                for i in 0..h {
                    let (xh, gi) = ((x[i] - mean) * rstd, dy[i] * g[i]);
                    dx[i] = rstd * (gi - sg - xh * sgx);
                    dgx[i] = dy[i] * xh;
                }
            });
        if let Some((p, seed)) = self.drop {
            let mask = Mask::new(p, seed);
            dropped
                .par_chunks_mut(h)
                .zip(dx.par_chunks(h))
                .enumerate()
                .for_each(|(row, (y, dx))| {
                    for i in 0..h {
                        y[i] = mask.apply(dx[i], row * h + i);
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((planes, rows, h))))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::layer_norm_bwd(s1, l1, s2, l2, s3, l3, self.eps, self.drop)
    }
}

/// Layer norm over the last dimension with gain `g` and bias `b`, differentiable in all three.
pub fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if usable(&[x, g, b]) && g.rank() == 1 && x.dim(D::Minus1)? == g.elem_count() {
        return x
            .contiguous()?
            .apply_op3(&g.contiguous()?, &b.contiguous()?, LayerNorm { eps: eps as f32 });
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.to_dtype(dtype)?.broadcast_mul(g)?.broadcast_add(b)
}

// ---------------------------------------------------------------- softmax

struct Softmax {
    scale: f32,
}

struct SoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-train"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (s, m) = (
            contiguous_f32(s1, l1, "softmax scores")?,
            contiguous_f32(s2, l2, "softmax mask")?,
        );
        let dims = l1.dims();
        let (b, t) = (dims[0], dims[dims.len() - 1]);
        let per_text = s.len() / (b * t).max(1);
        let mut p = vec![0f32; s.len()];
        p.par_chunks_mut(t)
            .zip(s.par_chunks(t))
            .enumerate()
            .for_each(|(row, (p, s))| {
                let m = &m[(row / per_text) * t..][..t];
                let mut mx = f32::NEG_INFINITY;
                for i in 0..t {
                    mx = mx.max(s[i] * self.scale + m[i]);
                }
                let mut sum = 0f32;
                for i in 0..t {
                    p[i] = kernels::exp(s[i] * self.scale + m[i] - mx);
                    sum += p[i];
                }
                let inv = 1.0 / sum;
                p.iter_mut().for_each(|p| *p *= inv);
            });
        Ok((CpuStorage::F32(p), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::softmax(s1, l1, s2, l2, self.scale)
    }
    fn bwd(
        &self,
        _s: &Tensor,
        _m: &Tensor,
        p: &Tensor,
        dp: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(softmax_backward(p, dp, self.scale as f64)?), None))
    }
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "softmax-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (p, dp) = (
            contiguous_f32(s1, l1, "softmax p")?,
            contiguous_f32(s2, l2, "softmax dp")?,
        );
        let t = l1.dims()[l1.dims().len() - 1];
        let mut ds = vec![0f32; p.len()];
        ds.par_chunks_mut(t)
            .zip(p.par_chunks(t).zip(dp.par_chunks(t)))
            .for_each(|(ds, (p, dp))| {
                let dot: f32 = p.iter().zip(dp).map(|(a, b)| a * b).sum();
                for i in 0..t {
                    ds[i] = self.scale * p[i] * (dp[i] - dot);
                }
            });
        Ok((CpuStorage::F32(ds), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::softmax_bwd(s1, l1, s2, l2, self.scale)
    }
}

/// `softmax(scale · scores + mask)` over the last dimension, differentiable in `scores`:
/// `scores` (b, heads, queries, t), `mask` additive (b, 1, 1, t).
pub fn scaled_masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, t) = scores.dims4()?;
    if usable(&[scores, mask]) && mask.elem_count() == b * t {
        let mask = mask.reshape((b, t))?.contiguous()?;
        return scores
            .contiguous()?
            .apply_op2(&mask, Softmax { scale: scale as f32 });
    }
    let x = (scores * scale)?.broadcast_add(mask)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

// ---------------------------------------------------------------- bias + GELU

struct BiasGelu;

struct GeluBwd;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu-train"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (
            contiguous_f32(s1, l1, "bias-gelu x")?,
            contiguous_f32(s2, l2, "bias-gelu bias")?,
        );
        let d = b.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            for i in 0..d {
                y[i] = kernels::gelu_erf(x[i] + b[i]);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        // The scoring path's kernel (checked on a GPU against the CPU in every precision).
        kernels::cuda::bias_gelu(s1, l1, s2, l2)
    }
    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dz, db) = bias_gelu_backward(x, b, dy)?;
        Ok((Some(dz), Some(db)))
    }
}

/// GELU's derivative (erf form): Φ(z) + z·φ(z).
fn gelu_grad(z: f32) -> f32 {
    let cdf = 0.5 * (1.0 + kernels::erf(z * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = 0.398_942_3 * kernels::exp(-0.5 * z * z);
    cdf + z * pdf
}

impl CustomOp3 for GeluBwd {
    fn name(&self) -> &'static str {
        "bias-gelu-train-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b, dy) = (
            contiguous_f32(s1, l1, "gelu x")?,
            contiguous_f32(s2, l2, "gelu bias")?,
            contiguous_f32(s3, l3, "gelu dy")?,
        );
        let d = b.len();
        let mut dz = vec![0f32; x.len()];
        dz.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
            .for_each(|(dz, (x, dy))| {
                for i in 0..d {
                    dz[i] = dy[i] * gelu_grad(x[i] + b[i]);
                }
            });
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::gelu_bwd(s1, l1, s2, l2, s3, l3)
    }
}

// ---------------------------------------------------------------- a head's bias + ReLU + dropout

/// `dropout(relu(x + bias))` (forward: inputs x, bias) or its gradient in `x + bias` from the
/// output's, `relu'(x + bias) · dropout(dy)` (backward: inputs x, bias, dy), over rows of the
/// bias's length; `seed`: the dropout (none for `None`).
struct BiasReluDrop {
    p: f32,
    seed: Option<u64>,
}

impl BiasReluDrop {
    fn cpu(&self, x: &[f32], b: &[f32], dy: Option<&[f32]>) -> Vec<f32> {
        let d = b.len();
        let mask = self.seed.map(|seed| Mask::new(self.p, seed));
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d).enumerate().for_each(|(row, out)| {
            for (i, o) in out.iter_mut().enumerate() {
                let k = row * d + i;
                let v = x[k] + b[i];
                let y = match dy {
                    None => v.max(0.0),
                    Some(dy) if v > 0.0 => dy[k],
                    Some(_) => 0.0,
                };
                *o = mask.map_or(y, |m| m.apply(y, k));
            }
        });
        out
    }
}

impl CustomOp2 for BiasReluDrop {
    fn name(&self) -> &'static str {
        "bias-relu-dropout"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (
            contiguous_f32(s1, l1, "relu x")?,
            contiguous_f32(s2, l2, "relu bias")?,
        );
        Ok((CpuStorage::F32(self.cpu(x, b, None)), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_relu_drop(s1, l1, s2, l2, None, self.p, self.seed)
    }
}

impl CustomOp3 for BiasReluDrop {
    fn name(&self) -> &'static str {
        "bias-relu-dropout-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b, dy) = (
            contiguous_f32(s1, l1, "relu x")?,
            contiguous_f32(s2, l2, "relu bias")?,
            contiguous_f32(s3, l3, "relu dy")?,
        );
        Ok((CpuStorage::F32(self.cpu(x, b, Some(dy))), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_relu_drop(s1, l1, s2, l2, Some((s3, l3)), self.p, self.seed)
    }
}

/// `dropout(relu(x + bias))` over rows of the bias's length (dropout as [`dropout_with`]): a
/// head's hidden layer after its product, in one pass (one launch on CUDA where it took three),
/// for a forward pass by hand. The passes one by one where the fused ones do not run.
pub fn bias_relu_dropout(x: &Tensor, bias: &Tensor, p: f32, seed: Option<u64>) -> Result<Tensor> {
    if usable(&[x, bias]) && bias.rank() == 1 && x.dim(D::Minus1)? == bias.elem_count() {
        return x
            .contiguous()?
            .apply_op2_no_bwd(&bias.contiguous()?, &BiasReluDrop { p, seed });
    }
    dropout_with(&x.broadcast_add(bias)?.relu()?, p, seed)
}

/// [`bias_relu_dropout`]'s backward pass: the gradient of `x + bias` from the output's `dy`,
/// `relu'(x + bias) · dropout(dy)`, in one pass (one launch on CUDA where it took four).
pub fn bias_relu_dropout_backward(
    x: &Tensor,
    bias: &Tensor,
    dy: &Tensor,
    p: f32,
    seed: Option<u64>,
) -> Result<Tensor> {
    let fits = bias.rank() == 1 && x.dim(D::Minus1)? == bias.elem_count() && x.shape() == dy.shape();
    if fits && usable(&[x, bias, dy]) {
        return x.contiguous()?.apply_op3_no_bwd(
            &bias.contiguous()?,
            &dy.contiguous()?,
            &BiasReluDrop { p, seed },
        );
    }
    let z = x.broadcast_add(bias)?;
    dropout_with(dy, p, seed)? * z.gt(0f32)?.to_dtype(z.dtype())?
}

/// `gelu_erf(x + bias)` over the last dimension, differentiable in both.
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if usable(&[x, bias]) && bias.rank() == 1 && x.dim(D::Minus1)? == bias.elem_count() {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, BiasGelu);
    }
    x.broadcast_add(bias)?.gelu_erf()
}

// ---------------------------------------------------------------- projections and heads
//
// Built from candle's own storage operations (its GEMM, its broadcast add, its strided copy), so
// the same code runs on every backend: no kernel of ours. What they save is graph nodes: candle's
// backward pass adds a zero tensor and an addition for every edge it follows, so a projection
// made of a transpose, a product, a broadcast and an addition costs some ten launches more on
// the way back than one node with the same backward.

/// `x · wᵀ (+ b)` with `x` (rows, k), `w` (n, k), `b` (n), on any backend.
fn project<S: BackendStorage>(
    x: &S,
    lx: &Layout,
    w: &S,
    lw: &Layout,
    b: Option<(&S, &Layout)>,
) -> Result<(S, Shape)> {
    let (m, k) = lx.shape().dims2()?;
    let (n, k2) = lw.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("projection: {k} inputs against a weight of {n} × {k2}")
    }
    let y = x.matmul(w, (1, m, n, k), lx, &lw.transpose(0, 1)?)?;
    let shape = Shape::from((m, n));
    match b {
        None => Ok((y, shape)),
        Some((b, lb)) => {
            let y = y.binary_impl::<candle_core::op::Add>(
                b,
                &Layout::contiguous(&shape),
                &lb.broadcast_as(&shape)?,
            )?;
            Ok((y, shape))
        }
    }
}

struct Project;

impl CustomOp2 for Project {
    fn name(&self) -> &'static str {
        "project"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        project(s1, l1, s2, l2, None)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        project(s1, l1, s2, l2, None)
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dy.matmul(w)?), Some(dy.t()?.matmul(x)?)))
    }
}

struct ProjectBias;

impl CustomOp3 for ProjectBias {
    fn name(&self) -> &'static str {
        "project-bias"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        project(s1, l1, s2, l2, Some((s3, l3)))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        project(s1, l1, s2, l2, Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dy.matmul(w)?), Some(dy.t()?.matmul(x)?), Some(dy.sum(0)?)))
    }
}

/// `x · wᵀ + b` (without `b`: `x · wᵀ`) over the rows of `x` (rows, k), differentiable in all:
/// one graph node.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let ok = match b {
        Some(b) => usable(&[x, w, b]) && b.rank() == 1,
        None => usable(&[x, w]),
    };
    if ok && x.rank() == 2 && w.rank() == 2 {
        let x = x.contiguous()?;
        return match b {
            Some(b) => x.apply_op3(w, &b.contiguous()?, ProjectBias),
            None => x.apply_op2(w, Project),
        };
    }
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Swaps dimensions 1 and 2 of a (b, p, q, d) tensor into a new contiguous one (candle's strided
/// copy); its own backward.
struct Swap12;

fn swap12<S>(x: &S, l: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let &[b, p, q, d] = l.dims() else {
        candle_core::bail!("swap: expected 4 dimensions, got {:?}", l.dims())
    };
    let shape = Shape::from((b, q, p, d));
    // SAFETY: the copy below writes every element.
    let mut out = unsafe { x.device().alloc_uninit(&shape, x.dtype())? };
    x.copy_strided_src(&mut out, 0, &l.transpose(1, 2)?)?;
    Ok((out, shape))
}

impl CustomOp1 for Swap12 {
    fn name(&self) -> &'static str {
        "swap12"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        swap12(s1, l1)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        swap12(s1, l1)
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Swap12)?))
    }
}

/// (b·t, heads·d) rows → (b, heads, t, d), contiguous: one graph node (a reshape, a transpose and
/// a copy otherwise).
pub fn split_heads(x: &Tensor, b: usize, t: usize, heads: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)? / heads;
    let x = x.reshape((b, t, heads, d))?;
    if usable(&[&x]) {
        return x.contiguous()?.apply_op1(Swap12);
    }
    x.transpose(1, 2)?.contiguous()
}

/// `x + bias` as [`split_heads`] lays it out, (b, heads, t, d), for `x` (b·t, heads·d) and `bias`
/// (heads·d): a projection's bias and its head split in one pass (one launch on CUDA where it took
/// two), for a forward pass by hand. The two passes where the fused ones do not run.
pub fn split_heads_bias(x: &Tensor, bias: &Tensor, b: usize, t: usize, heads: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)? / heads;
    if usable(&[x, bias]) && x.dims() == [b * t, heads * d] && bias.dims() == [heads * d] {
        return kernels::split_parts(x, bias, 1, [b, t, heads, d])?.squeeze(0);
    }
    split_heads(&x.broadcast_add(bias)?, b, t, heads)
}

/// (b, heads, t, d) → (b·t, heads·d) rows: [`split_heads`] undone, one graph node.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, heads, t, d) = x.dims4()?;
    let y = if usable(&[x]) {
        x.contiguous()?.apply_op1(Swap12)?
    } else {
        x.transpose(1, 2)?.contiguous()?
    };
    y.reshape((b * t, heads * d))
}

// ---------------------------------------------------------------- loss

/// Binary cross-entropy with logits, per element: `(1 − y)·x + c·softplus(−x)`, with
/// `c = 1 + (pw[col] − 1)·y` when `weighted` (the positive class's weight per column).
struct Bce {
    weighted: bool,
    /// Element-wise derivative `(1 − y) − c·σ(−x)` instead of the loss (the backward pass).
    grad: bool,
}

impl CustomOp3 for Bce {
    fn name(&self) -> &'static str {
        "bce-with-logits"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, pw) = (
            contiguous_f32(s1, l1, "bce x")?,
            contiguous_f32(s2, l2, "bce y")?,
            contiguous_f32(s3, l3, "bce weight")?,
        );
        let cols = if self.weighted { pw.len() } else { 1 };
        let out: Vec<f32> = (0..x.len())
            .map(|i| {
                let c = if self.weighted {
                    1.0 + (pw[i % cols] - 1.0) * y[i]
                } else {
                    1.0
                };
                let xi = x[i];
                if self.grad {
                    (1.0 - y[i]) - c / (1.0 + kernels::exp(xi))
                } else {
                    let sp = (-xi).max(0.0) + kernels::exp(-xi.abs()).ln_1p();
                    (1.0 - y[i]) * xi + c * sp
                }
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bce(s1, l1, s2, l2, s3, l3, self.weighted, self.grad)
    }
    fn bwd(
        &self,
        x: &Tensor,
        y: &Tensor,
        pw: &Tensor,
        _l: &Tensor,
        dl: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = x.apply_op3_no_bwd(
            y,
            pw,
            &Bce {
                weighted: self.weighted,
                grad: true,
            },
        )?;
        Ok((Some((d * dl)?), None, None))
    }
}

/// The mean binary cross-entropy of logits `x` against 0/1 targets `y` (same shape), with the
/// positive class of column `j` weighted by `pos_weight[j]` (rows of `pos_weight.len()`):
/// PyTorch's `BCEWithLogitsLoss(pos_weight=…)`, stable for any `x`, differentiable in `x`.
pub fn bce_with_logits(x: &Tensor, y: &Tensor, pos_weight: Option<&Tensor>) -> Result<Tensor> {
    let cols_ok = pos_weight.is_none_or(|pw| x.dim(D::Minus1).is_ok_and(|c| c == pw.elem_count()));
    let args: Vec<&Tensor> = [Some(x), Some(y), pos_weight].into_iter().flatten().collect();
    if usable(&args) && cols_ok && x.shape() == y.shape() {
        let (x, y) = (x.contiguous()?, y.contiguous()?);
        let l = match pos_weight {
            Some(pw) => x.apply_op3(
                &y,
                &pw.contiguous()?,
                Bce {
                    weighted: true,
                    grad: false,
                },
            )?,
            // The third operand is not read.
            None => x.apply_op3(
                &y,
                &y,
                Bce {
                    weighted: false,
                    grad: false,
                },
            )?,
        };
        return l.mean_all();
    }
    // softplus(-x) = relu(-x) + log(1 + exp(-|x|)), stable for any x.
    let sp = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let neg_part = ((1.0 - y)? * x)?;
    let coef = match pos_weight {
        Some(pw) => (y.broadcast_mul(&(pw - 1.0)?)? + 1.0)?,
        None => y.ones_like()?,
    };
    (neg_part + (coef * sp)?)?.mean_all()
}

// ---------------------------------------------------------------- dropout

struct Dropout {
    p: f32,
    seed: u64,
}

/// The uniform number in [0, 1) that element `i` of the dropout drawn with `seed` compares with
/// its rate (splitmix64 of the two; the CUDA kernel computes the same).
fn dropout_uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// The dropout of rate `p` drawn with `seed`, element by element: every pass that applies a
/// dropout (alone or fused with its neighbours) applies it through this, so all draw the same
/// mask for the same seed and element (the CUDA kernels' `dropout_at` computes the same).
#[derive(Clone, Copy)]
struct Mask {
    p: f32,
    keep: f32,
    seed: u64,
}

impl Mask {
    fn new(p: f32, seed: u64) -> Self {
        Mask {
            p,
            keep: 1.0 / (1.0 - p),
            seed,
        }
    }

    /// Element `i` of value `v`: `v / (1 − p)` where kept, 0 where dropped.
    fn apply(&self, v: f32, i: usize) -> f32 {
        if dropout_uniform(self.seed, i as u64) >= self.p {
            v * self.keep
        } else {
            0.0
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "dropout x")?;
        let mask = Mask::new(self.p, self.seed);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(1 << 14).enumerate().for_each(|(c, y)| {
            let start = c << 14;
            for (k, y) in y.iter_mut().enumerate() {
                *y = mask.apply(x[start + k], start + k);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::dropout(s1, l1, self.p, self.seed)
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // The same mask, the same scale: the op itself, on the gradient.
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Dropout {
            p: self.p,
            seed: self.seed,
        })?))
    }
}

thread_local! {
    static SEED: Cell<u64> = const { Cell::new(0x5EED_D80B) };
}

/// Restarts this thread's sequence of dropout masks (each call of [`dropout`] draws a new seed
/// from it), so a seeded training run draws the same masks again.
pub fn seed_dropout(seed: u64) {
    SEED.with(|s| s.set(seed));
}

/// Dropout at rate `p` (kept elements scaled by 1/(1−p)), differentiable; its mask depends only
/// on a seed drawn from [`seed_dropout`]'s sequence and on each element's position.
pub fn dropout(x: &Tensor, p: f32) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout rate {p} is not in [0, 1)")
    }
    if NO_DROPOUT.with(|o| o.get()) {
        return Ok(x.clone());
    }
    if usable(&[x]) {
        return x.contiguous()?.apply_op1(Dropout { p, seed: next_seed() });
    }
    candle_nn::ops::dropout(x, p)
}

/// The next seed of this thread's dropout sequence.
fn next_seed() -> u64 {
    SEED.with(|s| {
        let v = s.get();
        s.set(v.wrapping_add(0x9E37_79B9_7F4A_7C15));
        v
    })
}

// ------------------------------------------------ the passes alone, for a backward pass by hand
//
// A layer trained by hand ([`super::bert`]'s taped forward and backward) calls these on tensors
// outside any graph: the same kernels, no graph nodes. They run where [`usable`] says the fused
// operations run.

/// A dropout mask's seed for a pass by hand, `None` when dropout is off (rate 0, or
/// [`without_dropout`]); the same sequence [`dropout`] draws from.
pub fn dropout_seed(p: f32) -> Option<u64> {
    (p > 0.0 && !NO_DROPOUT.with(|o| o.get())).then(next_seed)
}

/// Dropout with a given seed (the identity for `None`): forward, and backward on a gradient.
pub fn dropout_with(x: &Tensor, p: f32, seed: Option<u64>) -> Result<Tensor> {
    match seed {
        Some(seed) => x.contiguous()?.apply_op1_no_bwd(&Dropout { p, seed }),
        None => Ok(x.clone()),
    }
}

/// The gradient of [`bce_with_logits`] (the mean) in its logits `x`, for a backward pass by hand:
/// `((1 − y) − c·σ(−x)) / n`, element by element (see [`bce_with_logits`] for `c`). Where the
/// fused passes run ([`usable`]).
pub fn bce_with_logits_grad(x: &Tensor, y: &Tensor, pos_weight: Option<&Tensor>) -> Result<Tensor> {
    let args: Vec<&Tensor> = [Some(x), Some(y), pos_weight].into_iter().flatten().collect();
    if !usable(&args) || x.shape() != y.shape() {
        candle_core::bail!("bce-with-logits gradient by hand: not where the fused passes run")
    }
    let bce = Bce {
        weighted: pos_weight.is_some(),
        grad: true,
    };
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    // Without a weight the third operand is not read.
    let pw = pos_weight.map_or(Ok(y.clone()), |pw| pw.contiguous())?;
    x.apply_op3_no_bwd(&y, &pw, &bce)? * (1.0 / x.elem_count().max(1) as f64)
}

/// Column sums of 2-D tensors (rows × cols): each over all its rows (`None`), or split at a row
/// into the sums over the rows before it and from it (`Some(cut)`: two tasks' gradients where they
/// share a batch). A layer's bias and layer-norm gradients take one operation this way (one launch
/// on CUDA, `col_sums_f32`) where `sum(0)` takes one a tensor and part. The sums are views into
/// one new tensor. Falls back to `narrow` + `sum(0)` where the fused passes do not run.
pub fn column_sums(items: &[(&Tensor, Option<usize>)]) -> Result<Vec<(Tensor, Option<Tensor>)>> {
    let mut plan = Vec::with_capacity(items.len());
    let mut total = 0;
    for &(t, cut) in items {
        let (rows, cols) = t.dims2()?;
        if cut.is_some_and(|c| c > rows) {
            candle_core::bail!("column sums: a split at row {cut:?} of {rows}")
        }
        plan.push(ColumnSum {
            rows,
            cols,
            cut: cut.unwrap_or(rows),
            split: cut.is_some(),
            at: total,
        });
        total += cols * (1 + cut.is_some() as usize);
    }
    let srcs: Vec<&Tensor> = items.iter().map(|(t, _)| *t).collect();
    let same_device = srcs.windows(2).all(|w| w[0].device().same_device(w[1].device()));
    if srcs.is_empty() || !same_device || !usable(&srcs) || total == 0 {
        return items
            .iter()
            .zip(&plan)
            .map(|(&(t, _), p)| {
                let a = t.narrow(0, 0, p.cut)?.sum(0)?;
                let b = p
                    .split
                    .then(|| t.narrow(0, p.cut, p.rows - p.cut)?.sum(0))
                    .transpose()?;
                Ok((a, b))
            })
            .collect();
    }
    let srcs: Vec<Tensor> = srcs.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    let flat = if srcs[0].device().is_cuda() {
        #[cfg(feature = "cuda")]
        {
            cuda::column_sums(&srcs, &plan, total)?
        }
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("column sums: built without CUDA")
    } else {
        cpu_column_sums(&srcs, &plan, total)?
    };
    plan.iter()
        .map(|p| {
            let b = p
                .split
                .then(|| flat.narrow(0, p.at + p.cols, p.cols))
                .transpose()?;
            Ok((flat.narrow(0, p.at, p.cols)?, b))
        })
        .collect()
}

/// One tensor of a [`column_sums`]: its rows are summed over `0..cut` into `at..at + cols` of
/// the output and, if `split`, over `cut..rows` into the next `cols`.
struct ColumnSum {
    rows: usize,
    cols: usize,
    cut: usize,
    split: bool,
    at: usize,
}

/// [`column_sums`] on the CPU: in parallel over blocks of columns, each block's rows added in row
/// order.
fn cpu_column_sums(srcs: &[Tensor], plan: &[ColumnSum], total: usize) -> Result<Tensor> {
    const BLOCK: usize = 256;
    cpu_pass(srcs, total, "column sums", |slices, out| {
        let mut tasks = Vec::new();
        let mut rest: &mut [f32] = out;
        for (p, src) in plan.iter().zip(slices) {
            let (a, tail) = std::mem::take(&mut rest).split_at_mut(p.cols * (1 + p.split as usize));
            rest = tail;
            let (a, b) = a.split_at_mut(p.cols);
            let mut b = p.split.then(|| b.chunks_mut(BLOCK));
            for (j, a) in a.chunks_mut(BLOCK).enumerate() {
                let b = b.as_mut().and_then(|b| b.next());
                tasks.push((*src, p, j * BLOCK, a, b));
            }
        }
        tasks.into_par_iter().for_each(|(src, p, c0, a, mut b)| {
            for r in 0..p.rows {
                let row = &src[r * p.cols + c0..][..a.len()];
                let sum: &mut [f32] = if r < p.cut {
                    &mut *a
                } else {
                    b.as_deref_mut().expect("rows past the cut only when split")
                };
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
        });
    })
}

/// A pass by hand over contiguous f32 CPU tensors that candle's custom operations (three inputs
/// at most) do not fit: `f` gets their elements and `n` new ones to write, returned as a 1-D tensor.
fn cpu_pass(
    inputs: &[Tensor],
    n: usize,
    what: &str,
    f: impl FnOnce(&[&[f32]], &mut [f32]),
) -> Result<Tensor> {
    let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(s, l)| match &**s {
            candle_core::Storage::Cpu(s) => contiguous_f32(s, l, what),
            _ => candle_core::bail!("{what}: expected CPU tensors"),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = vec![0f32; n];
    f(&slices, &mut out);
    Tensor::from_vec(out, n, &candle_core::Device::Cpu)
}

/// `(r, y)`: `r = dropout(x + bias) + res` (dropout as [`dropout_with`] draws it: none for
/// `None`) and `y` its layer norm (gain `g`, bias `beta`), over rows of h: a training layer's
/// projection bias, dropout, residual and layer norm in one pass (one launch on CUDA,
/// `bias_drop_add_norm_f32`, where they took four), for a forward pass by hand. `x`, `res`: rows
/// of h in the same shape. Where the fused passes do not run, the same from the passes one by one.
#[allow(clippy::too_many_arguments)]
pub fn bias_dropout_add_norm(
    x: &Tensor,
    bias: &Tensor,
    res: &Tensor,
    g: &Tensor,
    beta: &Tensor,
    p: f32,
    seed: Option<u64>,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
    let h = g.elem_count();
    let fits = x.shape() == res.shape()
        && x.dim(D::Minus1)? == h
        && [bias, beta].iter().all(|t| t.rank() == 1 && t.elem_count() == h);
    if !fits || !usable(&[x, bias, res, g, beta]) {
        let r = (dropout_with(&x.broadcast_add(bias)?, p, seed)? + res)?;
        let y = layer_norm(&r, g, beta, eps)?;
        return Ok((r, y));
    }
    let inputs = [x, bias, res, g, beta].map(|t| t.contiguous());
    let inputs = inputs.into_iter().collect::<Result<Vec<_>>>()?;
    let (n, eps) = (x.elem_count(), eps as f32);
    let both = if x.device().is_cuda() {
        #[cfg(feature = "cuda")]
        {
            cuda::bias_dropout_add_norm(&inputs, h, eps, p, seed)?
        }
        #[cfg(not(feature = "cuda"))]
        candle_core::bail!("bias + dropout + residual + layer norm: built without CUDA")
    } else {
        cpu_pass(
            &inputs,
            2 * n,
            "bias + dropout + residual + layer norm",
            |ins, out| {
                let [x, bias, res, g, beta] = ins else {
                    unreachable!("five inputs")
                };
                let mask = seed.map(|seed| Mask::new(p, seed));
                let (r, y) = out.split_at_mut(n);
                r.par_chunks_mut(h)
                    .zip(y.par_chunks_mut(h))
                    .enumerate()
                    .for_each(|(row, (r, y))| {
                        let off = row * h;
                        for i in 0..h {
                            let v = x[off + i] + bias[i];
                            let v = mask.map_or(v, |m| m.apply(v, off + i));
                            r[i] = v + res[off + i];
                        }
                        let (mean, rstd) = row_stats(r, eps);
                        for i in 0..h {
                            y[i] = (r[i] - mean) * rstd * g[i] + beta[i];
                        }
                    });
            },
        )?
    };
    let both = both.reshape((2, n))?;
    Ok((both.get(0)?.reshape(x.shape())?, both.get(1)?.reshape(x.shape())?))
}

/// Layer norm's backward pass: `(dx, dgain, dbias)` from its input `x` (rows of h), gain and the
/// output's gradient.
pub fn layer_norm_backward(
    x: &Tensor,
    g: &Tensor,
    dy: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let h = g.elem_count();
    let rows = x.elem_count() / h;
    let (dx, dgx) = layer_norm_backward_rows(x, g, dy, eps)?;
    Ok((dx, dgx.sum(0)?, dy.reshape((rows, h))?.sum(0)?))
}

/// [`layer_norm_backward`] before its sums over rows: `dx` and each row's share of the gain's
/// gradient (rows, h) (the bias's is the rows of `dy`), for sums over parts of the rows.
pub fn layer_norm_backward_rows(x: &Tensor, g: &Tensor, dy: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let (dx, dgx, _) = layer_norm_backward_rows_dropout(x, g, dy, eps, 0.0, None)?;
    Ok((dx, dgx))
}

/// [`layer_norm_backward_rows`] and `dx` through dropout ([`dropout_with`]: `dx` itself for
/// `None`) in one pass: `(dx, dgx, dropout(dx))`, the gradients of a residual branch's input and
/// of the dropout's input below it (the backward pass of [`bias_dropout_add_norm`]).
pub fn layer_norm_backward_rows_dropout(
    x: &Tensor,
    g: &Tensor,
    dy: &Tensor,
    eps: f64,
    p: f32,
    seed: Option<u64>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let op = LayerNormBwd {
        eps: eps as f32,
        drop: seed.map(|s| (p, s)),
    };
    let out = x.contiguous()?.apply_op3_no_bwd(g, &dy.contiguous()?, &op)?;
    let dx = out.get(0)?.reshape(x.shape())?;
    let dropped = if seed.is_some() {
        out.get(2)?.reshape(x.shape())?
    } else {
        dx.clone()
    };
    Ok((dx, out.get(1)?, dropped))
}

/// [`scaled_masked_softmax`]'s backward pass: the scores' gradient from its output `p` and the
/// output's gradient.
pub fn softmax_backward(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    p.apply_op2_no_bwd(&dp.contiguous()?, &SoftmaxBwd { scale: scale as f32 })
}

/// [`bias_gelu`]'s backward pass: `(dz, dbias)` with `dz` the gradient of `x + bias`.
pub fn bias_gelu_backward(x: &Tensor, bias: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dz = gelu_backward(x, bias, dy)?;
    let d = bias.elem_count();
    let db = dz.reshape((dz.elem_count() / d, d))?.sum(0)?;
    Ok((dz, db))
}

/// The gradient of `x + bias` in [`bias_gelu`] (whose bias's gradient is its sum over rows).
pub fn gelu_backward(x: &Tensor, bias: &Tensor, dy: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(bias, &dy.contiguous()?, &GeluBwd)
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launchers for the `*_train_*` and `dropout_f32` kernels of `kernels/fused.cu`.
    use super::kernels::cuda::{address, pair, MODULE, PTX};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaView, DevicePtr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
    use candle_core::{Layout, Result, Shape};

    fn view<'a>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, f32>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
        Ok(s.as_cuda_slice::<f32>()?.slice(a..b))
    }

    fn func(s: &CudaStorage, name: &str) -> Result<CudaFunction> {
        func_on(s.device(), name)
    }

    fn func_on(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
        Ok(dev
            .get_or_load_custom_func(name, MODULE, PTX)?
            .into_cuda_function())
    }

    /// One block of 128 threads per row.
    fn per_row(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
        eps: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, g, b) = (
            view(s1, l1, "layer norm x")?,
            view(s2, l2, "gain")?,
            view(s3, l3, "bias")?,
        );
        let h = g.len();
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<f32>(x.len())? };
        let (f, stream) = (func(s1, "ln_train_fwd_f32")?, dev.cuda_stream());
        let h32 = h as u32;
        let mut args = stream.launch_builder(&f);
        args.arg(&x).arg(&g).arg(&b).arg(&mut y).arg(&h32).arg(&eps);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_row(x.len() / h)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
        eps: f32,
        drop: Option<(f32, u64)>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, g, dy) = (
            view(s1, l1, "layer norm x")?,
            view(s2, l2, "gain")?,
            view(s3, l3, "dy")?,
        );
        let h = g.len();
        let rows = x.len() / h;
        let planes = 2 + drop.is_some() as usize;
        // SAFETY: every element is written by the kernel below.
        let mut out = unsafe { dev.alloc::<f32>(planes * x.len())? };
        let name = if drop.is_some() {
            "ln_train_bwd_drop_f32"
        } else {
            "ln_train_bwd_f32"
        };
        let (f, stream) = (func(s1, name)?, dev.cuda_stream());
        let (rows32, h32) = (rows as u32, h as u32);
        let mut args = stream.launch_builder(&f);
        args.arg(&x)
            .arg(&g)
            .arg(&dy)
            .arg(&mut out)
            .arg(&rows32)
            .arg(&h32)
            .arg(&eps);
        let (p, seed) = drop.unwrap_or((0.0, 0));
        if drop.is_some() {
            args.arg(&p).arg(&seed);
        }
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_row(rows)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((planes, rows, h)),
        ))
    }

    pub fn softmax(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (s, m) = (view(s1, l1, "softmax scores")?, view(s2, l2, "softmax mask")?);
        let dims = l1.dims();
        let (b, t) = (dims[0], dims[dims.len() - 1]);
        let rows = s.len() / t;
        let (t32, per_text) = (t as u32, (rows / b) as u32);
        // SAFETY: every element is written by the kernel below.
        let mut p = unsafe { dev.alloc::<f32>(s.len())? };
        let (f, stream) = (func(s1, "softmax_train_fwd_f32")?, dev.cuda_stream());
        let mut args = stream.launch_builder(&f);
        args.arg(&s)
            .arg(&m)
            .arg(&mut p)
            .arg(&t32)
            .arg(&per_text)
            .arg(&scale);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_row(rows)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(p, dev), l1.shape().clone()))
    }

    pub fn softmax_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (p, dp) = (view(s1, l1, "softmax p")?, view(s2, l2, "softmax dp")?);
        let t = l1.dims()[l1.dims().len() - 1];
        // SAFETY: every element is written by the kernel below.
        let mut ds = unsafe { dev.alloc::<f32>(p.len())? };
        let (f, stream) = (func(s1, "softmax_train_bwd_f32")?, dev.cuda_stream());
        let t32 = t as u32;
        let mut args = stream.launch_builder(&f);
        args.arg(&p).arg(&dp).arg(&mut ds).arg(&t32).arg(&scale);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_row(p.len() / t)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(ds, dev), l1.shape().clone()))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn gelu_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, b, dy) = (
            view(s1, l1, "gelu x")?,
            view(s2, l2, "gelu bias")?,
            view(s3, l3, "gelu dy")?,
        );
        // SAFETY: every element is written by the kernel below.
        let mut dz = unsafe { dev.alloc::<f32>(x.len())? };
        let (f, stream) = (func(s1, "gelu_train_bwd_f32")?, dev.cuda_stream());
        let (n, d) = (x.len() as u32, b.len() as u32);
        let mut args = stream.launch_builder(&f);
        args.arg(&x).arg(&b).arg(&dy).arg(&mut dz).arg(&n).arg(&d);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(dz, dev), l1.shape().clone()))
    }

    /// [`super::BiasReluDrop`]: forward without `dy`, backward with it.
    pub fn bias_relu_drop(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        dy: Option<(&CudaStorage, &Layout)>,
        p: f32,
        seed: Option<u64>,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, b) = (view(s1, l1, "relu x")?, view(s2, l2, "relu bias")?);
        let dy = dy.map(|(s, l)| view(s, l, "relu dy")).transpose()?;
        // SAFETY: every element is written by the kernel below.
        let mut out = unsafe { dev.alloc::<f32>(x.len())? };
        let (f, stream) = (func(s1, "bias_relu_drop_f32")?, dev.cuda_stream());
        let (n, d) = (x.len() as u32, b.len() as u32);
        let (drop, seed) = (seed.is_some() as u32, seed.unwrap_or(0));
        let null = 0u64;
        let mut args = stream.launch_builder(&f);
        args.arg(&x).arg(&b);
        match &dy {
            Some(dy) => args.arg(dy),
            None => args.arg(&null),
        };
        args.arg(&mut out).arg(&n).arg(&d).arg(&p).arg(&seed).arg(&drop);
        // SAFETY: the argument list matches the kernel's signature (a null `dy` in the forward pass).
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), l1.shape().clone()))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bce(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
        weighted: bool,
        grad: bool,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, y, pw) = (
            view(s1, l1, "bce x")?,
            view(s2, l2, "bce y")?,
            view(s3, l3, "bce weight")?,
        );
        // SAFETY: every element is written by the kernel below.
        let mut out = unsafe { dev.alloc::<f32>(x.len())? };
        let name = if grad { "bce_grad_f32" } else { "bce_fwd_f32" };
        let (f, stream) = (func(s1, name)?, dev.cuda_stream());
        let (n, cols, w) = (
            x.len() as u32,
            if weighted { pw.len() as u32 } else { 1 },
            weighted as u32,
        );
        let mut args = stream.launch_builder(&f);
        args.arg(&x)
            .arg(&y)
            .arg(&pw)
            .arg(&mut out)
            .arg(&n)
            .arg(&cols)
            .arg(&w);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), l1.shape().clone()))
    }

    pub fn dropout(s1: &CudaStorage, l1: &Layout, p: f32, seed: u64) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let x = view(s1, l1, "dropout x")?;
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<f32>(x.len())? };
        let (f, stream) = (func(s1, "dropout_f32")?, dev.cuda_stream());
        let n = x.len() as u32;
        let mut args = stream.launch_builder(&f);
        args.arg(&x).arg(&mut y).arg(&n).arg(&p).arg(&seed);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
    }

    /// A pass by hand over contiguous f32 CUDA tensors that candle's custom operations do not
    /// fit: `f` gets the device, the inputs' addresses and that of `n` new elements to write,
    /// returned as a 1-D tensor.
    fn cuda_pass(
        inputs: &[candle_core::Tensor],
        n: usize,
        what: &str,
        f: impl FnOnce(&CudaDevice, &[u64], u64) -> Result<()>,
    ) -> Result<candle_core::Tensor> {
        let mut dev = None;
        let mut ptrs = Vec::with_capacity(inputs.len());
        for t in inputs {
            let (d, p) = address(t, what)?;
            dev.get_or_insert(d);
            ptrs.push(p);
        }
        let dev = dev.ok_or_else(|| candle_core::Error::Msg(format!("{what}: no inputs")))?;
        // SAFETY: `f`'s kernel writes every element.
        let out = unsafe { dev.alloc::<f32>(n)? };
        let base = out.device_ptr(&dev.cuda_stream()).0;
        f(&dev, &ptrs, base)?;
        Ok(candle_core::Tensor::from_storage(
            candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev)),
            n,
            candle_core::op::BackpropOp::none(),
            false,
        ))
    }

    /// [`super::column_sums`]: `col_sums_f32` over a table of the tensors (`struct ColSum` in
    /// fused.cu: three pointers, then rows, cols, cut and the first block as u32 pairs: 5 × 8
    /// bytes), one block of 256 threads per 32 columns of a tensor.
    pub fn column_sums(
        srcs: &[candle_core::Tensor],
        plan: &[super::ColumnSum],
        total: usize,
    ) -> Result<candle_core::Tensor> {
        cuda_pass(srcs, total, "column sums", |dev, ptrs, base| {
            let stream = dev.cuda_stream();
            let mut table = Vec::with_capacity(plan.len() * 5);
            let mut blocks = 0u32;
            for (&src, p) in ptrs.iter().zip(plan) {
                let a = base + (p.at * 4) as u64;
                let b = if p.split { a + (p.cols * 4) as u64 } else { 0 };
                table.extend([
                    src,
                    a,
                    b,
                    pair(p.rows as u32, p.cols as u32),
                    pair(p.cut as u32, blocks),
                ]);
                blocks += p.cols.div_ceil(32) as u32;
            }
            let table = stream.clone_htod(&table).w()?;
            let n = plan.len() as u32;
            let f = func_on(dev, "col_sums_f32")?;
            let mut args = stream.launch_builder(&f);
            args.arg(&table).arg(&n);
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the argument list matches the kernel's signature; the table holds live
            // tensors' addresses (they outlive the launch, and candle frees in stream order).
            unsafe { args.launch(cfg) }.w()?;
            Ok(())
        })
    }

    /// [`super::bias_dropout_add_norm`]: `bias_drop_add_norm_f32`, one block of 128 threads a
    /// row; `inputs`: x, bias, res, g, beta.
    pub fn bias_dropout_add_norm(
        inputs: &[candle_core::Tensor],
        h: usize,
        eps: f32,
        p: f32,
        seed: Option<u64>,
    ) -> Result<candle_core::Tensor> {
        let n = inputs[0].elem_count();
        let what = "bias + dropout + residual + layer norm";
        cuda_pass(inputs, 2 * n, what, |dev, ptrs, out| {
            let &[x, bias, res, g, beta] = ptrs else {
                candle_core::bail!("{what}: five inputs")
            };
            let stream = dev.cuda_stream();
            let f = func_on(dev, "bias_drop_add_norm_f32")?;
            let (rows, h32) = ((n / h) as u32, h as u32);
            let (drop, seed) = (seed.is_some() as u32, seed.unwrap_or(0));
            let mut args = stream.launch_builder(&f);
            args.arg(&x)
                .arg(&bias)
                .arg(&res)
                .arg(&g)
                .arg(&beta)
                .arg(&out)
                .arg(&rows)
                .arg(&h32)
                .arg(&eps)
                .arg(&p)
                .arg(&seed)
                .arg(&drop);
            // SAFETY: the argument list matches the kernel's signature (pointers as u64); the
            // addresses are live tensors' (they outlive the launch; candle frees in stream order).
            unsafe { args.launch(per_row(n / h)) }.w()?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::model::kernels::tests::max_diff;

    /// Values and gradients (of `Σ y·r` for a random `r`) of `f` on `inputs`, fused and through
    /// candle's operations; returns the largest difference of each.
    fn compare(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> (f32, f32) {
        let run = |fused: bool| {
            let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = if fused { f(&ts) } else { without_fused(|| f(&ts)) }.unwrap();
            let r = if y.rank() == 0 {
                Tensor::new(1.7f32, &Device::Cpu).unwrap()
            } else {
                Tensor::ones(y.shape(), DType::F32, &Device::Cpu)
                    .unwrap()
                    .cumsum(D::Minus1)
                    .unwrap()
                    .sin()
                    .unwrap()
            };
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gs: Vec<Option<Tensor>> = ts.iter().map(|t| grads.get(t).cloned()).collect();
            (y, gs)
        };
        let ((y1, g1), (y2, g2)) = (run(true), run(false));
        assert!(g1[0].is_some(), "the first input gets a gradient");
        let worst = g1
            .iter()
            .zip(&g2)
            .map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => max_diff(a, b),
                (None, None) => 0.0,
                _ => panic!("a gradient on one path only"),
            })
            .fold(0f32, f32::max);
        (max_diff(&y1, &y2), worst)
    }

    fn randn(shape: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
    }

    /// Every sum of one `column_sums` equals its own `narrow` + `sum(0)`: split and not, splits at
    /// either end, more columns than one CPU block, a non-contiguous input; and the fallback
    /// (fused passes off) gives the same.
    #[test]
    fn column_sums_match_sums_over_rows() {
        let wide = randn(&[19, 600]);
        let t = randn(&[40, 7]).t().unwrap(); // (7, 40), not contiguous
        let items: Vec<(&Tensor, Option<usize>)> = vec![
            (&wide, Some(11)),
            (&t, None),
            (&wide, Some(0)),
            (&wide, Some(19)),
            (&t, Some(3)),
        ];
        let want = |t: &Tensor, a: usize, n: usize| t.narrow(0, a, n).unwrap().sum(0).unwrap();
        for fused in [true, false] {
            let got = if fused {
                column_sums(&items)
            } else {
                without_fused(|| column_sums(&items))
            }
            .unwrap();
            assert_eq!(got.len(), items.len());
            for (&(t, cut), (a, b)) in items.iter().zip(&got) {
                let rows = t.dim(0).unwrap();
                let c = cut.unwrap_or(rows);
                let (da, db) = (
                    max_diff(a, &want(t, 0, c)),
                    b.as_ref().map(|b| max_diff(b, &want(t, c, rows - c))),
                );
                assert!(da < 1e-5, "fused {fused} cut {cut:?}: {da}");
                assert_eq!(b.is_some(), cut.is_some(), "a second sum exactly when split");
                assert!(db.unwrap_or(0.0) < 1e-5, "fused {fused} cut {cut:?}: {db:?}");
                assert_eq!(a.dims(), &[t.dim(1).unwrap()]);
            }
        }
        assert!(column_sums(&[(&wide, Some(20))]).is_err(), "a cut past the rows");
    }

    /// The residual branch's one pass ([`bias_dropout_add_norm`]) and its backward pass
    /// ([`layer_norm_backward_rows_dropout`]) give what the passes one by one give: the same
    /// dropout mask, scale and rows, with dropout and without.
    #[test]
    fn residual_branch_in_one_pass_matches_the_passes() {
        let (x, res) = (randn(&[2, 5, 48]), randn(&[2, 5, 48]));
        let (bias, g, beta) = (randn(&[48]), randn(&[48]).affine(0.5, 1.0).unwrap(), randn(&[48]));
        let dy = randn(&[2, 5, 48]);
        for seed in [None, Some(0xD80B_u64)] {
            let (r, y) = bias_dropout_add_norm(&x, &bias, &res, &g, &beta, 0.25, seed, 1e-12).unwrap();
            let r2 = (dropout_with(&x.broadcast_add(&bias).unwrap(), 0.25, seed).unwrap() + &res).unwrap();
            let y2 = layer_norm(&r2, &g, &beta, 1e-12).unwrap();
            assert_eq!((r.dims(), y.dims()), (x.dims(), x.dims()));
            assert!(max_diff(&r, &r2) < 1e-6, "{seed:?}: r {}", max_diff(&r, &r2));
            assert!(max_diff(&y, &y2) < 1e-5, "{seed:?}: y {}", max_diff(&y, &y2));
            // The slow way, candle's operations alone, agrees too.
            let (r3, y3) =
                without_fused(|| bias_dropout_add_norm(&x, &bias, &res, &g, &beta, 0.25, None, 1e-12))
                    .unwrap();
            if seed.is_none() {
                assert!(max_diff(&r, &r3) < 1e-6 && max_diff(&y, &y3) < 1e-4);
            }
            let (dx, dgx, dropped) =
                layer_norm_backward_rows_dropout(&r, &g, &dy, 1e-12, 0.25, seed).unwrap();
            let (dx2, dgx2) = layer_norm_backward_rows(&r, &g, &dy, 1e-12).unwrap();
            let dropped2 = dropout_with(&dx2, 0.25, seed).unwrap();
            assert!(max_diff(&dx, &dx2) < 1e-6 && max_diff(&dgx, &dgx2) < 1e-6);
            assert!(max_diff(&dropped, &dropped2) < 1e-6, "{seed:?}: dropout of dx");
            let zeros = dropped.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let zeros = zeros.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros > 0, seed.is_some(), "{zeros} dropped");
        }
    }

    /// A projection's bias and head split in one pass give what the bias add and [`split_heads`]
    /// give, and candle's operations alone: each text's tokens, each head's columns.
    #[test]
    fn split_heads_with_bias_matches_the_passes() {
        let (b, t, heads, d) = (3, 5, 4, 6);
        let (x, bias) = (randn(&[b * t, heads * d]), randn(&[heads * d]));
        let got = split_heads_bias(&x, &bias, b, t, heads).unwrap();
        assert_eq!(got.dims(), &[b, heads, t, d]);
        assert!(got.is_contiguous());
        let want = split_heads(&x.broadcast_add(&bias).unwrap(), b, t, heads).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
        let slow = without_fused(|| split_heads_bias(&x, &bias, b, t, heads)).unwrap();
        assert_eq!(max_diff(&got, &slow), 0.0);
        // One element by hand: text 2, token 3, head 1, column 4.
        let v = |t: &Tensor, at: &[usize]| -> f32 {
            let mut t = t.clone();
            for &i in at {
                t = t.get(i).unwrap();
            }
            t.to_scalar().unwrap()
        };
        let by_hand = v(&x, &[2 * t + 3, d + 4]) + v(&bias, &[d + 4]);
        assert_eq!(v(&got, &[2, 1, 3, 4]), by_hand);
    }

    /// A head's bias + ReLU + dropout in one pass, forward and backward, gives what the passes
    /// one by one give (the graph's ReLU and its gradient, the same mask), with dropout and without.
    #[test]
    fn bias_relu_dropout_matches_the_passes() {
        let (x, b, dy) = (randn(&[6, 40]), randn(&[40]), randn(&[6, 40]));
        for seed in [None, Some(0x4E1A_u64)] {
            let y = bias_relu_dropout(&x, &b, 0.3, seed).unwrap();
            let y2 = dropout_with(&x.broadcast_add(&b).unwrap().relu().unwrap(), 0.3, seed).unwrap();
            assert!(
                max_diff(&y, &y2) < 1e-6,
                "{seed:?}: forward {}",
                max_diff(&y, &y2)
            );
            // The gradient of x + b through candle's own graph of the same mask.
            let z = Var::from_tensor(&x.broadcast_add(&b).unwrap()).unwrap();
            let out = dropout_with(&z.as_tensor().relu().unwrap(), 0.3, seed).unwrap();
            let want = match seed {
                // dropout_with is outside the graph: its gradient is the op itself on dy.
                Some(_) => (dropout_with(&dy, 0.3, seed).unwrap()
                    * z.as_tensor().gt(0f32).unwrap().to_dtype(DType::F32).unwrap())
                .unwrap(),
                None => (out * &dy)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap()
                    .get(z.as_tensor())
                    .unwrap()
                    .clone(),
            };
            let got = bias_relu_dropout_backward(&x, &b, &dy, 0.3, seed).unwrap();
            assert!(
                max_diff(&got, &want) < 1e-6,
                "{seed:?}: backward {}",
                max_diff(&got, &want)
            );
            let slow = without_fused(|| bias_relu_dropout_backward(&x, &b, &dy, 0.3, seed)).unwrap();
            assert!(max_diff(&got, &slow) < 1e-6, "{seed:?}: against the passes");
            let zeros = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .filter(|v| **v == 0.0)
                    .count()
            };
            assert!(zeros(&y) > 0 && zeros(&got) > 0, "ReLU zeroes some");
        }
    }

    #[test]
    fn layer_norm_matches_the_operations_and_their_gradients() {
        let x = randn(&[3, 5, 48]).affine(3.0, 1.0).unwrap();
        let (g, b) = (randn(&[48]).affine(0.2, 1.0).unwrap(), randn(&[48]));
        let (dy, dg) = compare(&[x, g, b], |t| layer_norm(&t[0], &t[1], &t[2], 1e-12));
        assert!(dy < 1e-5, "values: {dy}");
        assert!(dg < 1e-4, "gradients: {dg}");
    }

    #[test]
    fn softmax_matches_the_operations_and_their_gradients() {
        let s = (randn(&[2, 3, 4, 7]) * 4.0).unwrap();
        // The second text's last three tokens are padding.
        let m = Tensor::new(
            &[0f32, 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., -1e9, -1e9, -1e9],
            &Device::Cpu,
        )
        .unwrap()
        .reshape((2, 1, 1, 7))
        .unwrap();
        let (dy, dg) = compare(&[s, m], |t| scaled_masked_softmax(&t[0], &t[1].detach(), 0.125));
        assert!(dy < 1e-6, "values: {dy}");
        assert!(dg < 1e-5, "gradients: {dg}");
    }

    #[test]
    fn bias_gelu_matches_the_operations_and_their_gradients() {
        let x = (randn(&[2, 6, 40]) * 2.0).unwrap();
        let b = randn(&[40]);
        let (dy, dg) = compare(&[x, b], |t| bias_gelu(&t[0], &t[1]));
        assert!(dy < 1e-5, "values: {dy}");
        assert!(dg < 1e-4, "gradients: {dg}");
    }

    #[test]
    fn projections_match_the_operations_and_their_gradients() {
        let (x, w, b) = (randn(&[6, 24]), randn(&[10, 24]), randn(&[10]));
        let (dy, dg) = compare(&[x.clone(), w.clone(), b], |t| linear(&t[0], &t[1], Some(&t[2])));
        assert!(dy < 1e-5 && dg < 1e-4, "with a bias: values {dy}, gradients {dg}");
        let (dy, dg) = compare(&[x, w], |t| linear(&t[0], &t[1], None));
        assert!(dy < 1e-5 && dg < 1e-4, "without: values {dy}, gradients {dg}");
    }

    #[test]
    fn head_split_and_merge_match_the_operations_and_their_gradients() {
        let x = randn(&[2 * 5, 3 * 4]);
        let (dy, dg) = compare(std::slice::from_ref(&x), |t| split_heads(&t[0], 2, 5, 3));
        assert!(dy == 0.0 && dg == 0.0, "split: values {dy}, gradients {dg}");
        let (dy, dg) = compare(&[x], |t| merge_heads(&split_heads(&t[0], 2, 5, 3)?.sin()?));
        assert!(dy == 0.0 && dg < 1e-6, "merge: values {dy}, gradients {dg}");
    }

    #[test]
    fn bce_matches_the_operations_and_its_gradient() {
        let x = randn(&[5, 28]).affine(4.0, 0.0).unwrap();
        let y = randn(&[5, 28]).ge(0.7).unwrap().to_dtype(DType::F32).unwrap();
        let pw = randn(&[28]).abs().unwrap().affine(3.0, 0.1).unwrap();
        let (dy, dg) = compare(&[x.clone(), y.clone(), pw], |t| {
            bce_with_logits(&t[0], &t[1].detach(), Some(&t[2].detach()))
        });
        assert!(dy < 1e-5 && dg < 1e-6, "weighted: values {dy}, gradients {dg}");
        let (x, y) = (x.flatten_all().unwrap(), y.flatten_all().unwrap());
        let (dy, dg) = compare(&[x, y], |t| bce_with_logits(&t[0], &t[1].detach(), None));
        assert!(dy < 1e-5 && dg < 1e-6, "unweighted: values {dy}, gradients {dg}");
    }

    /// Dropout keeps about 1 − p of the elements, scales them by 1/(1 − p), passes the gradient
    /// through the same mask, and draws a new mask each call but the same after a reseed.
    #[test]
    fn dropout_drops_at_its_rate_and_its_gradient_follows_the_mask() {
        let x = Var::from_tensor(&Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap()).unwrap();
        seed_dropout(42);
        let y = dropout(x.as_tensor(), 0.1).unwrap();
        let ys: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let kept = ys.iter().filter(|&&v| v != 0.0).count();
        assert!(
            (8_800..=9_200).contains(&kept),
            "kept {kept} of 10,000 at p = 0.1"
        );
        assert!(ys.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        let g = y.sum_all().unwrap().backward().unwrap();
        let gs: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(gs, ys, "the gradient of Σy is the mask, scaled");
        let again: Vec<f32> = dropout(x.as_tensor(), 0.1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(again, ys, "each call draws its own mask");
        seed_dropout(42);
        let reseeded: Vec<f32> = dropout(x.as_tensor(), 0.1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(reseeded, ys, "the same seed, the same mask");
    }
}
