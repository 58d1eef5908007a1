//! What the ops' tests share.

use super::switches::without_fused;
use candle_core::{DType, Device, Result, Tensor, Var, D};

/// The largest absolute value of an f32 tensor.
pub(crate) fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// The largest absolute difference of two tensors (the engine's tests share it).
pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Values and gradients (of `Σ y·r` for a random `r`) of `f` on `inputs`, fused and through
/// candle's operations; returns the largest difference of each.
pub(crate) fn compare(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> (f32, f32) {
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

pub(crate) fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}
