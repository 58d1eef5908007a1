//! Fused element-wise kernels for the scoring path (no backward: [`super::Mode::Inference`] only).
//!
//! The layer profile (`viralclip bench --profile`) shows the matrix products are the small part of
//! a layer; the rest is candle's one-op-at-a-time element-wise passes: the bias add before GELU,
//! GELU itself (on the CPU a scalar f64 `erf` per element, single-threaded: about a quarter of a
//! layer on 2 cores), and bias + residual + layer norm. Each function here does one pass over the
//! data, in parallel over rows, and falls back to the equivalent candle ops where it has no kernel
//! (dtypes other than f32, non-CPU devices), so callers need not care.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows handed to one rayon task at least (keeps the per-task overhead small for short rows).
const MIN_ROWS_PER_TASK: usize = 8;

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), in f32.
#[inline]
pub fn erf(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6)
            * t
            * (-a * a).exp();
    s * y
}

/// GELU with the exact (erf) form: x·Φ(x).
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "bias-gelu x")?;
        let b = contiguous_f32(s2, l2, "bias-gelu bias")?;
        let d = b.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(o, r)| {
                for ((o, &v), &bb) in o.iter_mut().zip(r).zip(b) {
                    *o = gelu_erf(v + bb);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::bias_gelu(s1, l1, s2, l2)
    }
}

/// `gelu_erf(x + bias)`; `x`: (rows, d), `bias`: (d).
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if usable(&[x, bias]) && x.dtype() == bias.dtype() && x.rank() == 2 && x.dim(1)? == bias.elem_count() {
        return x.contiguous()?.apply_op2_no_bwd(&bias.contiguous()?, &BiasGelu);
    }
    x.broadcast_add(bias)?.gelu_erf()
}

struct AddNorm {
    eps: f32,
}

impl CustomOp3 for AddNorm {
    fn name(&self) -> &'static str {
        "bias-residual-layer-norm"
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
        let x = contiguous_f32(s1, l1, "add-norm x")?;
        let r = contiguous_f32(s2, l2, "add-norm residual")?;
        let p = contiguous_f32(s3, l3, "add-norm params")?;
        let d = p.len() / 3;
        let (bias, gamma, beta) = (&p[..d], &p[d..2 * d], &p[2 * d..]);
        if x.len() != r.len() || x.len() % d != 0 {
            candle_core::bail!("add-norm: x {} and residual {} rows of {d}", x.len(), r.len());
        }
        let eps = self.eps;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d).zip(r.par_chunks(d)))
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(o, (xr, rr))| {
                let mut sum = 0f32;
                for i in 0..d {
                    let v = xr[i] + bias[i] + rr[i];
                    o[i] = v;
                    sum += v;
                }
                let mean = sum / d as f32;
                let mut var = 0f32;
                for v in o.iter() {
                    let c = v - mean;
                    var += c * c;
                }
                let inv = 1.0 / (var / d as f32 + eps).sqrt();
                for i in 0..d {
                    o[i] = (o[i] - mean) * inv * gamma[i] + beta[i];
                }
            });
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
        cuda::add_norm(self.eps, s1, l1, s2, l2, s3, l3)
    }
}

/// `layer_norm(x + bias + residual)` with the norm's `gamma`, `beta`; `x`, `residual`: (rows, d);
/// `params`: (3, d) = [bias; gamma; beta] (see [`pack_add_norm`]).
pub fn add_norm(x: &Tensor, residual: &Tensor, params: &Tensor, eps: f64) -> Result<Tensor> {
    let same = x.dtype() == residual.dtype() && x.dtype() == params.dtype();
    if usable(&[x, residual, params]) && same && x.rank() == 2 && x.dims() == residual.dims() {
        return x.contiguous()?.apply_op3_no_bwd(
            &residual.contiguous()?,
            &params.contiguous()?,
            &AddNorm { eps: eps as f32 },
        );
    }
    let p = params.chunk(3, 0)?;
    let (bias, gamma, beta) = (p[0].squeeze(0)?, p[1].squeeze(0)?, p[2].squeeze(0)?);
    let y = (x.broadcast_add(&bias)? + residual)?;
    candle_nn::ops::layer_norm(&y, &gamma, &beta, eps as f32)
}

/// [bias; gamma; beta] as one (3, d) tensor for [`add_norm`].
pub fn pack_add_norm(bias: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    Tensor::stack(&[bias, gamma, beta], 0)
}

/// The kernels here run on CPU f32 tensors, and on CUDA tensors (f32, f16, bf16) when
/// `VIRALCLIP_FUSED_CUDA=1` (opt-in until a GPU run has checked them against the CPU path).
fn usable(ts: &[&Tensor]) -> bool {
    let cpu = ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    cpu || (fused_cuda() && ts.iter().all(|t| t.device().is_cuda()))
}

/// Whether the fused CUDA kernels are switched on (`VIRALCLIP_FUSED_CUDA=1`, `cuda` builds).
pub fn fused_cuda() -> bool {
    #[cfg(feature = "cuda")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| std::env::var("VIRALCLIP_FUSED_CUDA").is_ok_and(|v| v == "1"))
    }
    #[cfg(not(feature = "cuda"))]
    false
}

