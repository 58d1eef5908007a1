//! AdamW's in-place passes, one tensor at a time: a moment ([`adam_moment`]) and the weights'
//! update ([`adam_update`]), without allocating (the trainer's path where [`super::step`]'s
//! all-parameter step does not run). CUDA kernels `adam_moment`/`adam_update` in
//! `kernels/fused.cu`.

use super::ops::cpu::{contiguous_f32, contiguous_f32_mut, f32_inputs};
use super::ops::switches::fused_cuda;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor};
use rayon::prelude::*;

/// AdamW's update from its moments, for [`adam_update`]:
/// `w ← w − lr·(m / bc1 / (√(v / bc2) + eps) + decay·w)`.
#[derive(Debug, Clone, Copy)]
pub struct AdamUpdate {
    pub lr: f32,
    /// Bias corrections `1 − β1^t` and `1 − β2^t`.
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    /// Weight decay (0 for biases and norms).
    pub decay: f32,
}

struct AdamMoment {
    beta: f32,
    square: bool,
}

const ADAM_CHUNK: usize = 1 << 14;

impl InplaceOp2 for AdamMoment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let x = contiguous_f32_mut(s1, l1, "adam moment")?;
        let g = contiguous_f32(s2, l2, "adam gradient")?;
        if x.len() != g.len() {
            candle_core::bail!("adam: {} moments for {} gradients", x.len(), g.len());
        }
        let (beta, rest, square) = (self.beta, 1.0 - self.beta, self.square);
        x.par_chunks_mut(ADAM_CHUNK)
            .zip(g.par_chunks(ADAM_CHUNK))
            .for_each(|(x, g)| {
                for (x, &g) in x.iter_mut().zip(g) {
                    *x = *x * beta + if square { g * g } else { g } * rest;
                }
            });
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        launch::adam_moment(s1, l1, s2, l2, self.beta, self.square)
    }
}

impl InplaceOp3 for AdamUpdate {
    fn name(&self) -> &'static str {
        "adam-update"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let w = contiguous_f32_mut(s1, l1, "adam weights")?;
        let [m, v] = f32_inputs([(s2, l2, "adam m"), (s3, l3, "adam v")])?;
        if w.len() != m.len() || w.len() != v.len() {
            candle_core::bail!("adam: {} weights, {} and {} moments", w.len(), m.len(), v.len());
        }
        let u = *self;
        w.par_chunks_mut(ADAM_CHUNK)
            .zip(m.par_chunks(ADAM_CHUNK).zip(v.par_chunks(ADAM_CHUNK)))
            .for_each(|(w, (m, v))| {
                for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
                    let step = (m / u.bc1) / ((v / u.bc2).sqrt() + u.eps) + u.decay * *w;
                    *w -= u.lr * step;
                }
            });
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &mut candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        launch::adam_update(s1, l1, s2, l2, s3, l3, *self)
    }
}

/// Whether [`adam_moment`] and [`adam_update`] run in place on these tensors: contiguous f32 on
/// the CPU, or on CUDA unless `VIRALCLIP_FUSED_CUDA=0`; else the caller uses candle's operations.
pub fn adam_in_place(ts: &[&Tensor]) -> bool {
    let f32s = ts.iter().all(|t| t.dtype() == DType::F32 && t.is_contiguous());
    let cpu = ts.iter().all(|t| t.device().is_cpu());
    f32s && (cpu || (fused_cuda() && ts.iter().all(|t| t.device().is_cuda())))
}

/// `x ← β·x + (1−β)·g` (of `g²` when `square`), in place: an AdamW moment.
pub fn adam_moment(x: &Tensor, g: &Tensor, beta: f32, square: bool) -> Result<()> {
    x.inplace_op2(g, &AdamMoment { beta, square })
}

/// AdamW's weight update from the moments, in place on `w` (see [`AdamUpdate`]).
pub fn adam_update(w: &Tensor, m: &Tensor, v: &Tensor, u: AdamUpdate) -> Result<()> {
    w.inplace_op3(m, v, &u)
}

#[cfg(feature = "cuda")]
mod launch {
    //! AdamW's launchers.
    use crate::model::ops::cuda::{kernel, span, view};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorage, WrapErr};
    use candle_core::{Layout, Result};

    pub fn adam_moment(
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        beta: f32,
        square: bool,
    ) -> Result<()> {
        let dev = s1.device().clone();
        let func = kernel(s1, "adam_moment")?;
        let g = view::<f32>(s2, l2, "adam gradient")?;
        let (a, b) = span(l1, "adam moment")?;
        let (n, square) = ((b - a) as u32, square as u32);
        let mut x = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let stream = dev.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&mut x).arg(&g).arg(&n).arg(&beta).arg(&square);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn adam_update(
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
        u: super::AdamUpdate,
    ) -> Result<()> {
        let dev = s1.device().clone();
        let func = kernel(s1, "adam_update")?;
        let (m, v) = (view::<f32>(s2, l2, "adam m")?, view::<f32>(s3, l3, "adam v")?);
        let (a, b) = span(l1, "adam weights")?;
        let n = (b - a) as u32;
        let mut w = s1.as_cuda_slice_mut::<f32>()?.slice_mut(a..b);
        let stream = dev.cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(&mut w)
            .arg(&m)
            .arg(&v)
            .arg(&n)
            .arg(&u.lr)
            .arg(&u.bc1)
            .arg(&u.bc2)
            .arg(&u.eps)
            .arg(&u.decay);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok(())
    }
}
