//! Moving heads in and out of token order. Scoring: the packed QKV projection + bias split into
//! heads ([`qkv_split`]) and the context merged back ([`merge_heads`]). Training: the same as graph
//! nodes with their own backward ([`split_heads`], [`merge_heads_train`]) and a projection's bias
//! with its head split by hand ([`split_heads_bias`]). CUDA kernels in `kernels/fused.cu`
//! (`split_parts_*`, `merge_heads_*`); the training nodes use candle's strided copy.

use super::cpu::{contiguous_f32, MIN_ROWS_PER_TASK};
use super::switches::{fused_scoring, fused_training};
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

// ---------------------------------------------------------------- scoring

struct SplitParts {
    /// Projections packed side by side: 3 (query, key, value) or 1.
    parts: usize,
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
}

impl CustomOp2 for SplitParts {
    fn name(&self) -> &'static str {
        "split-parts"
    }

    cpu_fwd!(self, s1, l1, s2, l2 => {
        let x = contiguous_f32(s1, l1, "split-parts x")?;
        let bias = contiguous_f32(s2, l2, "split-parts bias")?;
        let &SplitParts {
            parts,
            b,
            t,
            heads,
            d,
        } = self;
        let h = heads * d;
        if x.len() != b * t * parts * h || bias.len() != parts * h {
            candle_core::bail!("split-parts: {} values for {b}×{t}×{parts}×{h}", x.len());
        }
        let mut out = vec![0f32; x.len()];
        // Output blocks of (t, d): one per (which, text, head).
        out.par_chunks_mut(t * d).enumerate().for_each(|(blk, o)| {
            let head = blk % heads;
            let bi = (blk / heads) % b;
            let which = blk / (heads * b);
            let c0 = which * h + head * d;
            let bb = &bias[c0..c0 + d];
            for ti in 0..t {
                let src = &x[(bi * t + ti) * parts * h + c0..][..d];
                for ((o, &v), &bv) in o[ti * d..(ti + 1) * d].iter_mut().zip(src).zip(bb) {
                    *o = v + bv;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((parts, b, heads, t, d))))
    });

    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::split_parts(self.parts, [self.b, self.t, self.heads, self.d], s1, l1, s2, l2)
    });
}

/// The packed projection `x` (b·t, 3·heads·d), without its bias, plus `bias` (3·heads·d), split
/// into (3, b, heads, t, d): query, key and value, heads first, in one pass.
pub fn qkv_split(x: &Tensor, bias: &Tensor, b: usize, t: usize, heads: usize, d: usize) -> Result<Tensor> {
    if fused_scoring(&[x, bias]) && x.dims() == [b * t, 3 * heads * d] {
        return split_parts(x, bias, 3, [b, t, heads, d]);
    }
    x.broadcast_add(bias)?
        .reshape((b, t, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()
}

/// `parts` projections packed side by side, `x` (b·t, parts·heads·d) without their bias, plus
/// `bias` (parts·heads·d), split into (parts, b, heads, t, d) in one pass, wherever the caller's
/// own test says the kernels run ([`qkv_split`] for scoring, [`split_heads_bias`]).
pub(crate) fn split_parts(
    x: &Tensor,
    bias: &Tensor,
    parts: usize,
    [b, t, heads, d]: [usize; 4],
) -> Result<Tensor> {
    x.contiguous()?.apply_op2_no_bwd(
        &bias.contiguous()?,
        &SplitParts {
            parts,
            b,
            t,
            heads,
            d,
        },
    )
}

struct MergeHeads;

impl CustomOp1 for MergeHeads {
    fn name(&self) -> &'static str {
        "merge-heads"
    }

    cpu_fwd!(self, s1, l1 => {
        let x = contiguous_f32(s1, l1, "merge-heads x")?;
        let &[b, heads, t, d] = l1.dims() else {
            candle_core::bail!("merge-heads: expected (b, heads, t, d), got {:?}", l1.dims())
        };
        let mut out = vec![0f32; x.len()];
        // Output rows of (heads·d): one per (text, token).
        out.par_chunks_mut(heads * d)
            .enumerate()
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(row, o)| {
                let (bi, ti) = (row / t, row % t);
                for (head, o) in o.chunks_mut(d).enumerate() {
                    o.copy_from_slice(&x[((bi * heads + head) * t + ti) * d..][..d]);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, t, heads, d))))
    });

    cuda_fwd!(self, s1, l1 => {
        launch::merge_heads(s1, l1)
    });
}

/// The attention context (b, heads, t, d) back in token order as (b, t, heads·d), in one pass.
/// The kernel on CUDA; on the CPU candle's strided copy is as fast (178 µs against 252 for
/// e5-small at 32×128), so it stays.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, heads, t, d) = x.dims4()?;
    if x.device().is_cuda() && fused_scoring(&[x]) {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&MergeHeads)?
            .reshape((b, t, heads * d));
    }
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, heads * d))
}

