//! The feed-forward layer's activation and the heads' hidden layer. Scoring: bias + GELU in one
//! pass ([`bias_gelu`]), or the GEMM with cuBLASLt's bias (+ GELU) epilogue on CUDA
//! ([`gemm_gelu`], [`gemm_bias`]). Training: bias + GELU differentiable ([`bias_gelu_train`]) with
//! its backward by hand ([`gelu_backward`]), and a head's bias + ReLU + dropout
//! ([`bias_relu_dropout`]) with its backward. CPU loops here, CUDA kernels in `kernels/fused.cu`
//! (`bias_gelu_*`, `gelu_train_bwd_f32`, `bias_relu_drop_f32`).

use super::cpu::{contiguous_f32, f32_inputs, MIN_ROWS_PER_TASK};
use super::dropout::{dropout_with, Mask};
use super::math::{gelu_erf, gelu_grad};
#[cfg(feature = "cuda")]
use super::switches::{fused_cuda, gemm_gelu_on};
use super::switches::{fused_scoring, fused_training};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Result, Tensor, D};
use rayon::prelude::*;

// ---------------------------------------------------------------- scoring

struct BiasGelu;

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    cpu_fwd!(self, s1, l1, s2, l2 => {
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
    });

    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::bias_gelu(s1, l1, s2, l2)
    });
}

/// `gelu_erf(x + bias)`; `x`: (rows, d), `bias`: (d).
pub fn bias_gelu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused_scoring(&[x, bias]) && x.rank() == 2 && x.dim(1)? == bias.elem_count() {
        return x.contiguous()?.apply_op2_no_bwd(&bias.contiguous()?, &BiasGelu);
    }
    x.broadcast_add(bias)?.gelu_erf()
}

/// `gelu(x · wᵀ + b)` as one cuBLASLt GEMM with its bias + GELU epilogue (see [`gemm_gelu`]), or
/// without the GELU, `x · wᵀ + b` with the bias epilogue alone ([`gemm_bias`]).
struct GemmGelu {
    gelu: bool,
}

impl CustomOp3 for GemmGelu {
    fn name(&self) -> &'static str {
        if self.gelu {
            "gemm-gelu"
        } else {
            "gemm-bias"
        }
    }

    cpu_fwd!(self, _s1, _l1, _s2, _l2, _s3, _l3 => {
        candle_core::bail!("{}: a cuBLASLt epilogue, CUDA only", self.name())
    });

    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::gemm_gelu(self.gelu, s1, l1, s2, l2, s3, l3)
    });
}

/// Whether the feed-forward layer's first GEMM takes its bias and GELU in cuBLASLt's epilogue
/// ([`gemm_gelu`]): CUDA with the fused kernels on, bf16 or f16, unless `VIRALCLIP_GEMM_GELU=0`
/// (`viralclip bench` prints `gemm_gelu_check`; on an H200, 289 µs for the GEMM with its
/// epilogue against 245 + 155 for the GEMM and the bias + GELU pass, at 256×128 on the
/// ruBert-base shape).
pub fn gemm_gelu_fits(x: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        gemm_gelu_on()
            && fused_cuda()
            && x.device().is_cuda()
            && matches!(x.dtype(), candle_core::DType::BF16 | candle_core::DType::F16)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = x;
        false
    }
}

/// `gelu(x · wᵀ + b)` for `x` (m, k), `w` (n, k), `b` (n): one cuBLASLt GEMM whose epilogue adds
/// the bias and applies GELU as it writes, so the (m, n) product is written once and never read
/// back. cuBLASLt's GELU is the tanh approximation, within 5e-4 of erf's: below the rounding of
/// bf16 and f16, the only types it runs for ([`gemm_gelu_fits`]); f32 keeps erf.
pub fn gemm_gelu(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &GemmGelu { gelu: true })
}

/// `x · wᵀ + b` for `x` (m, k), `w` (n, k), `b` (n) as one cuBLASLt GEMM with its bias epilogue
/// (CUDA, bf16 or f16): the packed QKV projection of [`packed_attention`], whose products then
/// read it as written.
pub fn gemm_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3_no_bwd(&w.contiguous()?, &b.contiguous()?, &GemmGelu { gelu: false })
}

