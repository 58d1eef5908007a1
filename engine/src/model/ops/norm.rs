//! Layer norm. Scoring: bias + residual + norm in one pass ([`add_norm`], f32 params whatever the
//! model's dtype). Training: a differentiable norm ([`layer_norm`]) with its backward pass, and a
//! layer's bias + dropout + residual + norm by hand ([`bias_dropout_add_norm`]) with its backward
//! ([`layer_norm_backward_rows_dropout`]). CPU loops here, CUDA kernels in `kernels/fused.cu`
//! (`add_norm*`, `ln_train_*`, `bias_drop_add_norm_f32`), the same arithmetic.

use super::cpu::{contiguous_f32, cpu_pass, f32_inputs, MIN_ROWS_PER_TASK};
use super::dropout::{dropout_with, Mask};
use super::switches::{fused_scoring, fused_training};
use candle_core::{CpuStorage, CustomOp3, DType, Result, Shape, Tensor, D};
use rayon::prelude::*;

// ---------------------------------------------------------------- scoring

struct AddNorm {
    eps: f32,
}

impl CustomOp3 for AddNorm {
    fn name(&self) -> &'static str {
        "bias-residual-layer-norm"
    }

    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
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
    });

    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::add_norm(self.eps, s1, l1, s2, l2, s3, l3)
    });
}

/// `layer_norm(x + bias + residual)` with the norm's `gamma`, `beta`; `x`, `residual`: (rows, d),
/// in the model's dtype; `params`: (3, d) = [bias; gamma; beta] in f32 whatever `x`'s dtype (see
/// [`pack_add_norm`]). The sum and the norm are computed in f32 and rounded once, to `x`'s dtype.
pub fn add_norm(x: &Tensor, residual: &Tensor, params: &Tensor, eps: f64) -> Result<Tensor> {
    if params.dtype() != DType::F32 {
        candle_core::bail!(
            "add-norm: the params must be f32 (pack_add_norm), got {:?}",
            params.dtype()
        )
    }
    let same_device = x.device().same_device(params.device());
    if fused_scoring(&[x, residual]) && same_device && x.rank() == 2 && x.dims() == residual.dims() {
        return x.contiguous()?.apply_op3_no_bwd(
            &residual.contiguous()?,
            &params.contiguous()?,
            &AddNorm { eps: eps as f32 },
        );
    }
    let p = params.chunk(3, 0)?;
    let (bias, gamma, beta) = (p[0].squeeze(0)?, p[1].squeeze(0)?, p[2].squeeze(0)?);
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let y = (f32(x)?.broadcast_add(&bias)? + f32(residual)?)?;
    candle_nn::ops::layer_norm(&y, &gamma, &beta, eps as f32)?.to_dtype(x.dtype())
}

/// [bias; gamma; beta] as one (3, d) f32 tensor for [`add_norm`] (16-bit vectors are widened:
/// keep f32 originals where there are some, as the scoring path does).
pub fn pack_add_norm(bias: &Tensor, gamma: &Tensor, beta: &Tensor) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    Tensor::stack(&[f32(bias)?, f32(gamma)?, f32(beta)?], 0)
}

// ---------------------------------------------------------------- training

/// Mean and 1/√(var + eps) of a row, as the CUDA kernels compute them (two passes).
fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let h = x.len() as f32;
    let mean = x.iter().sum::<f32>() / h;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
    (mean, 1.0 / (var + eps).sqrt())
}

struct LayerNormOp {
    eps: f32,
}

struct LayerNormBwd {
    eps: f32,
    /// Also `dx` through this dropout (rate, seed), as a third plane.
    drop: Option<(f32, u64)>,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm-train"
    }
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        let [x, g, b] = f32_inputs([(s1, l1, "layer norm x"), (s2, l2, "gain"), (s3, l3, "bias")])?;
        let h = g.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
            let (mean, rstd) = row_stats(x, self.eps);
            for i in 0..h {
                y[i] = (x[i] - mean) * rstd * g[i] + b[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    });
    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::layer_norm(s1, l1, s2, l2, s3, l3, self.eps)
    });
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
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        let [x, g, dy] = f32_inputs([(s1, l1, "layer norm x"), (s2, l2, "gain"), (s3, l3, "dy")])?;
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
    });
    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::layer_norm_bwd(s1, l1, s2, l2, s3, l3, self.eps, self.drop)
    });
}