// ---------------------------------------------------------------- training

/// Swaps dimensions 1 and 2 of a (b, p, q, d) tensor into a new contiguous one (candle's strided
/// copy); its own backward.
struct Swap12;

fn swap12<S>(x: &S, l: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    let &[b, p, q, d] = l.dims() else {
        candle_core::bail!("swap: expected 4 dimensions, got {:?}", l.dims())
    };
    let shape = Shape::from((b, q, p, d));
    // SAFETY: the copy below writes every element.
    let mut out = unsafe { x.device().alloc_uninit(&shape, x.dtype())? };
    x.copy_strided_src(&mut out, 0, &l.transpose(1, 2)?)?;
    Ok((out, shape))
}

impl CustomOp1 for Swap12 {
    fn name(&self) -> &'static str {
        "swap12"
    }
    cpu_fwd!(self, s1, l1 => {
        swap12(s1, l1)
    });
    cuda_fwd!(self, s1, l1 => {
        swap12(s1, l1)
    });
    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Swap12)?))
    }
}

/// (b·t, heads·d) rows → (b, heads, t, d), contiguous: one graph node (a reshape, a transpose and
/// a copy otherwise).
pub fn split_heads(x: &Tensor, b: usize, t: usize, heads: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)? / heads;
    let x = x.reshape((b, t, heads, d))?;
    if fused_training(&[&x]) {
        return x.contiguous()?.apply_op1(Swap12);
    }
    x.transpose(1, 2)?.contiguous()
}

/// `x + bias` as [`split_heads`] lays it out, (b, heads, t, d), for `x` (b·t, heads·d) and `bias`
/// (heads·d): a projection's bias and its head split in one pass (one launch on CUDA where it took
/// two), for a forward pass by hand. The two passes where the fused ones do not run.
pub fn split_heads_bias(x: &Tensor, bias: &Tensor, b: usize, t: usize, heads: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)? / heads;
    if fused_training(&[x, bias]) && x.dims() == [b * t, heads * d] && bias.dims() == [heads * d] {
        return split_parts(x, bias, 1, [b, t, heads, d])?.squeeze(0);
    }
    split_heads(&x.broadcast_add(bias)?, b, t, heads)
}

/// (b, heads, t, d) → (b·t, heads·d) rows: [`split_heads`] undone, one graph node.
pub fn merge_heads_train(x: &Tensor) -> Result<Tensor> {
    let (b, heads, t, d) = x.dims4()?;
    let y = if fused_training(&[x]) {
        x.contiguous()?.apply_op1(Swap12)?
    } else {
        x.transpose(1, 2)?.contiguous()?
    };
    y.reshape((b * t, heads * d))
}

#[cfg(feature = "cuda")]
mod launch {
    //! The head layout's launchers.
    use crate::model::ops::cuda::{by_dtype, kernel, launch_new, per_vector, view};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
    use candle_core::cuda_backend::{CudaDType, CudaStorage};
    use candle_core::{DType, Layout, Result, Shape};

