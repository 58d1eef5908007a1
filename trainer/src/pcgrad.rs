//! PCGrad (Yu et al., 2020, "Gradient Surgery for Multi-Task Learning") for two tasks, done right:
//! per-task gradients of the shared parameters; when they conflict (negative dot product) each is
//! projected onto the normal plane of the other's original gradient; the projections are summed.
//! With two tasks the paper's random task order changes nothing. Works on whole parameter lists
//! (the gradient is one vector across all shared tensors) and stays on the tensors' device.

use candle_core::{Result, Tensor};

/// What happened in one PCGrad step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surgery {
    /// Cosine similarity of the two task gradients before projection.
    pub cosine: f64,
    /// Whether they conflicted (and were projected).
    pub conflict: bool,
}

#[cfg(test)]
fn dot(a: &[Tensor], b: &[Tensor]) -> Result<f64> {
    let mut s = 0.0;
    for (x, y) in a.iter().zip(b) {
        s += (x * y)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(s)
}

/// Sum over tensors of `sum(x * y)`, left on the device as a scalar tensor.
fn dot_on_device(a: &[Tensor], b: &[Tensor]) -> Result<Tensor> {
    let parts = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x * y)?.sum_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&parts, 0)?.sum_all()
}

/// Combines two tasks' gradients of the same shared parameters. The three dot products are
/// reduced on the gradients' device; only those three numbers travel to the host.
pub fn combine(g1: &[Tensor], g2: &[Tensor]) -> Result<(Vec<Tensor>, Surgery)> {
    assert_eq!(g1.len(), g2.len());
    if g1.is_empty() {
        return Ok((
            Vec::new(),
            Surgery {
                cosine: 0.0,
                conflict: false,
            },
        ));
    }
    let dots = Tensor::stack(
        &[
            dot_on_device(g1, g2)?,
            dot_on_device(g1, g1)?,
            dot_on_device(g2, g2)?,
        ],
        0,
    )?
    .to_dtype(candle_core::DType::F64)?
    .to_vec1::<f64>()?;
    let (d, n1, n2) = (dots[0], dots[1], dots[2]);
    let cosine = if n1 > 0.0 && n2 > 0.0 {
        d / (n1.sqrt() * n2.sqrt())
    } else {
        0.0
    };
    if d >= 0.0 || n1 == 0.0 || n2 == 0.0 {
        let sum = g1
            .iter()
            .zip(g2)
            .map(|(a, b)| a + b)
            .collect::<Result<Vec<_>>>()?;
        return Ok((
            sum,
            Surgery {
                cosine,
                conflict: false,
            },
        ));
    }
    // g1' = g1 - (g1·g2 / |g2|²) g2 ; g2' = g2 - (g2·g1 / |g1|²) g1 ; result g1' + g2'.
    let (c1, c2) = (d / n2, d / n1);
    let out = g1
        .iter()
        .zip(g2)
        .map(|(a, b)| {
            let p1 = (a - (b * c1)?)?;
            let p2 = (b - (a * c2)?)?;
            p1 + p2
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((
        out,
        Surgery {
            cosine,
            conflict: true,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }
    fn v(x: &Tensor) -> Vec<f32> {
        x.to_vec1().unwrap()
    }

    #[test]
    fn conflicting_gradients_are_projected() {
        // Split across two "parameters" to check it treats them as one vector.
        let g1 = [t(&[1.0]), t(&[0.0])];
        let g2 = [t(&[-1.0]), t(&[1.0])];
        let (out, s) = combine(&g1, &g2).unwrap();
        assert!(s.conflict && s.cosine < 0.0);
        // g1' = (0.5, 0.5) ⟂ g2 ; g2' = (0, 1) ⟂ g1 ; sum (0.5, 1.5).
        assert_eq!((v(&out[0]), v(&out[1])), (vec![0.5], vec![1.5]));
    }

    #[test]
    fn projections_are_orthogonal_to_the_other_task() {
        let g1 = [t(&[3.0, -1.0, 2.0])];
        let g2 = [t(&[-2.0, 0.5, 1.0])];
        let d = dot(&g1, &g2).unwrap();
        assert!(d < 0.0);
        let p1 = (&g1[0] - (&g2[0] * (d / dot(&g2, &g2).unwrap())).unwrap()).unwrap();
        assert!(dot(std::slice::from_ref(&p1), &g2).unwrap().abs() < 1e-5);
        let (out, _) = combine(&g1, &g2).unwrap();
        let p2 = (&out[0] - &p1).unwrap();
        assert!(dot(&[p2], &g1).unwrap().abs() < 1e-5);
    }

    #[test]
    fn agreeing_gradients_are_summed_unchanged() {
        let g1 = [t(&[1.0, 2.0])];
        let g2 = [t(&[0.5, 0.1])];
        let (out, s) = combine(&g1, &g2).unwrap();
        assert!(!s.conflict);
        assert_eq!(v(&out[0]), vec![1.5, 2.1]);
    }
}