// ---------------------------------------------------------------- training

struct BiasGeluTrain;

struct GeluBwd;

impl CustomOp2 for BiasGeluTrain {
    fn name(&self) -> &'static str {
        "bias-gelu-train"
    }
    cpu_fwd!(self, s1, l1, s2, l2 => {
        let [x, b] = f32_inputs([(s1, l1, "bias-gelu x"), (s2, l2, "bias-gelu bias")])?;
        let d = b.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            for i in 0..d {
                y[i] = gelu_erf(x[i] + b[i]);
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    });
    cuda_fwd!(self, s1, l1, s2, l2 => {
        // The scoring path's kernel (checked on a GPU against the CPU in every precision).
        launch::bias_gelu(s1, l1, s2, l2)
    });
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

impl CustomOp3 for GeluBwd {
    fn name(&self) -> &'static str {
        "bias-gelu-train-bwd"
    }
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        let [x, b, dy] = f32_inputs([(s1, l1, "gelu x"), (s2, l2, "gelu bias"), (s3, l3, "gelu dy")])?;
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
    });
    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::gelu_bwd(s1, l1, s2, l2, s3, l3)
    });
}

/// `gelu_erf(x + bias)` over the last dimension, differentiable in both.
pub fn bias_gelu_train(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if fused_training(&[x, bias]) && bias.rank() == 1 && x.dim(D::Minus1)? == bias.elem_count() {
        return x.contiguous()?.apply_op2(&bias.contiguous()?, BiasGeluTrain);
    }
    x.broadcast_add(bias)?.gelu_erf()
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
    cpu_fwd!(self, s1, l1, s2, l2 => {
        let [x, b] = f32_inputs([(s1, l1, "relu x"), (s2, l2, "relu bias")])?;
        Ok((CpuStorage::F32(self.cpu(x, b, None)), l1.shape().clone()))
    });
    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::bias_relu_drop(s1, l1, s2, l2, None, self.p, self.seed)
    });
}

impl CustomOp3 for BiasReluDrop {
    fn name(&self) -> &'static str {
        "bias-relu-dropout-bwd"
    }
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        let [x, b, dy] = f32_inputs([(s1, l1, "relu x"), (s2, l2, "relu bias"), (s3, l3, "relu dy")])?;
        Ok((CpuStorage::F32(self.cpu(x, b, Some(dy))), l1.shape().clone()))
    });
    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::bias_relu_drop(s1, l1, s2, l2, Some((s3, l3)), self.p, self.seed)
    });
}