    fn merge_heads_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let x = view::<T>(s1, l1, "merge-heads x")?;
        let &[b, heads, t, d] = l1.dims() else {
            candle_core::bail!("merge-heads: expected (b, heads, t, d), got {:?}", l1.dims())
        };
        let [b32, h32, t32, d32] = [b, heads, t, d].map(|v| v as u32);
        let f = kernel(s1, "merge_heads")?;
        let y = launch_new!(s1, f, T, x.len(), per_vector(x.len()); [&x], [&b32, &h32, &t32, &d32]);
        Ok((y, Shape::from((b, t, heads, d))))
    }

    pub fn merge_heads(s1: &CudaStorage, l1: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, merge_heads_t(s1, l1))
    }

    fn split_parts_t<T: CudaDType + DeviceRepr>(
        parts: usize,
        dims: [usize; 4],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (x, bias) = (
            view::<T>(s1, l1, "split-parts x")?,
            view::<T>(s2, l2, "split-parts bias")?,
        );
        let [b, t, heads, d] = dims;
        let n = x.len();
        if n != b * t * parts * heads * d || bias.len() != parts * heads * d {
            candle_core::bail!("split-parts: {n} values for {b}×{t}×{parts}×{heads}×{d}");
        }
        let [parts32, b32, t32, h32, d32] = [parts, b, t, heads, d].map(|v| v as u32);
        let f = kernel(s1, "split_parts")?;
        let y = launch_new!(s1, f, T, n, per_vector(n); [&x, &bias], [&parts32, &b32, &t32, &h32, &d32]);
        Ok((y, Shape::from((parts, b, heads, t, d))))
    }

    pub fn split_parts(
        parts: usize,
        dims: [usize; 4],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, split_parts_t(parts, dims, s1, l1, s2, l2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::softmax::mask_softmax;
    use crate::model::ops::switches::without_fused;
    use crate::model::ops::testing::{compare, max_diff, randn};
    use candle_core::Device;

    /// A projection's bias and head split in one pass give what the bias add and [`split_heads`]
    /// give, and candle's operations alone: each text's tokens, each head's columns.
    #[test]
    fn split_heads_with_bias_matches_the_passes() {
        let (b, t, heads, d) = (3, 5, 4, 6);
        let (x, bias) = (randn(&[b * t, heads * d]), randn(&[heads * d]));
        let got = split_heads_bias(&x, &bias, b, t, heads).unwrap();
        assert_eq!(got.dims(), &[b, heads, t, d]);
        assert!(got.is_contiguous());
        let want = split_heads(&x.broadcast_add(&bias).unwrap(), b, t, heads).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0);
        let slow = without_fused(|| split_heads_bias(&x, &bias, b, t, heads)).unwrap();
        assert_eq!(max_diff(&got, &slow), 0.0);
        // One element by hand: text 2, token 3, head 1, column 4.
        let v = |t: &Tensor, at: &[usize]| -> f32 {
            let mut t = t.clone();
            for &i in at {
                t = t.get(i).unwrap();
            }
            t.to_scalar().unwrap()
        };
        let by_hand = v(&x, &[2 * t + 3, d + 4]) + v(&bias, &[d + 4]);
        assert_eq!(v(&got, &[2, 1, 3, 4]), by_hand);
    }

    #[test]
    fn head_split_and_merge_match_the_operations_and_their_gradients() {
        let x = randn(&[2 * 5, 3 * 4]);
        let (dy, dg) = compare(std::slice::from_ref(&x), |t| split_heads(&t[0], 2, 5, 3));
        assert!(dy == 0.0 && dg == 0.0, "split: values {dy}, gradients {dg}");
        let (dy, dg) = compare(&[x], |t| merge_heads(&split_heads(&t[0], 2, 5, 3)?.sin()?));
        assert!(dy == 0.0 && dg < 1e-6, "merge: values {dy}, gradients {dg}");
    }

    #[test]
    fn attention_kernels_match_candle_ops() {
        let dev = Device::Cpu;
        let (b, t, heads, d) = (3, 5, 4, 6);
        let h = heads * d;
        let x = Tensor::randn(0f32, 1.0, (b * t, 3 * h), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3 * h, &dev).unwrap();
        let want = x
            .broadcast_add(&bias)
            .unwrap()
            .reshape((b, t, 3, heads, d))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let got = qkv_split(&x, &bias, b, t, heads, d).unwrap();
        assert_eq!(got.dims(), [3, b, heads, t, d]);
        let diff = max_diff(&want, &got);
        assert_eq!(diff, 0.0, "qkv split differs");

        // Text 1 has its last two tokens padded.
        let scores = Tensor::randn(0f32, 3.0, (b, heads, t, t), &dev).unwrap();
        let mut m = vec![0f32; b * t];
        m[t + 3] = -1e9;
        m[t + 4] = -1e9;
        let mask = Tensor::from_vec(m, (b, t), &dev).unwrap();
        let want = candle_nn::ops::softmax_last_dim(
            &scores
                .broadcast_add(&mask.reshape((b, 1, 1, t)).unwrap())
                .unwrap(),
        )
        .unwrap();
        let got = mask_softmax(&scores, &mask).unwrap();
        let diff = max_diff(&want, &got);
        assert!(diff < 1e-6, "mask-softmax differs by {diff}");
        let padded = got
            .get(1)
            .unwrap()
            .narrow(2, 3, 2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(padded.to_scalar::<f32>().unwrap(), 0.0, "padding got attention");
        // One query (the [CLS]-only last layer) works the same way.
        let one = scores.narrow(2, 0, 1).unwrap().contiguous().unwrap();
        let want1 = want.narrow(2, 0, 1).unwrap();
        let got1 = mask_softmax(&one, &mask).unwrap();
        let diff = max_diff(&want1, &got1);
        assert!(diff < 1e-6);

        // The context back in token order.
        let ctx = Tensor::randn(0f32, 1.0, (b, heads, t, d), &dev).unwrap();
        let want = ctx
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b, t, h))
            .unwrap();
        let got = merge_heads(&ctx).unwrap();
        assert_eq!(got.dims(), [b, t, h]);
        assert_eq!(max_diff(&want, &got), 0.0, "merge-heads differs");
        // The kernel's own CPU version (what CUDA runs, element for element).
        let got = ctx.apply_op1_no_bwd(&MergeHeads).unwrap();
        assert_eq!(got.dims(), [b, t, heads, d]);
        let got = got.reshape((b, t, h)).unwrap();
        assert_eq!(max_diff(&want, &got), 0.0, "merge-heads differs");
    }
}
