//! Binary cross-entropy with logits (PyTorch's `BCEWithLogitsLoss(pos_weight=…)`),
//! differentiable ([`bce_with_logits`]) and its gradient by hand ([`bce_with_logits_grad`]). CPU
//! loop here, CUDA kernels `bce_fwd_f32`/`bce_grad_f32` in `kernels/fused.cu`.

use super::cpu::f32_inputs;
use super::math::exp;
use super::switches::fused_training;
use candle_core::{CpuStorage, CustomOp3, Result, Tensor, D};

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
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        let [x, y, pw] = f32_inputs([(s1, l1, "bce x"), (s2, l2, "bce y"), (s3, l3, "bce weight")])?;
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
                    (1.0 - y[i]) - c / (1.0 + exp(xi))
                } else {
                    let sp = (-xi).max(0.0) + exp(-xi.abs()).ln_1p();
                    (1.0 - y[i]) * xi + c * sp
                }
            })
            .collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    });
    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        launch::bce(s1, l1, s2, l2, s3, l3, self.weighted, self.grad)
    });
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
    if fused_training(&args) && cols_ok && x.shape() == y.shape() {
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

/// The gradient of [`bce_with_logits`] (the mean) in its logits `x`, for a backward pass by hand:
/// `((1 − y) − c·σ(−x)) / n`, element by element (see [`bce_with_logits`] for `c`). Where the
/// fused passes run ([`super::switches::fused_training`]).
pub fn bce_with_logits_grad(x: &Tensor, y: &Tensor, pos_weight: Option<&Tensor>) -> Result<Tensor> {
    let args: Vec<&Tensor> = [Some(x), Some(y), pos_weight].into_iter().flatten().collect();
    if !fused_training(&args) || x.shape() != y.shape() {
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

#[cfg(feature = "cuda")]
mod launch {
    //! The loss's launcher.
    use crate::model::ops::cuda::{function, launch_new, views};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{Layout, Result, Shape};

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
        let [x, y, pw] = views([(s1, l1, "bce x"), (s2, l2, "bce y"), (s3, l3, "bce weight")])?;
        let name = if grad { "bce_grad_f32" } else { "bce_fwd_f32" };
        let (n, cols, w) = (
            x.len() as u32,
            if weighted { pw.len() as u32 } else { 1 },
            weighted as u32,
        );
        let f = function(s1.device(), name)?;
        let out =
            launch_new!(s1, f, f32, x.len(), LaunchConfig::for_num_elems(n); [&x, &y, &pw], [&n, &cols, &w]);
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::testing::{compare, randn};
    use candle_core::DType;

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
}
