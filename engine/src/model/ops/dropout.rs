//! Dropout, the same mask wherever it is applied: alone and differentiable ([`dropout`]), with a
//! given seed for a pass by hand ([`dropout_with`]), or inside a fused pass ([`Mask`]). Its mask
//! depends only on a seed from this thread's sequence ([`seed_dropout`]) and each element's
//! position (the CUDA kernels' `dropout_at` computes the same).

use super::cpu::contiguous_f32;
use super::switches::{dropout_off, fused_training};
use candle_core::{CpuStorage, CustomOp1, Result, Tensor};
use rayon::prelude::*;
use std::cell::Cell;

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
pub(crate) struct Mask {
    p: f32,
    keep: f32,
    seed: u64,
}

impl Mask {
    pub(crate) fn new(p: f32, seed: u64) -> Self {
        Mask {
            p,
            keep: 1.0 / (1.0 - p),
            seed,
        }
    }

    /// Element `i` of value `v`: `v / (1 − p)` where kept, 0 where dropped.
    pub(crate) fn apply(&self, v: f32, i: usize) -> f32 {
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
    cpu_fwd!(self, s1, l1 => {
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
    });
    cuda_fwd!(self, s1, l1 => {
        launch::dropout(s1, l1, self.p, self.seed)
    });
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
    if dropout_off() {
        return Ok(x.clone());
    }
    if fused_training(&[x]) {
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

/// A dropout mask's seed for a pass by hand, `None` when dropout is off (rate 0, or
/// [`without_dropout`]); the same sequence [`dropout`] draws from.
pub fn dropout_seed(p: f32) -> Option<u64> {
    (p > 0.0 && !dropout_off()).then(next_seed)
}

/// Dropout with a given seed (the identity for `None`): forward, and backward on a gradient.
pub fn dropout_with(x: &Tensor, p: f32, seed: Option<u64>) -> Result<Tensor> {
    match seed {
        Some(seed) => x.contiguous()?.apply_op1_no_bwd(&Dropout { p, seed }),
        None => Ok(x.clone()),
    }
}

#[cfg(feature = "cuda")]
mod launch {
    //! The dropout's launcher.
    use crate::model::ops::cuda::{function, launch_new, view};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    use candle_core::cuda_backend::CudaStorage;
    use candle_core::{Layout, Result, Shape};

    pub fn dropout(s1: &CudaStorage, l1: &Layout, p: f32, seed: u64) -> Result<(CudaStorage, Shape)> {
        let x = view::<f32>(s1, l1, "dropout x")?;
        let (f, n) = (function(s1.device(), "dropout_f32")?, x.len() as u32);
        let y = launch_new!(s1, f, f32, x.len(), LaunchConfig::for_num_elems(n); [&x], [&n, &p, &seed]);
        Ok((y, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

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