/// `dropout(relu(x + bias))` over rows of the bias's length (dropout as [`dropout_with`]): a
/// head's hidden layer after its product, in one pass (one launch on CUDA where it took three),
/// for a forward pass by hand. The passes one by one where the fused ones do not run.
pub fn bias_relu_dropout(x: &Tensor, bias: &Tensor, p: f32, seed: Option<u64>) -> Result<Tensor> {
    if fused_training(&[x, bias]) && bias.rank() == 1 && x.dim(D::Minus1)? == bias.elem_count() {
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
    if fits && fused_training(&[x, bias, dy]) {
        return x.contiguous()?.apply_op3_no_bwd(
            &bias.contiguous()?,
            &dy.contiguous()?,
            &BiasReluDrop { p, seed },
        );
    }
    let z = x.broadcast_add(bias)?;
    dropout_with(dy, p, seed)? * z.gt(0f32)?.to_dtype(z.dtype())?
}

#[cfg(feature = "cuda")]
mod launch {
    //! The activations' launchers and the GEMM with its epilogue.
    use crate::model::ops::cuda::{
        blas_lt, by_dtype, by_half, function, kernel, launch_new, per_vector, view, views,
    };
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig};
    use candle_core::cuda_backend::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result, Shape};

    fn bias_gelu_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (x, b) = (
            view::<T>(s1, l1, "bias-gelu x")?,
            view::<T>(s2, l2, "bias-gelu bias")?,
        );
        let (n, d) = (x.len() as u32, b.len() as u32);
        let f = kernel(s1, "bias_gelu")?;
        let y = launch_new!(s1, f, T, x.len(), per_vector(x.len()); [&x, &b], [&n, &d]);
        Ok((y, l1.shape().clone()))
    }

    pub fn bias_gelu(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, bias_gelu_t(s1, l1, s2, l2))
    }

    fn gemm_gelu_t<T>(
        gelu: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)>
    where
        T: CudaDType + DeviceRepr,
        candle_core::cuda_backend::cudarc::cublaslt::CudaBlasLT:
            candle_core::cuda_backend::cudarc::cublaslt::Matmul<T>,
    {
        use candle_core::cuda_backend::cudarc::cublaslt::{Activation, Matmul, MatmulConfig};
        let dev = s1.device().clone();
        let (m, k, n) = match (l1.dims(), l2.dims(), l3.dims()) {
            (&[m, k], &[n, k2], &[nb]) if k == k2 && nb == n => (m, k, n),
            (x, w, b) => candle_core::bail!("gemm-gelu: x {x:?}, w {w:?}, b {b:?}"),
        };
        let (x, w, b) = (
            view::<T>(s1, l1, "gemm-gelu x")?,
            view::<T>(s2, l2, "gemm-gelu w")?,
            view::<T>(s3, l3, "gemm-gelu b")?,
        );
        // SAFETY: the GEMM writes all m·n elements (beta 0: nothing is read from y).
        let mut y = unsafe { dev.alloc::<T>(m * n)? };
        // Column-major: yᵀ (n × m) = w (n × k, stored as k × n: transposed) · xᵀ (k × m); the
        // epilogue's bias runs along yᵀ's rows, the output features.
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: m as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let lt = blas_lt(&dev)?;
        // SAFETY: the shapes were checked above; the views and y hold exactly these matrices.
        let act = gelu.then_some(Activation::Gelu);
        unsafe { lt.matmul(cfg, &w, &x, &mut y, Some(&b), act.as_ref()) }
            .map_err(|e| candle_core::Error::Msg(format!("gemm-gelu: cublasLt: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((m, n))))
    }

    /// `x · wᵀ + b` through cuBLASLt's bias epilogue, then GELU in it too where `gelu`.
    pub fn gemm_gelu(
        gelu: bool,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_half!(s1, "gemm-gelu", gemm_gelu_t(gelu, s1, l1, s2, l2, s3, l3))
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
        let [x, b, dy] = views([(s1, l1, "gelu x"), (s2, l2, "gelu bias"), (s3, l3, "gelu dy")])?;
        let (n, d) = (x.len() as u32, b.len() as u32);
        let f = function(s1.device(), "gelu_train_bwd_f32")?;
        let dz = launch_new!(s1, f, f32, x.len(), LaunchConfig::for_num_elems(n); [&x, &b, &dy], [&n, &d]);
        Ok((dz, l1.shape().clone()))
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
        let [x, b] = views([(s1, l1, "relu x"), (s2, l2, "relu bias")])?;
        let dy = dy.map(|(s, l)| view::<f32>(s, l, "relu dy")).transpose()?;
        let f = function(s1.device(), "bias_relu_drop_f32")?;
        let (n, d) = (x.len() as u32, b.len() as u32);
        let (drop, seed) = (seed.is_some() as u32, seed.unwrap_or(0));
        let (cfg, null) = (LaunchConfig::for_num_elems(n), 0u64);
        // The forward pass has no `dy`: a null pointer in its place.
        let out = match &dy {
            Some(dy) => launch_new!(s1, f, f32, x.len(), cfg; [&x, &b, dy], [&n, &d, &p, &seed, &drop]),
            None => launch_new!(s1, f, f32, x.len(), cfg; [&x, &b, &null], [&n, &d, &p, &seed, &drop]),
        };
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::switches::without_fused;
    use crate::model::ops::testing::{compare, max_diff, randn};
    use candle_core::{DType, Var};

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
    fn bias_gelu_matches_the_operations_and_their_gradients() {
        let x = (randn(&[2, 6, 40]) * 2.0).unwrap();
        let b = randn(&[40]);
        let (dy, dg) = compare(&[x, b], |t| bias_gelu(&t[0], &t[1]));
        assert!(dy < 1e-5, "values: {dy}");
        assert!(dg < 1e-4, "gradients: {dg}");
    }
}