#[cfg(feature = "cuda")]
mod cuda {
    //! Launchers for `kernels/fused.cu` (PTX built by build.rs).
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result, Shape};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const MODULE: &str = "viralclip_fused";

    fn span(l: &Layout, what: &str) -> Result<(usize, usize)> {
        l.contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))
    }

    fn suffix(dtype: DType) -> Result<&'static str> {
        Ok(match dtype {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            d => candle_core::bail!("fused kernels: no {d:?} kernel"),
        })
    }

    fn bias_gelu_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let ((a1, b1), (a2, b2)) = (span(l1, "bias-gelu x")?, span(l2, "bias-gelu bias")?);
        let x = s1.as_cuda_slice::<T>()?.slice(a1..b1);
        let b = s2.as_cuda_slice::<T>()?.slice(a2..b2);
        let (n, d) = ((b1 - a1) as u32, (b2 - a2) as u32);
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(n as usize)? };
        let func = dev.get_or_load_custom_func(&format!("bias_gelu_{}", suffix(s1.dtype())?), MODULE, PTX)?;
        let mut args = func.builder();
        args.arg(&x);
        args.arg(&b);
        args.arg(&mut y);
        args.arg(&n);
        args.arg(&d);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(LaunchConfig::for_num_elems(n)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
    }

    pub fn bias_gelu(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F32 => bias_gelu_t::<f32>(s1, l1, s2, l2),
            DType::F16 => bias_gelu_t::<half::f16>(s1, l1, s2, l2),
            DType::BF16 => bias_gelu_t::<half::bf16>(s1, l1, s2, l2),
            d => candle_core::bail!("bias-gelu: no {d:?} kernel"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_norm_t<T: CudaDType + DeviceRepr>(
        eps: f32,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (a1, b1) = span(l1, "add-norm x")?;
        let (a2, b2) = span(l2, "add-norm residual")?;
        let (a3, b3) = span(l3, "add-norm params")?;
        let d = (b3 - a3) / 3;
        let n = b1 - a1;
        if n != b2 - a2 || d == 0 || n % d != 0 {
            candle_core::bail!("add-norm: x {n} and residual {} values in rows of {d}", b2 - a2);
        }
        let x = s1.as_cuda_slice::<T>()?.slice(a1..b1);
        let r = s2.as_cuda_slice::<T>()?.slice(a2..b2);
        let p = s3.as_cuda_slice::<T>()?.slice(a3..b3);
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let func = dev.get_or_load_custom_func(&format!("add_norm_{}", suffix(s1.dtype())?), MODULE, PTX)?;
        let d32 = d as u32;
        let mut args = func.builder();
        args.arg(&x);
        args.arg(&r);
        args.arg(&p);
        args.arg(&mut y);
        args.arg(&d32);
        args.arg(&eps);
        // One block per row; a multiple of 32 threads (the kernel reduces with warp shuffles).
        let threads = (d32.div_ceil(32) * 32).clamp(32, 256);
        let cfg = LaunchConfig {
            grid_dim: ((n / d) as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
    }

    pub fn add_norm(
        eps: f32,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F32 => add_norm_t::<f32>(eps, s1, l1, s2, l2, s3, l3),
            DType::F16 => add_norm_t::<half::f16>(eps, s1, l1, s2, l2, s3, l3),
            DType::BF16 => add_norm_t::<half::bf16>(eps, s1, l1, s2, l2, s3, l3),
            d => candle_core::bail!("add-norm: no {d:?} kernel"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn erf_matches_the_reference() {
        // Reference values of erf to 10 digits.
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.1124629160),
            (0.5, 0.5204998778),
            (1.0, 0.8427007929),
            (2.0, 0.9953222650),
            (3.5, 0.9999992569),
            (-1.3, -0.9340079449),
        ] {
            assert!(
                (erf(x) as f64 - want).abs() < 3e-7,
                "erf({x}) = {} want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn fused_kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (37, 48), &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (37, 48), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 48, &dev).unwrap();
        let g = Tensor::randn(1f32, 0.1, 48, &dev).unwrap();
        let be = Tensor::randn(0f32, 0.1, 48, &dev).unwrap();

        let want = x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        let got = bias_gelu(&x, &b).unwrap();
        let diff = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "bias-gelu differs by {diff}");

        let y = (x.broadcast_add(&b).unwrap() + &r).unwrap();
        let want = candle_nn::ops::layer_norm(&y, &g, &be, 1e-12).unwrap();
        let p = pack_add_norm(&b, &g, &be).unwrap();
        let got = add_norm(&x, &r, &p, 1e-12).unwrap();
        let diff = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "add-norm differs by {diff}");

        // The fallback (another dtype) computes the same thing.
        let got16 = add_norm(
            &x.to_dtype(DType::F16).unwrap(),
            &r.to_dtype(DType::F16).unwrap(),
            &p.to_dtype(DType::F16).unwrap(),
            1e-12,
        )
        .unwrap();
        assert_eq!(got16.dtype(), DType::F16);
    }
}
