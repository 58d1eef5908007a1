//! Projections for training as single graph nodes ([`linear`], any backend: candle's own GEMM,
//! broadcast add and copy, no kernel of ours) and the bias and norm gradients' column sums in
//! one pass ([`column_sums`]; CUDA kernel `col_sums_f32`).

use super::cpu::cpu_pass;
use super::switches::fused_training;
use candle_core::backend::BackendStorage;
use candle_core::{CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
    cpu_fwd!(self, s1, l1, s2, l2 => {
        project(s1, l1, s2, l2, None)
    });
    cuda_fwd!(self, s1, l1, s2, l2 => {
        project(s1, l1, s2, l2, None)
    });
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
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        project(s1, l1, s2, l2, Some((s3, l3)))
    });
    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        project(s1, l1, s2, l2, Some((s3, l3)))
    });
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
        Some(b) => fused_training(&[x, w, b]) && b.rank() == 1,
        None => fused_training(&[x, w]),
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
    if srcs.is_empty() || !same_device || !fused_training(&srcs) || total == 0 {
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
            launch::column_sums(&srcs, &plan, total)?
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

#[cfg(feature = "cuda")]
mod launch {
    //! The column sums' launcher.
    use crate::model::ops::cuda::{cuda_pass, function, pair};
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::Result;

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
            let f = function(dev, "col_sums_f32")?;
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::switches::without_fused;
    use crate::model::ops::testing::{compare, max_diff, randn};

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

    #[test]
    fn projections_match_the_operations_and_their_gradients() {
        let (x, w, b) = (randn(&[6, 24]), randn(&[10, 24]), randn(&[10]));
        let (dy, dg) = compare(&[x.clone(), w.clone(), b], |t| linear(&t[0], &t[1], Some(&t[2])));
        assert!(dy < 1e-5 && dg < 1e-4, "with a bias: values {dy}, gradients {dg}");
        let (dy, dg) = compare(&[x, w], |t| linear(&t[0], &t[1], None));
        assert!(dy < 1e-5 && dg < 1e-4, "without: values {dy}, gradients {dg}");
    }
}