/// Layer norm over the last dimension with gain `g` and bias `b`, differentiable in all three.
pub fn layer_norm(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if fused_training(&[x, g, b]) && g.rank() == 1 && x.dim(D::Minus1)? == g.elem_count() {
        return x.contiguous()?.apply_op3(
            &g.contiguous()?,
            &b.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        );
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.to_dtype(dtype)?.broadcast_mul(g)?.broadcast_add(b)
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
    if !fits || !fused_training(&[x, bias, res, g, beta]) {
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
            launch::bias_dropout_add_norm(&inputs, h, eps, p, seed)?
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

#[cfg(feature = "cuda")]
mod launch {
    //! The norms' launchers.
    use crate::model::ops::cuda::{
        by_dtype, cuda_pass, function, kernel, launch_new, per_row, per_warp_row, view, views,
    };
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result, Shape};

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
        let x = view::<T>(s1, l1, "add-norm x")?;
        let r = view::<T>(s2, l2, "add-norm residual")?;
        let p = view::<f32>(s3, l3, "add-norm params")?;
        let (n, d) = (x.len(), p.len() / 3);
        if n != r.len() || d == 0 || n % d != 0 {
            candle_core::bail!("add-norm: x {n} and residual {} values in rows of {d}", r.len());
        }
        // The vectorised warp-per-row kernel (the default, `switches::ln_vec`), only where its 16-byte
        // loads are aligned (the allocations are; the views' offsets must keep them so). The f32
        // params take per_vec / 4 loads of 4 per vector of T.
        let size = std::mem::size_of::<T>();
        let per_vec = 16 / size;
        let at16 = |l: &Layout, size: usize| {
            l.contiguous_offsets()
                .is_some_and(|(a, _)| (a * size).is_multiple_of(16))
        };
        let aligned = at16(l1, size) && at16(l2, size) && at16(l3, 4);
        let vec = crate::model::ops::switches::ln_vec() && aligned && d % per_vec == 0 && d / per_vec <= 128;
        let name = if vec { "add_norm_vec" } else { "add_norm" };
        let (rows, d32) = ((n / d) as u32, d as u32);
        let cfg = if vec {
            per_warp_row(rows)
        } else {
            // One block per row; a multiple of 32 threads (the kernel reduces with warp shuffles).
            LaunchConfig {
                grid_dim: (rows, 1, 1),
                block_dim: ((d32.div_ceil(32) * 32).clamp(32, 256), 1, 1),
                shared_mem_bytes: 0,
            }
        };
        let y = launch_new!(s1, kernel(s1, name)?, T, n, cfg; [&x, &r, &p], [&rows, &d32, &eps]);
        Ok((y, l1.shape().clone()))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_norm(
        eps: f32,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, add_norm_t(eps, s1, l1, s2, l2, s3, l3))
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
        let [x, g, b] = views([(s1, l1, "layer norm x"), (s2, l2, "gain"), (s3, l3, "bias")])?;
        let (h, f) = (g.len(), function(s1.device(), "ln_train_fwd_f32")?);
        let h32 = h as u32;
        let y = launch_new!(s1, f, f32, x.len(), per_row(x.len() / h); [&x, &g, &b], [&h32, &eps]);
        Ok((y, l1.shape().clone()))
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
        let [x, g, dy] = views([(s1, l1, "layer norm x"), (s2, l2, "gain"), (s3, l3, "dy")])?;
        let h = g.len();
        let rows = x.len() / h;
        let planes = 2 + drop.is_some() as usize;
        let (n, cfg, (rows32, h32)) = (planes * x.len(), per_row(rows), (rows as u32, h as u32));
        let out = match drop {
            Some((p, seed)) => {
                let f = function(s1.device(), "ln_train_bwd_drop_f32")?;
                launch_new!(s1, f, f32, n, cfg; [&x, &g, &dy], [&rows32, &h32, &eps, &p, &seed])
            }
            None => {
                let f = function(s1.device(), "ln_train_bwd_f32")?;
                launch_new!(s1, f, f32, n, cfg; [&x, &g, &dy], [&rows32, &h32, &eps])
            }
        };
        Ok((out, Shape::from((planes, rows, h))))
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
            let f = function(dev, "bias_drop_add_norm_f32")?;
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
    use crate::model::ops::ffn::bias_gelu;
    use crate::model::ops::switches::without_fused;
    use crate::model::ops::testing::{compare, max_diff, randn};
    use candle_core::Device;

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

    #[test]
    fn layer_norm_matches_the_operations_and_their_gradients() {
        let x = randn(&[3, 5, 48]).affine(3.0, 1.0).unwrap();
        let (g, b) = (randn(&[48]).affine(0.2, 1.0).unwrap(), randn(&[48]));
        let (dy, dg) = compare(&[x, g, b], |t| layer_norm(&t[0], &t[1], &t[2], 1e-12));
        assert!(dy < 1e-5, "values: {dy}");
        assert!(dg < 1e-4, "gradients: {dg}");
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
        let diff = max_diff(&want, &got);
        assert!(diff < 1e-5, "bias-gelu differs by {diff}");

        let y = (x.broadcast_add(&b).unwrap() + &r).unwrap();
        let want = candle_nn::ops::layer_norm(&y, &g, &be, 1e-12).unwrap();
        let p = pack_add_norm(&b, &g, &be).unwrap();
        let got = add_norm(&x, &r, &p, 1e-12).unwrap();
        let diff = max_diff(&want, &got);
        assert!(diff < 1e-4, "add-norm differs by {diff}");

        // The fallback (16-bit rows, f32 params) computes the same in f32 and rounds once.
        for dtype in [DType::F16, DType::BF16] {
            let (x16, r16) = (x.to_dtype(dtype).unwrap(), r.to_dtype(dtype).unwrap());
            let got16 = add_norm(&x16, &r16, &p, 1e-12).unwrap();
            assert_eq!(got16.dtype(), dtype);
            let y = (x16.to_dtype(DType::F32).unwrap().broadcast_add(&b).unwrap()
                + r16.to_dtype(DType::F32).unwrap())
            .unwrap();
            let want = candle_nn::ops::layer_norm(&y, &g, &be, 1e-12)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let diff = max_diff(&f32(&want), &f32(&got16));
            assert!(diff == 0.0, "add-norm {dtype:?} differs by {diff}");
        }
        // 16-bit params are a caller's mistake, said so (pack_add_norm widens them).
        let err = add_norm(&x, &r, &p.to_dtype(DType::BF16).unwrap(), 1e-12).unwrap_err();
        assert!(err.to_string().contains("must be f32"), "{err}");
        let packed = pack_add_norm(
            &b.to_dtype(DType::BF16).unwrap(),
            &g.to_dtype(DType::BF16).unwrap(),
            &be.to_dtype(DType::BF16).unwrap(),
        )
        .unwrap();
        assert_eq!(packed.dtype(), DType::F32);
    }
}
