//! Softmax over attention scores. Scoring: mask + softmax in one pass ([`mask_softmax`]).
//! Training: scale + mask + softmax, differentiable ([`scaled_masked_softmax`]), and its backward
//! pass by hand ([`softmax_backward`]). CPU loops here, CUDA kernels in `kernels/fused.cu`
//! (`mask_softmax_*`, `softmax_train_*`).

use super::cpu::{contiguous_f32, f32_inputs, MIN_ROWS_PER_TASK};
use super::math::exp;
use super::switches::{fused_scoring, fused_training};
use candle_core::{CpuStorage, CustomOp2, Result, Tensor, D};
use rayon::prelude::*;

// ---------------------------------------------------------------- scoring

struct MaskSoftmax;

impl CustomOp2 for MaskSoftmax {
    fn name(&self) -> &'static str {
        "mask-softmax"
    }

    cpu_fwd!(self, s1, l1, s2, l2 => {
        let s = contiguous_f32(s1, l1, "mask-softmax scores")?;
        let m = contiguous_f32(s2, l2, "mask-softmax mask")?;
        let dims = l1.dims();
        let t = dims[dims.len() - 1];
        let b = dims[0];
        if m.len() != b * t {
            candle_core::bail!("mask-softmax: mask of {} for {b} texts of {t}", m.len());
        }
        let per_text = s.len() / (b * t).max(1);
        let mut out = vec![0f32; s.len()];
        out.par_chunks_mut(t)
            .zip(s.par_chunks(t))
            .enumerate()
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(row, (o, sr))| {
                let mr = &m[(row / per_text) * t..][..t];
                let mut mx = f32::NEG_INFINITY;
                for (v, &a) in sr.iter().zip(mr) {
                    mx = mx.max(v + a);
                }
                let mut sum = 0f32;
                for ((o, v), &a) in o.iter_mut().zip(sr).zip(mr) {
                    *o = exp(v + a - mx);
                }
                for o in o.iter() {
                    sum += *o;
                }
                let inv = 1.0 / sum;
                for o in o.iter_mut() {
                    *o *= inv;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    });

    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::mask_softmax(s1, l1, s2, l2)
    });
}

/// softmax(scores + mask) over the last dimension: `scores` (b, heads, queries, t), `mask` the
/// additive mask (b, t) (0 where attended, a large negative number where padded).
pub fn mask_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, _, _, t) = scores.dims4()?;
    if fused_scoring(&[scores, mask]) && mask.dims() == [b, t] {
        return scores
            .contiguous()?
            .apply_op2_no_bwd(&mask.contiguous()?, &MaskSoftmax);
    }
    candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask.reshape((b, 1, 1, t))?)?)
}

// ---------------------------------------------------------------- training

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
    cpu_fwd!(self, s1, l1, s2, l2 => {
        let [s, m] = f32_inputs([(s1, l1, "softmax scores"), (s2, l2, "softmax mask")])?;
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
                    p[i] = exp(s[i] * self.scale + m[i] - mx);
                    sum += p[i];
                }
                let inv = 1.0 / sum;
                p.iter_mut().for_each(|p| *p *= inv);
            });
        Ok((CpuStorage::F32(p), l1.shape().clone()))
    });
    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::softmax(s1, l1, s2, l2, self.scale)
    });
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
    cpu_fwd!(self, s1, l1, s2, l2 => {
        let [p, dp] = f32_inputs([(s1, l1, "softmax p"), (s2, l2, "softmax dp")])?;
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
    });
    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::softmax_bwd(s1, l1, s2, l2, self.scale)
    });
}

/// `softmax(scale · scores + mask)` over the last dimension, differentiable in `scores`:
/// `scores` (b, heads, queries, t), `mask` additive (b, 1, 1, t).
pub fn scaled_masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, _, _, t) = scores.dims4()?;
    if fused_training(&[scores, mask]) && mask.elem_count() == b * t {
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

/// [`scaled_masked_softmax`]'s backward pass: the scores' gradient from its output `p` and the
/// output's gradient.
pub fn softmax_backward(p: &Tensor, dp: &Tensor, scale: f64) -> Result<Tensor> {
    p.apply_op2_no_bwd(&dp.contiguous()?, &SoftmaxBwd { scale: scale as f32 })
}

#[cfg(feature = "cuda")]
mod launch {
    //! The softmaxes' launchers.
    use crate::model::ops::cuda::{
        by_dtype, function, kernel, launch_new, per_row, per_warp_row, view, views,
    };
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
    use candle_core::cuda_backend::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result, Shape};

    fn mask_softmax_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (s, m) = (
            view::<T>(s1, l1, "mask-softmax scores")?,
            view::<T>(s2, l2, "mask-softmax mask")?,
        );
        let dims = l1.dims();
        let (b, t, n) = (dims[0], dims[dims.len() - 1], s.len());
        if m.len() != b * t {
            candle_core::bail!("mask-softmax: mask of {} for {b} texts of {t}", m.len());
        }
        let (rows, t32, per_text) = ((n / t) as u32, t as u32, (n / (b * t)) as u32);
        let f = kernel(s1, "mask_softmax")?;
        let y = launch_new!(s1, f, T, n, per_warp_row(rows); [&s, &m], [&rows, &t32, &per_text]);
        Ok((y, l1.shape().clone()))
    }

    pub fn mask_softmax(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, mask_softmax_t(s1, l1, s2, l2))
    }

    pub fn softmax(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let [s, m] = views([(s1, l1, "softmax scores"), (s2, l2, "softmax mask")])?;
        let dims = l1.dims();
        let (b, t) = (dims[0], dims[dims.len() - 1]);
        let rows = s.len() / t;
        let (t32, per_text) = (t as u32, (rows / b) as u32);
        let f = function(s1.device(), "softmax_train_fwd_f32")?;
        let p = launch_new!(s1, f, f32, s.len(), per_row(rows); [&s, &m], [&t32, &per_text, &scale]);
        Ok((p, l1.shape().clone()))
    }

    pub fn softmax_bwd(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        scale: f32,
    ) -> Result<(CudaStorage, Shape)> {
        let [p, dp] = views([(s1, l1, "softmax p"), (s2, l2, "softmax dp")])?;
        let t = l1.dims()[l1.dims().len() - 1];
        let (f, t32) = (function(s1.device(), "softmax_train_bwd_f32")?, t as u32);
        let ds = launch_new!(s1, f, f32, p.len(), per_row(p.len() / t); [&p, &dp], [&t32, &scale]);
        Ok((ds, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::testing::{compare, randn};
    use candle_core::Device;

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
}
