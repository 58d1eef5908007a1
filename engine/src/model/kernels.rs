//! Fused element-wise kernels for the scoring path (no backward: [`super::Mode::Inference`] only).
//!
//! The layer profile (`viralclip bench --profile`) shows the matrix products are the small part of
//! a layer; the rest is candle's one-op-at-a-time element-wise passes: the bias add before GELU,
//! GELU itself (on the CPU a scalar f64 `erf` per element, single-threaded: about a quarter of a
//! layer on 2 cores), and bias + residual + layer norm. Each function here does one pass over the
//! data, in parallel over rows, and falls back to the equivalent candle ops where it has no kernel
//! (dtypes other than f32, non-CPU devices), so callers need not care.

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Rows handed to one rayon task at least (keeps the per-task overhead small for short rows).
const MIN_ROWS_PER_TASK: usize = 8;

/// exp(x) in f32 without a library call, so loops over it vectorise: range reduction to
/// r ∈ [-ln2/2, ln2/2] and Cephes' `expf` polynomial (relative error about 1e-7); 0 below -87.
#[inline]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2^23: adding it rounds to an integer (SSE2, no call)
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    let r = xc - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^k, k read back from t's low mantissa bits.
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let v = y * f32::from_bits(((ki + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        v
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), in f32.
#[inline]
pub fn erf(x: f32) -> f32 {
    let s = x.signum();
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6)
            * t
            * exp(-a * a);
    s * y
}

/// GELU with the exact (erf) form: x·Φ(x).
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
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
    if usable(&[x, bias]) && x.rank() == 2 && x.dim(1)? == bias.elem_count() {
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
    if usable(&[x, residual]) && same_device && x.rank() == 2 && x.dims() == residual.dims() {
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

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
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
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::split_parts(self.parts, [self.b, self.t, self.heads, self.d], s1, l1, s2, l2)
    }
}

/// The packed projection `x` (b·t, 3·heads·d), without its bias, plus `bias` (3·heads·d), split
/// into (3, b, heads, t, d): query, key and value, heads first, in one pass.
pub fn qkv_split(x: &Tensor, bias: &Tensor, b: usize, t: usize, heads: usize, d: usize) -> Result<Tensor> {
    if usable(&[x, bias]) && x.dims() == [b * t, 3 * heads * d] {
        return split_parts(x, bias, 3, [b, t, heads, d]);
    }
    x.broadcast_add(bias)?
        .reshape((b, t, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()
}

/// `parts` projections packed side by side, `x` (b·t, parts·heads·d) without their bias, plus
/// `bias` (parts·heads·d), split into (parts, b, heads, t, d) in one pass, wherever the caller's
/// own test says the kernels run ([`qkv_split`] for scoring, `train_ops::split_heads_bias`).
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

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
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
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::merge_heads(s1, l1)
    }
}

/// The attention context (b, heads, t, d) back in token order as (b, t, heads·d), in one pass.
/// The kernel on CUDA; on the CPU candle's strided copy is as fast (178 µs against 252 for
/// e5-small at 32×128), so it stays.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, heads, t, d) = x.dims4()?;
    if x.device().is_cuda() && usable(&[x]) {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&MergeHeads)?
            .reshape((b, t, heads * d));
    }
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, heads * d))
}

struct MaskSoftmax;

impl CustomOp2 for MaskSoftmax {
    fn name(&self) -> &'static str {
        "mask-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = contiguous_f32(s1, l1, "mask-softmax scores")?;
        let m = contiguous_f32(s2, l2, "mask-softmax mask")?;
        let dims = l1.dims();
        let t = dims[dims.len() - 1];
        let b = dims[0];
        if m.len() != b * t {
            candle_core::bail!("mask-softmax: mask of {} for {b} texts of {t}", m.len());
        }
        let per_text = s.len() / (b * t).max(1);
        let mut out = vec![0f32; s.len()];
        out.par_chunks_mut(t)
            .zip(s.par_chunks(t))
            .enumerate()
            .with_min_len(MIN_ROWS_PER_TASK)
            .for_each(|(row, (o, sr))| {
                let mr = &m[(row / per_text) * t..][..t];
                let mut mx = f32::NEG_INFINITY;
                for (v, &a) in sr.iter().zip(mr) {
                    mx = mx.max(v + a);
                }
                let mut sum = 0f32;
                for ((o, v), &a) in o.iter_mut().zip(sr).zip(mr) {
                    *o = exp(v + a - mx);
                }
                for o in o.iter() {
                    sum += *o;
                }
                let inv = 1.0 / sum;
                for o in o.iter_mut() {
                    *o *= inv;
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
        cuda::mask_softmax(s1, l1, s2, l2)
    }
}

/// softmax(scores + mask) over the last dimension: `scores` (b, heads, queries, t), `mask` the
/// additive mask (b, t) (0 where attended, a large negative number where padded).
pub fn mask_softmax(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, _, _, t) = scores.dims4()?;
    if usable(&[scores, mask]) && mask.dims() == [b, t] {
        return scores
            .contiguous()?
            .apply_op2_no_bwd(&mask.contiguous()?, &MaskSoftmax);
    }
    candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask.reshape((b, 1, 1, t))?)?)
}

/// Whether a model in `dtype` keeps its attention scores in f32 between their product and the
/// softmax ([`attention_probs`]): the 16-bit ones, unless `VIRALCLIP_F32_SCORES=0` (for timing
/// what it costs).
pub fn scores_in_f32(dtype: DType) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    matches!(dtype, DType::BF16 | DType::F16)
        && !*OFF.get_or_init(|| std::env::var("VIRALCLIP_F32_SCORES").is_ok_and(|v| v == "0"))
}

/// The attention probabilities `softmax(q · kᵀ + mask)` for queries `q` (b, heads, tq, d) and keys
/// `k` (b, heads, t, d) under the additive `mask` (b, t), in `q`'s dtype. A 16-bit model's scores
/// are not rounded to it before the softmax: on CUDA one GEMM writes them in f32 (16-bit inputs,
/// f32 accumulation, as every product here) and the softmax reads them so; the CPU computes them
/// in f32. Rounded to bf16, they were the largest error left in bf16 scoring (1,000 Russian texts,
/// e5-small: 45 texts' popularity more than 1e-2 from f32's, 21 with the scores in f32).
pub fn attention_probs(q: &Tensor, k: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if !scores_in_f32(q.dtype()) {
        return mask_softmax(&q.matmul(&k.t()?)?, mask);
    }
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() && fused_cuda() && q.dtype() == k.dtype() && q.dtype() == mask.dtype() {
        return q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &mask.contiguous()?, &ScoresSoftmax);
    }
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let scores = f32(q)?.matmul(&f32(k)?.t()?)?;
    mask_softmax(&scores, &f32(mask)?)?.to_dtype(q.dtype())
}

/// [`attention_probs`] for a 16-bit model on CUDA: the f32 scores' GEMM, then mask + softmax.
#[cfg(feature = "cuda")]
struct ScoresSoftmax;

#[cfg(feature = "cuda")]
impl CustomOp3 for ScoresSoftmax {
    fn name(&self) -> &'static str {
        "scores-softmax"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("scores-softmax runs on CUDA (the CPU's attention_probs converts to f32)")
    }

    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        lq: &Layout,
        k: &candle_core::CudaStorage,
        lk: &Layout,
        m: &candle_core::CudaStorage,
        lm: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::scores_softmax(q, lq, k, lk, m, lm)
    }
}

/// Attention in one pass for short texts, from the packed projection: see [`attention`].
struct Attention {
    b: usize,
    t: usize,
    /// Queries computed: `t`, or 1 for the [CLS] alone (the last layer).
    tq: usize,
    heads: usize,
    d: usize,
}

impl Attention {
    /// The shapes [`attention`] expects, as an error message when they are not these.
    fn check(&self, qkv: &Layout, bias: &Layout, mask: &Layout) -> Result<()> {
        let Attention { b, t, tq, heads, d } = *self;
        let h = heads * d;
        if qkv.dims() != [b * t, 3 * h]
            || bias.dims() != [3 * h]
            || mask.dims() != [b, t]
            || tq > t
            || tq == 0
        {
            candle_core::bail!(
                "attention: qkv {:?}, bias {:?}, mask {:?} for b {b}, t {t}, tq {tq}, heads {heads}, d {d}",
                qkv.dims(),
                bias.dims(),
                mask.dims()
            )
        }
        Ok(())
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    /// The same arithmetic as the CUDA kernel in f32 (scores, mask, softmax, context), text by
    /// text and head by head; it checks the op's layout on the CPU.
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let qkv = contiguous_f32(s1, l1, "attention qkv")?;
        let bias = contiguous_f32(s2, l2, "attention bias")?;
        let mask = contiguous_f32(s3, l3, "attention mask")?;
        let Attention { b, t, tq, heads, d } = *self;
        let h = heads * d;
        // Row `j` of text `bi`, part 0/1/2 (query, key, value) of head `head`, with its bias.
        let row = |bi: usize, j: usize, part: usize, head: usize| -> Vec<f32> {
            let col = part * h + head * d;
            let x = &qkv[(bi * t + j) * 3 * h + col..][..d];
            x.iter().zip(&bias[col..col + d]).map(|(x, b)| x + b).collect()
        };
        let mut out = vec![0f32; b * tq * h];
        out.par_chunks_mut(tq * h).enumerate().for_each(|(bi, o)| {
            for head in 0..heads {
                let keys: Vec<Vec<f32>> = (0..t).map(|j| row(bi, j, 1, head)).collect();
                let values: Vec<Vec<f32>> = (0..t).map(|j| row(bi, j, 2, head)).collect();
                for qi in 0..tq {
                    let q = row(bi, qi, 0, head);
                    let scores: Vec<f32> = keys
                        .iter()
                        .zip(&mask[bi * t..(bi + 1) * t])
                        .map(|(k, m)| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() + m)
                        .collect();
                    let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let p: Vec<f32> = scores.iter().map(|s| exp(s - mx)).collect();
                    let inv = 1.0 / p.iter().sum::<f32>();
                    let ctx = &mut o[qi * h + head * d..][..d];
                    for (p, v) in p.iter().zip(&values) {
                        for (c, v) in ctx.iter_mut().zip(v) {
                            *c += p * inv * v;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, tq, h))))
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
        self.check(l1, l2, l3)?;
        cuda::attention(
            [self.b, self.t, self.tq, self.heads, self.d],
            s1,
            l1,
            s2,
            l2,
            s3,
            l3,
        )
    }
}

/// The longest text [`attention`]'s CUDA kernel takes (its scores and keys live in shared memory).
pub const ATTENTION_MAX_TOKENS: usize = 256;

/// Whether the scoring path runs attention as one CUDA kernel ([`attention`]) for these inputs:
/// the fused kernels on, `VIRALCLIP_FUSED_ATTN=1` (opt-in until a GPU run has checked it: `viralclip
/// bench` prints `attention_check`), bf16 or f16, a head size of 32 or 64, at most
/// [`ATTENTION_MAX_TOKENS`] tokens, and a GPU with bf16/f16 tensor cores (compute capability 8+).
pub fn attention_fits(qkv: &Tensor, t: usize, d: usize) -> bool {
    #[cfg(feature = "cuda")]
    {
        fused_attn_on()
            && fused_cuda()
            && matches!(qkv.dtype(), DType::BF16 | DType::F16)
            && matches!(d, 32 | 64)
            && (1..=ATTENTION_MAX_TOKENS).contains(&t)
            && cuda::tensor_cores(qkv.device())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (qkv, t, d);
        false
    }
}

/// Multi-head attention from the packed projection `qkv` (b·t, 3·heads·d), without its bias,
/// plus `bias` (3·heads·d; the query's part scaled by 1/√d with the query weights), under the
/// additive `mask` (b, t): the context (b·tq, heads·d) of the first `tq` queries (`t`, or 1 for
/// the [CLS] alone), in token order. One op instead of the bias + head split, the scores'
/// product, mask + softmax, the context's product and the head merge; on CUDA one kernel whose
/// scores stay in shared memory (bf16/f16; where [`attention_fits`]). The CPU runs it in f32 (the
/// scoring path there keeps its GEMMs, which are faster; this checks the op).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &Tensor,
    bias: &Tensor,
    mask: &Tensor,
    b: usize,
    t: usize,
    tq: usize,
    heads: usize,
    d: usize,
) -> Result<Tensor> {
    let ctx = qkv.contiguous()?.apply_op3_no_bwd(
        &bias.contiguous()?,
        &mask.contiguous()?,
        &Attention { b, t, tq, heads, d },
    )?;
    ctx.reshape((b * tq, heads * d))
}

/// [`attention`] against candle's own operations in f32 on `dev`, over texts of 1 to 256 tokens
/// with padding, both head sizes, and [CLS]-only queries: the largest difference relative to the
/// largest context value, and whether the fused op ran (on CUDA where [`attention_fits`], in
/// `dtype`; on the CPU its f32 version; else `false` and 0). The reference gets the same inputs
/// rounded to `dtype`, so what is left is the kernel's own rounding (bf16 about 1e-2, f16 2e-3).
pub fn check_attention(dev: &candle_core::Device, dtype: DType) -> Result<(f32, bool)> {
    let dtype = if dev.is_cpu() { DType::F32 } else { dtype };
    let mut uniform = seeded_uniform(0x9E37_79B9_7F4A_7C15);
    let mut worst = 0f32;
    // (texts, tokens, heads, head size, queries)
    for (b, t, heads, d, tq) in [
        (3, 1, 2, 32, 1),
        (2, 7, 4, 64, 7),
        (2, 33, 3, 32, 33),
        (2, 33, 3, 32, 1),
        (1, 128, 2, 64, 128),
        (5, 70, 12, 64, 70),
        (2, 200, 2, 64, 200),
        (1, 256, 1, 32, 256),
    ] {
        let h = heads * d;
        // Spread like N(0, sd²) (a uniform of the same variance).
        let mut normal = |n: usize, sd: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..n).map(|_| uniform() * 3.46 * sd).collect();
            Tensor::from_vec(v, n, dev)?.to_dtype(dtype)
        };
        let qkv = normal(b * t * 3 * h, 1.0)?.reshape((b * t, 3 * h))?;
        let bias = normal(3 * h, 0.5)?;
        let mask = padded_check_mask(b, t, dev, dtype)?;
        let fused = if dev.is_cpu() || attention_fits(&qkv, t, d) {
            attention(&qkv, &bias, &mask, b, t, tq, heads, d)?.to_dtype(DType::F32)?
        } else {
            return Ok((0.0, false));
        };
        let f = |x: &Tensor| x.to_dtype(DType::F32);
        let want = split_attention(&f(&qkv)?.broadcast_add(&f(&bias)?)?, &mask, b, t, tq, heads, d)?;
        worst = worst.max(relative_diff(&fused, &want)?);
    }
    Ok((worst, true))
}

/// Attention read straight from the packed projection: see [`packed_attention`].
#[derive(Clone, Copy)]
struct PackedAttention {
    b: usize,
    t: usize,
    tq: usize,
    heads: usize,
    d: usize,
}

impl CustomOp2 for PackedAttention {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        let PackedAttention { b, t, tq, heads, d } = *self;
        candle_core::bail!(
            "packed-attention (b {b}, t {t}, tq {tq}, heads {heads}, d {d}): cuBLAS's pointer-array GEMMs, CUDA only"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::packed_attention([self.b, self.t, self.tq, self.heads, self.d], s1, l1, s2, l2)
    }
}

/// Whether the scoring path runs [`packed_attention`] for this packed projection: CUDA with the
/// fused kernels on, a 16-bit model whose attention scores stay in f32 ([`scores_in_f32`]),
/// unless `VIRALCLIP_PACKED_ATTN=0` (the bias + head split, strided products and head merge).
pub fn packed_attention_fits(qkv: &Tensor) -> bool {
    #[cfg(feature = "cuda")]
    {
        packed_attn_on() && fused_cuda() && qkv.device().is_cuda() && scores_in_f32(qkv.dtype())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = qkv;
        false
    }
}

/// Multi-head attention from the packed projection `qkv` (b·t, 3·heads·d) *with* its bias (from
/// [`gemm_bias`]; the query's part scaled by 1/√d) under the additive `mask` (b, t): the context
/// (b·tq, heads·d) of the first `tq` queries, in token order, as the split path computes it
/// (scores in f32, then mask + softmax, then the context's product), without its two copies: the
/// products read each head's queries, keys and values where the packed rows hold them, and write
/// the context where the merged rows want it (cuBLAS's pointer-array batched GEMMs). CUDA, bf16
/// or f16 ([`packed_attention_fits`]).
#[allow(clippy::too_many_arguments)]
pub fn packed_attention(
    qkv: &Tensor,
    mask: &Tensor,
    b: usize,
    t: usize,
    tq: usize,
    heads: usize,
    d: usize,
) -> Result<Tensor> {
    qkv.contiguous()?
        .apply_op2_no_bwd(&mask.contiguous()?, &PackedAttention { b, t, tq, heads, d })
}

/// [`packed_attention`] (after [`gemm_bias`]) against the split path's arithmetic in f32 on `dev`
/// (bias added, heads split, scores, mask, softmax, context, heads merged), over texts of 1 to 200
/// tokens with padding, both head sizes and [CLS]-only queries: the largest difference relative to
/// the largest context value, and whether it ran (on CUDA where [`packed_attention_fits`] in
/// `dtype`; else `false` and 0). Inputs are rounded to `dtype` for both; what is left is the
/// rounding of the projection and of the probabilities (bf16 about 1e-2).
pub fn check_packed_attention(dev: &candle_core::Device, dtype: DType) -> Result<(f32, bool)> {
    let mut uniform = seeded_uniform(0x2545_F491_4F6C_DD1D);
    let mut worst = 0f32;
    // (texts, tokens, heads, head size, queries, input features)
    for (b, t, heads, d, tq, k) in [
        (3, 1, 2, 32, 1, 48),
        (2, 7, 4, 64, 7, 64),
        (2, 33, 3, 32, 33, 96),
        (2, 33, 3, 32, 1, 96),
        (5, 70, 12, 64, 70, 128),
        (2, 200, 2, 64, 200, 64),
    ] {
        let h = heads * d;
        let mut normal = |n: usize, sd: f32| -> Result<Tensor> {
            let v: Vec<f32> = (0..n).map(|_| uniform() * 3.46 * sd).collect();
            Tensor::from_vec(v, n, dev)?.to_dtype(dtype)
        };
        let x = normal(b * t * k, 1.0)?.reshape((b * t, k))?;
        // The query's rows scaled by 1/√d, as the scoring weights are (scores of unit spread).
        let scale = Tensor::cat(
            &[
                Tensor::full(1.0 / (d as f32).sqrt(), (h, 1), dev)?,
                Tensor::ones((2 * h, 1), DType::F32, dev)?,
            ],
            0,
        )?;
        let w = normal(3 * h * k, 1.0 / (k as f32).sqrt())?
            .reshape((3 * h, k))?
            .to_dtype(DType::F32)?
            .broadcast_mul(&scale)?
            .to_dtype(dtype)?;
        let bias = normal(3 * h, 0.5)?
            .to_dtype(DType::F32)?
            .mul(&scale.flatten_all()?)?
            .to_dtype(dtype)?;
        let mask = padded_check_mask(b, t, dev, dtype)?;
        if !packed_attention_fits(&x) {
            return Ok((0.0, false));
        }
        let qkv = gemm_bias(&x, &w, &bias)?;
        let got = packed_attention(&qkv, &mask, b, t, tq, heads, d)?.to_dtype(DType::F32)?;
        let f = |x: &Tensor| x.to_dtype(DType::F32);
        let projection = f(&x)?.matmul(&f(&w)?.t()?)?.broadcast_add(&f(&bias)?)?;
        let want = split_attention(&projection, &mask, b, t, tq, heads, d)?;
        worst = worst.max(relative_diff(&got, &want)?);
    }
    Ok((worst, true))
}

/// Seeded numbers (xorshift64), uniform in [-0.5, 0.5): the checks' inputs, the same every run.
fn seeded_uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// The checks' additive mask (b, t) in `dtype`: text i keeps its first t - i·t/(b+1) tokens (at
/// least one), the rest are -1e4.
fn padded_check_mask(b: usize, t: usize, dev: &candle_core::Device, dtype: DType) -> Result<Tensor> {
    let mut m = vec![0f32; b * t];
    for bi in 0..b {
        let keep = (t - bi * t / (b + 1)).max(1);
        m[bi * t + keep..(bi + 1) * t].fill(-1e4);
    }
    Tensor::from_vec(m, (b, t), dev)?.to_dtype(dtype)
}

/// The checks' reference: attention by candle's operations in f32 from the packed projection
/// `qkv` (b·t, 3·heads·d, f32, its bias added) under `mask` (b, t): heads split, scores, mask,
/// softmax, context of the first `tq` queries, heads merged to (b·tq, heads·d).
fn split_attention(
    qkv: &Tensor,
    mask: &Tensor,
    b: usize,
    t: usize,
    tq: usize,
    heads: usize,
    d: usize,
) -> Result<Tensor> {
    let split = qkv
        .reshape((b, t, 3, heads, d))?
        .permute((2, 0, 3, 1, 4))?
        .contiguous()?;
    let (q, k, v) = (
        split.get(0)?.narrow(2, 0, tq)?.contiguous()?,
        split.get(1)?,
        split.get(2)?,
    );
    let scores = q
        .matmul(&k.t()?)?
        .broadcast_add(&mask.to_dtype(DType::F32)?.reshape((b, 1, 1, t))?)?;
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * tq, heads * d))
}

/// The largest difference of `got` from `want`, relative to `want`'s largest magnitude (the
/// experimental passes' checks).
fn relative_diff(got: &Tensor, want: &Tensor) -> Result<f32> {
    let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    Ok(diff / want.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6))
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

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: a cuBLASLt epilogue, CUDA only", self.name())
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
        cuda::gemm_gelu(self.gelu, s1, l1, s2, l2, s3, l3)
    }
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
            && matches!(x.dtype(), DType::BF16 | DType::F16)
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

/// [`gemm_gelu`] against `gelu_erf(x · wᵀ + b)` in f32 on `dev`, in `dtype` (inputs rounded to it
/// for both): the largest difference relative to the largest output, and whether it ran (false
/// and 0 where it does not fit).
pub fn check_gemm_gelu(dev: &candle_core::Device, dtype: DType) -> Result<(f32, bool)> {
    let mut worst = 0f32;
    for (m, k, n) in [(37, 64, 96), (130, 384, 1536), (4096, 768, 3072)] {
        let r = |shape: (usize, usize), scale: f64| -> Result<Tensor> {
            let v: Vec<f32> = (0..shape.0 * shape.1)
                .map(|i| (((i * 7919 + shape.1 * 31) % 1000) as f32 / 1000.0 - 0.5) * scale as f32)
                .collect();
            Tensor::from_vec(v, shape, dev)?.to_dtype(dtype)
        };
        let (x, w) = (r((m, k), 2.0)?, r((n, k), 4.0 / (k as f64).sqrt())?);
        let b = r((1, n), 1.0)?.reshape(n)?;
        if !gemm_gelu_fits(&x) {
            return Ok((0.0, false));
        }
        let got = gemm_gelu(&x, &w, &b)?.to_dtype(DType::F32)?;
        let f = |t: &Tensor| t.to_dtype(DType::F32);
        let want = f(&x)?.matmul(&f(&w)?.t()?)?.broadcast_add(&f(&b)?)?.gelu_erf()?;
        worst = worst.max(relative_diff(&got, &want)?);
    }
    Ok((worst, true))
}

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

fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what}: expected f32"),
    }
}

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
        cuda::adam_moment(s1, l1, s2, l2, self.beta, self.square)
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
        let (m, v) = (
            contiguous_f32(s2, l2, "adam m")?,
            contiguous_f32(s3, l3, "adam v")?,
        );
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
        cuda::adam_update(s1, l1, s2, l2, s3, l3, *self)
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

/// The kernels here run on CPU f32 tensors, and on CUDA tensors (f32, f16, bf16) unless
/// `VIRALCLIP_FUSED_CUDA=0` (checked against the CPU path on an H200: bf16 scores within 6.2e-3 of
/// fp32 CPU, f16 1.0e-3, TF32 3e-4, f32 equal). All operands must share one dtype.
fn usable(ts: &[&Tensor]) -> bool {
    let same = ts.windows(2).all(|w| w[0].dtype() == w[1].dtype());
    let cpu = ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    same && (cpu || (fused_cuda() && ts.iter().all(|t| t.device().is_cuda())))
}

/// Whether the fused CUDA kernels are switched on (`cuda` builds; `VIRALCLIP_FUSED_CUDA=0` turns
/// them off, for comparing with candle's own operations).
pub fn fused_cuda() -> bool {
    #[cfg(feature = "cuda")]
    {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        !env_is(&OFF, "VIRALCLIP_FUSED_CUDA", "0")
    }
    #[cfg(not(feature = "cuda"))]
    false
}

/// Whether the training path's fused CUDA kernels run (`train_ops`, and the optimiser's one-pass
/// step in `step`): on unless `VIRALCLIP_FUSED_TRAIN=0` or `VIRALCLIP_FUSED_CUDA=0` (an H200 run
/// checked them against candle's operations: `viralclip bench --train-steps` prints
/// `train_ops_check` and `fused_step_check`); on the CPU they always run.
pub fn fused_train_cuda() -> bool {
    #[cfg(feature = "cuda")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        fused_cuda() && !env_is(&ON, "VIRALCLIP_FUSED_TRAIN", "0")
    }
    #[cfg(not(feature = "cuda"))]
    false
}

/// Whether CUDA's layer norm uses the vectorised warp-per-row kernel: on unless
/// `VIRALCLIP_LN_VEC=0` (the block-per-row one; on an H200 the vectorised one took 40 µs a norm
/// against 118 at 256×128 on the ruBert-base shape).
#[cfg(feature = "cuda")]
fn ln_vec() -> bool {
    #[cfg(test)]
    if let Some(on) = LN_VEC_OVERRIDE.with(|c| c.get()) {
        return on;
    }
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !env_is(&ON, "VIRALCLIP_LN_VEC", "0")
}

#[cfg(all(test, feature = "cuda"))]
thread_local! {
    /// A test's choice of CUDA layer norm kernel on this thread, over `VIRALCLIP_LN_VEC`.
    static LN_VEC_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with CUDA's vectorised layer norm on or off on this thread (tests of both kernels).
#[cfg(all(test, feature = "cuda"))]
pub(crate) fn with_ln_vec<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let was = LN_VEC_OVERRIDE.with(|c| c.replace(Some(on)));
    let r = f();
    LN_VEC_OVERRIDE.with(|c| c.set(was));
    r
}

/// `VIRALCLIP_FUSED_ATTN=1`: attention in one kernel where it fits ([`attention_fits`]).
#[cfg(feature = "cuda")]
fn fused_attn_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_is(&ON, "VIRALCLIP_FUSED_ATTN", "1")
}

/// [`packed_attention`] where it fits unless `VIRALCLIP_PACKED_ATTN=0`.
#[cfg(feature = "cuda")]
fn packed_attn_on() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !env_is(&OFF, "VIRALCLIP_PACKED_ATTN", "0")
}

/// The FFN's first GEMM with cuBLASLt's epilogue ([`gemm_gelu_fits`]) unless
/// `VIRALCLIP_GEMM_GELU=0`.
#[cfg(feature = "cuda")]
fn gemm_gelu_on() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !env_is(&OFF, "VIRALCLIP_GEMM_GELU", "0")
}

/// The scoring path's switchable passes in effect for a model in `dtype` on `dev`, by name, so a
/// benchmark's line says what it ran: `fused` (the fused CUDA kernels; the CPU always runs its
/// own), `f32_scores` ([`scores_in_f32`]), `packed_attn`, `gemm_gelu`, `ln_vec` (CUDA defaults
/// with a switch each), and the opt-in `fused_attn`, where they would run (for `fused_attn`,
/// texts of up to 256 tokens with heads of 32 or 64; it takes precedence over `packed_attn`).
pub fn scoring_passes(dev: &candle_core::Device, dtype: DType) -> Vec<&'static str> {
    let mut on = Vec::new();
    if dev.is_cuda() && fused_cuda() {
        on.push("fused");
    }
    if scores_in_f32(dtype) {
        on.push("f32_scores");
    }
    #[cfg(feature = "cuda")]
    if dev.is_cuda() && fused_cuda() {
        let sixteen = matches!(dtype, DType::BF16 | DType::F16);
        if fused_attn_on() && sixteen && cuda::tensor_cores(dev) {
            on.push("fused_attn");
        }
        if packed_attn_on() && scores_in_f32(dtype) {
            on.push("packed_attn");
        }
        if gemm_gelu_on() && sixteen {
            on.push("gemm_gelu");
        }
        if ln_vec() {
            on.push("ln_vec");
        }
    }
    on
}

/// Whether environment variable `var` is `value`, read once into `cell` (the kernels' switches).
#[cfg(feature = "cuda")]
fn env_is(cell: &std::sync::OnceLock<bool>, var: &str, value: &str) -> bool {
    *cell.get_or_init(|| std::env::var(var).is_ok_and(|v| v == value))
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    //! Launchers for `kernels/fused.cu` (PTX built by build.rs): one generic launcher per kernel,
    //! run for the storage's element type by `by_dtype!`.
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result, Shape};

    pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    pub(crate) const MODULE: &str = "viralclip_fused";

    /// The elements of a contiguous input.
    fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
        Ok(s.as_cuda_slice::<T>()?.slice(a..b))
    }

    /// The kernel `{name}_{f32|f16|bf16}` for `s`'s element type.
    fn kernel(s: &CudaStorage, name: &str) -> Result<CudaFunction> {
        let suffix = match s.dtype() {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            d => candle_core::bail!("{name}: no {d:?} kernel"),
        };
        Ok(s.device()
            .get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?
            .into_cuda_function())
    }

    /// Calls `$f::<T>(args)` with `T` the element type of storage `$s`.
    macro_rules! by_dtype {
        ($s:expr, $f:ident($($arg:expr),*)) => {
            match $s.dtype() {
                DType::F32 => $f::<f32>($($arg),*),
                DType::F16 => $f::<half::f16>($($arg),*),
                DType::BF16 => $f::<half::bf16>($($arg),*),
                d => candle_core::bail!("{}: no {d:?} kernel", stringify!($f)),
            }
        };
    }

    /// The device and address of a contiguous f32 CUDA tensor's first element, for the tables of
    /// the kernels that take many tensors (`step_*`, `col_sums_f32`).
    pub(crate) fn address(t: &candle_core::Tensor, what: &str) -> Result<(CudaDevice, u64)> {
        let (s, l) = t.storage_and_layout();
        let candle_core::Storage::Cuda(cs) = &*s else {
            candle_core::bail!("{what}: expected CUDA tensors")
        };
        if !l.is_contiguous() {
            candle_core::bail!("{what}: expected contiguous tensors")
        }
        let dev = cs.device().clone();
        let stream = dev.cuda_stream();
        let slice = cs.as_cuda_slice::<f32>()?;
        let (ptr, _sync) = slice.device_ptr(&stream);
        Ok((dev, ptr + (l.start_offset() * std::mem::size_of::<f32>()) as u64))
    }

    /// Two u32s packed little-endian into a table's u64.
    pub(crate) fn pair(lo: u32, hi: u32) -> u64 {
        lo as u64 | ((hi as u64) << 32)
    }

    /// A thread per 16-byte vector of `n` elements (8 of bf16/f16; the kernels loop over what
    /// is left when they fall back to single elements, or with 4-byte f32).
    fn per_vector(n: usize) -> LaunchConfig {
        LaunchConfig::for_num_elems(n.div_ceil(8).max(1) as u32)
    }

    fn merge_heads_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let x = view::<T>(s1, l1, "merge-heads x")?;
        let &[b, heads, t, d] = l1.dims() else {
            candle_core::bail!("merge-heads: expected (b, heads, t, d), got {:?}", l1.dims())
        };
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(x.len())? };
        let (func, stream) = (kernel(s1, "merge_heads")?, dev.cuda_stream());
        let [b32, h32, t32, d32] = [b, heads, t, d].map(|v| v as u32);
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&mut y).arg(&b32).arg(&h32).arg(&t32).arg(&d32);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_vector(x.len())) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev),
            Shape::from((b, t, heads, d)),
        ))
    }

    pub fn merge_heads(s1: &CudaStorage, l1: &Layout) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, merge_heads_t(s1, l1))
    }

    fn bias_gelu_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, b) = (
            view::<T>(s1, l1, "bias-gelu x")?,
            view::<T>(s2, l2, "bias-gelu bias")?,
        );
        let (n, d) = (x.len() as u32, b.len() as u32);
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(x.len())? };
        let (func, stream) = (kernel(s1, "bias_gelu")?, dev.cuda_stream());
        let mut args = stream.launch_builder(&func);
        args.arg(&x).arg(&b).arg(&mut y).arg(&n).arg(&d);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_vector(n as usize)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
    }

    pub fn bias_gelu(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, bias_gelu_t(s1, l1, s2, l2))
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
        let x = view::<T>(s1, l1, "add-norm x")?;
        let r = view::<T>(s2, l2, "add-norm residual")?;
        let p = view::<f32>(s3, l3, "add-norm params")?;
        let (n, d) = (x.len(), p.len() / 3);
        if n != r.len() || d == 0 || n % d != 0 {
            candle_core::bail!("add-norm: x {n} and residual {} values in rows of {d}", r.len());
        }
        // The vectorised warp-per-row kernel: opt-in until measured, and only where its 16-byte
        // loads are aligned (the allocations are; the views' offsets must keep them so). The f32
        // params take per_vec / 4 loads of 4 per vector of T.
        let size = std::mem::size_of::<T>();
        let per_vec = 16 / size;
        let at16 = |l: &Layout, size: usize| {
            l.contiguous_offsets()
                .is_some_and(|(a, _)| (a * size).is_multiple_of(16))
        };
        let aligned = at16(l1, size) && at16(l2, size) && at16(l3, 4);
        let vec = super::ln_vec() && aligned && d % per_vec == 0 && d / per_vec <= 128;
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let name = if vec { "add_norm_vec" } else { "add_norm" };
        let (func, stream) = (kernel(s1, name)?, dev.cuda_stream());
        let (rows, d32) = ((n / d) as u32, d as u32);
        let mut args = stream.launch_builder(&func);
        args.arg(&x)
            .arg(&r)
            .arg(&p)
            .arg(&mut y)
            .arg(&rows)
            .arg(&d32)
            .arg(&eps);
        let cfg = if vec {
            // A warp per row, 8 rows a block.
            LaunchConfig {
                grid_dim: (rows.div_ceil(8), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            }
        } else {
            // One block per row; a multiple of 32 threads (the kernel reduces with warp shuffles).
            LaunchConfig {
                grid_dim: (rows, 1, 1),
                block_dim: ((d32.div_ceil(32) * 32).clamp(32, 256), 1, 1),
                shared_mem_bytes: 0,
            }
        };
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
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

    fn split_parts_t<T: CudaDType + DeviceRepr>(
        parts: usize,
        dims: [usize; 4],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (x, bias) = (
            view::<T>(s1, l1, "split-parts x")?,
            view::<T>(s2, l2, "split-parts bias")?,
        );
        let [b, t, heads, d] = dims;
        let n = x.len();
        if n != b * t * parts * heads * d || bias.len() != parts * heads * d {
            candle_core::bail!("split-parts: {n} values for {b}×{t}×{parts}×{heads}×{d}");
        }
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let (func, stream) = (kernel(s1, "split_parts")?, dev.cuda_stream());
        let [parts32, b32, t32, h32, d32] = [parts, b, t, heads, d].map(|v| v as u32);
        let mut args = stream.launch_builder(&func);
        args.arg(&x)
            .arg(&bias)
            .arg(&mut y)
            .arg(&parts32)
            .arg(&b32)
            .arg(&t32)
            .arg(&h32)
            .arg(&d32);
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_vector(n)) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev),
            Shape::from((parts, b, heads, t, d)),
        ))
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

    fn mask_softmax_t<T: CudaDType + DeviceRepr>(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device().clone();
        let (s, m) = (
            view::<T>(s1, l1, "mask-softmax scores")?,
            view::<T>(s2, l2, "mask-softmax mask")?,
        );
        let dims = l1.dims();
        let (b, t, n) = (dims[0], dims[dims.len() - 1], s.len());
        if m.len() != b * t {
            candle_core::bail!("mask-softmax: mask of {} for {b} texts of {t}", m.len());
        }
        let (rows, t32, per_text) = ((n / t) as u32, t as u32, (n / (b * t)) as u32);
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        let (func, stream) = (kernel(s1, "mask_softmax")?, dev.cuda_stream());
        let mut args = stream.launch_builder(&func);
        args.arg(&s)
            .arg(&m)
            .arg(&mut y)
            .arg(&rows)
            .arg(&t32)
            .arg(&per_text);
        // One warp per row, 8 rows per block.
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), l1.shape().clone()))
    }

    pub fn mask_softmax(
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        by_dtype!(s1, mask_softmax_t(s1, l1, s2, l2))
    }

    /// cuBLAS's data type for a 16-bit storage (the f32-scores paths take bf16 and f16 only).
    fn blas_type(
        dtype: DType,
        what: &str,
    ) -> Result<candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType_t> {
        use candle_core::cuda_backend::cudarc::cublas::sys::cudaDataType_t;
        match dtype {
            DType::BF16 => Ok(cudaDataType_t::CUDA_R_16BF),
            DType::F16 => Ok(cudaDataType_t::CUDA_R_16F),
            d => candle_core::bail!("{what}: {d:?} (16-bit only)"),
        }
    }

    /// A size as cuBLAS's `int`, or an error naming `what`.
    fn blas_int(v: usize, what: &str) -> Result<i32> {
        i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} too large")))
    }

    /// `mask_softmax_f32s_*` for `like`'s type: `rows` rows of `t` f32 `scores` plus the mask
    /// (b, t), `per_text` rows a text, into `y`; one warp per row, 8 rows per block (as
    /// mask_softmax).
    fn softmax_f32s<T: DeviceRepr>(
        like: &CudaStorage,
        scores: &candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>,
        mask: &CudaView<T>,
        y: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
        rows: usize,
        t: usize,
        per_text: usize,
    ) -> Result<()> {
        let (rows, t, per_text) = (rows as u32, t as u32, per_text as u32);
        let func = kernel(like, "mask_softmax_f32s")?;
        let stream = like.device().cuda_stream();
        let mut args = stream.launch_builder(&func);
        args.arg(scores)
            .arg(mask)
            .arg(y)
            .arg(&rows)
            .arg(&t)
            .arg(&per_text);
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(cfg) }.w()?;
        Ok(())
    }

    /// [`super::attention_probs`] for 16-bit `q` (b, heads, tq, d), `k` (b, heads, t, d) and the
    /// additive mask (b, t): the scores (b·heads, tq, t) in f32 from one strided batched GEMM
    /// (cuBLAS, 16-bit inputs, f32 output and accumulation), then `mask_softmax_f32s_*` to T.
    fn scores_softmax_t<T: CudaDType + DeviceRepr>(
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        m: &CudaStorage,
        lm: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::cublas::{result as blas, sys};
        use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
        let dev = q.device().clone();
        let (&[b, heads, tq, d], &[kb, kh, t, kd]) = (lq.dims(), lk.dims()) else {
            candle_core::bail!("scores-softmax: q {:?}, k {:?}", lq.dims(), lk.dims())
        };
        if (kb, kh, kd) != (b, heads, d) || lm.dims() != [b, t] {
            candle_core::bail!(
                "scores-softmax: q {:?}, k {:?}, mask {:?}",
                lq.dims(),
                lk.dims(),
                lm.dims()
            )
        }
        let data_type = blas_type(q.dtype(), "scores-softmax")?;
        let (qv, kv, mv) = (
            view::<T>(q, lq, "scores-softmax q")?,
            view::<T>(k, lk, "scores-softmax k")?,
            view::<T>(m, lm, "scores-softmax mask")?,
        );
        let n = b * heads * tq * t;
        let stream = dev.cuda_stream();
        // SAFETY: the GEMM below writes every element (beta 0).
        let mut scores = unsafe { dev.alloc::<f32>(n)? };
        {
            let int = |v: usize| blas_int(v, "scores-softmax");
            let (alpha, beta) = (1f32, 0f32);
            let (qp, _q_sync) = qv.device_ptr(&stream);
            let (kp, _k_sync) = kv.device_ptr(&stream);
            let (sp, _s_sync) = scores.device_ptr_mut(&stream);
            let handle = dev.cublas_handle();
            // Column-major: scoresᵀ (t × tq) = kᵀ-as-stored (op T of d × t) · q-as-stored (d × tq),
            // per text and head; the row-major (tq × t) scores, each row a query's.
            // SAFETY: the pointers are live for the call (their guards above) and sized for the
            // strides and counts given; the handle runs on the device's stream.
            unsafe {
                blas::gemm_strided_batched_ex(
                    *handle.handle(),
                    sys::cublasOperation_t::CUBLAS_OP_T,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    int(t)?,
                    int(tq)?,
                    int(d)?,
                    (&alpha) as *const f32 as *const _,
                    kp as *const _,
                    data_type,
                    int(d)?,
                    (t * d) as i64,
                    qp as *const _,
                    data_type,
                    int(d)?,
                    (tq * d) as i64,
                    (&beta) as *const f32 as *const _,
                    sp as *mut _,
                    sys::cudaDataType_t::CUDA_R_32F,
                    int(t)?,
                    (tq * t) as i64,
                    int(b * heads)?,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| candle_core::Error::Msg(format!("scores-softmax: cuBLAS: {e:?}")))?;
        }
        // SAFETY: every element is written by the kernel below.
        let mut y = unsafe { dev.alloc::<T>(n)? };
        softmax_f32s(q, &scores, &mv, &mut y, n / t, t, heads * tq)?;
        Ok((
            CudaStorage::wrap_cuda_slice(y, dev),
            Shape::from((b, heads, tq, t)),
        ))
    }

    pub fn scores_softmax(
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        m: &CudaStorage,
        lm: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match q.dtype() {
            DType::F16 => scores_softmax_t::<half::f16>(q, lq, k, lk, m, lm),
            DType::BF16 => scores_softmax_t::<half::bf16>(q, lq, k, lk, m, lm),
            d => candle_core::bail!("scores-softmax: {d:?} (16-bit only)"),
        }
    }

    /// [`super::packed_attention`]: two pointer-array batched GEMMs over (text, head) that read
    /// the queries, keys and values where the packed projection holds them (row stride 3·h) and
    /// write the context into token order (row stride h), with the f32 scores' mask + softmax
    /// between them.
    fn packed_attention_t<T: CudaDType + DeviceRepr>(
        [b, t, tq, heads, d]: [usize; 5],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::cublas::sys;
        use candle_core::cuda_backend::cudarc::driver::DevicePtrMut;
        let dev = s1.device().clone();
        let h = heads * d;
        if l1.dims() != [b * t, 3 * h] || l2.dims() != [b, t] || tq == 0 || tq > t {
            candle_core::bail!(
                "packed-attention: qkv {:?}, mask {:?} for b {b}, t {t}, tq {tq}, heads {heads}, d {d}",
                l1.dims(),
                l2.dims()
            )
        }
        let data_type = blas_type(s1.dtype(), "packed-attention")?;
        let int = |v: usize| blas_int(v, "packed-attention");
        let (qkv, mv) = (
            view::<T>(s1, l1, "packed-attention qkv")?,
            view::<T>(s2, l2, "packed-attention mask")?,
        );
        let stream = dev.cuda_stream();
        let pairs = b * heads;
        // SAFETY: each is written in full before it is read (the GEMMs with beta 0, the softmax).
        let mut scores = unsafe { dev.alloc::<f32>(pairs * tq * t)? };
        let mut probs = unsafe { dev.alloc::<T>(pairs * tq * t)? };
        let mut ctx = unsafe { dev.alloc::<T>(b * tq * h)? };
        // The buffers' addresses (all four live to the end of this function; one stream).
        let (qp, sp, pp, cp) = {
            let (qp, _q_sync) = qkv.device_ptr(&stream);
            let (sp, _s_sync) = scores.device_ptr_mut(&stream);
            let (pp, _p_sync) = probs.device_ptr_mut(&stream);
            let (cp, _c_sync) = ctx.device_ptr_mut(&stream);
            (qp, sp, pp, cp)
        };
        {
            // The six pointer tables, one entry per (text, head): queries, keys, values (in the
            // packed rows: part·h + head·d), scores, probabilities, context (token order).
            let el = std::mem::size_of::<T>() as u64;
            let mut table = vec![0u64; 6 * pairs];
            for bi in 0..b {
                for head in 0..heads {
                    let i = bi * heads + head;
                    let row0 = qp + (bi * t * 3 * h + head * d) as u64 * el;
                    table[i] = row0;
                    table[pairs + i] = row0 + h as u64 * el;
                    table[2 * pairs + i] = row0 + 2 * h as u64 * el;
                    table[3 * pairs + i] = sp + (i * tq * t * 4) as u64;
                    table[4 * pairs + i] = pp + (i * tq * t) as u64 * el;
                    table[5 * pairs + i] = cp + (bi * tq * h + head * d) as u64 * el;
                }
            }
            let table = stream.clone_htod(&table).w()?;
            let (tp, _t_sync) = table.device_ptr(&stream);
            let part = |k: usize| (tp + (k * pairs * 8) as u64) as *const *const std::ffi::c_void;
            let (alpha, beta) = (1f32, 0f32);
            let handle = dev.cublas_handle();
            // Column-major, per (text, head): scoresᵀ (t × tq) = keys (op T of d × t, ld 3h) ·
            // queries (d × tq, ld 3h): the row-major (tq × t) f32 scores.
            // SAFETY: the tables point into the buffers above, live for the calls (their guards),
            // each matrix within its buffer for these sizes and leading dimensions; the handle
            // runs on the device's stream.
            unsafe {
                sys::cublasGemmBatchedEx(
                    *handle.handle(),
                    sys::cublasOperation_t::CUBLAS_OP_T,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    int(t)?,
                    int(tq)?,
                    int(d)?,
                    (&alpha) as *const f32 as *const _,
                    part(1),
                    data_type,
                    int(3 * h)?,
                    part(0),
                    data_type,
                    int(3 * h)?,
                    (&beta) as *const f32 as *const _,
                    part(3) as *const *mut _,
                    sys::cudaDataType_t::CUDA_R_32F,
                    int(t)?,
                    int(pairs)?,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .result()
            }
            .map_err(|e| candle_core::Error::Msg(format!("packed-attention scores: cuBLAS: {e:?}")))?;
            softmax_f32s(s1, &scores, &mv, &mut probs, pairs * tq, t, heads * tq)?;
            // contextᵀ (d × tq) = values (d × t, ld 3h) · probabilitiesᵀ (t × tq, ld t), written
            // where the head's columns of its text's rows are (ld h).
            // SAFETY: as above.
            unsafe {
                sys::cublasGemmBatchedEx(
                    *handle.handle(),
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    int(d)?,
                    int(tq)?,
                    int(t)?,
                    (&alpha) as *const f32 as *const _,
                    part(2),
                    data_type,
                    int(3 * h)?,
                    part(4),
                    data_type,
                    int(t)?,
                    (&beta) as *const f32 as *const _,
                    part(5) as *const *mut _,
                    data_type,
                    int(h)?,
                    int(pairs)?,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .result()
            }
            .map_err(|e| candle_core::Error::Msg(format!("packed-attention context: cuBLAS: {e:?}")))?;
        }
        Ok((CudaStorage::wrap_cuda_slice(ctx, dev), Shape::from((b * tq, h))))
    }

    pub fn packed_attention(
        dims: [usize; 5],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F16 => packed_attention_t::<half::f16>(dims, s1, l1, s2, l2),
            DType::BF16 => packed_attention_t::<half::bf16>(dims, s1, l1, s2, l2),
            d => candle_core::bail!("packed-attention: {d:?} (16-bit only)"),
        }
    }

    /// One cuBLASLt handle (with its workspace) per device, made on first use.
    fn blas_lt(
        dev: &candle_core::CudaDevice,
    ) -> Result<std::sync::Arc<candle_core::cuda_backend::cudarc::cublaslt::CudaBlasLT>> {
        use candle_core::cuda_backend::cudarc::cublaslt::CudaBlasLT;
        use std::sync::{Arc, Mutex, OnceLock};
        type Handles = Mutex<Vec<(candle_core::cuda_backend::DeviceId, Arc<CudaBlasLT>)>>;
        static HANDLES: OnceLock<Handles> = OnceLock::new();
        let mut handles = HANDLES
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| candle_core::Error::Msg("cublasLt handles: poisoned lock".into()))?;
        if let Some((_, h)) = handles.iter().find(|(id, _)| *id == dev.id()) {
            return Ok(h.clone());
        }
        let h = Arc::new(
            CudaBlasLT::new(dev.cuda_stream())
                .map_err(|e| candle_core::Error::Msg(format!("cublasLt handle: {e:?}")))?,
        );
        handles.push((dev.id(), h.clone()));
        Ok(h)
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
        match s1.dtype() {
            DType::F16 => gemm_gelu_t::<half::f16>(gelu, s1, l1, s2, l2, s3, l3),
            DType::BF16 => gemm_gelu_t::<half::bf16>(gelu, s1, l1, s2, l2, s3, l3),
            d => candle_core::bail!("gemm-gelu: no {d:?} epilogue here (bf16 and f16 only)"),
        }
    }

    /// Whether `dev` is a GPU with bf16/f16 tensor cores (compute capability 8.0 or later).
    pub fn tensor_cores(dev: &candle_core::Device) -> bool {
        let candle_core::Device::Cuda(d) = dev else {
            return false;
        };
        d.cuda_stream()
            .context()
            .compute_capability()
            .is_ok_and(|(major, _)| major >= 8)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_t<T: CudaDType + DeviceRepr>(
        dims: [usize; 5],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute;
        let dev = s1.device().clone();
        let (qkv, bias, mask) = (
            view::<T>(s1, l1, "attention qkv")?,
            view::<T>(s2, l2, "attention bias")?,
            view::<T>(s3, l3, "attention mask")?,
        );
        let [b, t, tq, heads, d] = dims;
        let h = heads * d;
        // The kernel moves 16-byte vectors: the inputs must start on 16 bytes.
        let size = std::mem::size_of::<T>();
        let starts = [l1, l2, l3].map(|l| (l.start_offset() * size).is_multiple_of(16));
        if !matches!(d, 32 | 64) || t > super::ATTENTION_MAX_TOKENS || starts.contains(&false) {
            candle_core::bail!("attention: no kernel for head size {d}, {t} tokens, or unaligned inputs");
        }
        // Shared memory as the kernel lays it out (see kernels/fused.cu).
        let (tp, ld, queries) = (t.div_ceil(16) * 16, d + 8, 64);
        let smem = (queries * ld + 2 * tp * ld) * size + (queries * (tp + 4) + queries * (d + 4)) * 4;
        // SAFETY: the kernel writes every element of the first tq queries of every text: all of it.
        let mut y = unsafe { dev.alloc::<T>(b * tq * h)? };
        let func = kernel(s1, &format!("attention_d{d}"))?;
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .w()?;
        let stream = dev.cuda_stream();
        let [t32, tq32, h32] = [t, tq, heads].map(|v| v as u32);
        let mut args = stream.launch_builder(&func);
        args.arg(&qkv)
            .arg(&bias)
            .arg(&mask)
            .arg(&mut y)
            .arg(&t32)
            .arg(&tq32)
            .arg(&h32);
        let cfg = LaunchConfig {
            grid_dim: (tq.div_ceil(queries) as u32, heads as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        // SAFETY: the argument list matches the kernel's signature; the shapes were checked.
        unsafe { args.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((b, tq, h))))
    }

    pub fn attention(
        dims: [usize; 5],
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        match s1.dtype() {
            DType::F16 => attention_t::<half::f16>(dims, s1, l1, s2, l2, s3, l3),
            DType::BF16 => attention_t::<half::bf16>(dims, s1, l1, s2, l2, s3, l3),
            d => candle_core::bail!("attention: no {d:?} kernel (bf16 and f16 only)"),
        }
    }

    /// The elements of a contiguous f32 storage, for writing.
    fn span(l: &Layout, what: &str) -> Result<(usize, usize)> {
        l.contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))
    }

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The largest absolute value of an f32 tensor.
    pub(crate) fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    /// The largest absolute difference of two tensors (the engine's tests share it).
    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }
    use candle_core::Device;

    #[test]
    fn exp_matches_the_library() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

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

    /// A 16-bit model's attention probabilities come from unrounded scores: within one rounding
    /// of the probabilities of the softmax of the f32 scores of the same (rounded) queries and
    /// keys. Scores of this size rounded to the type first are off by several times that.
    #[test]
    fn sixteen_bit_attention_probs_come_from_f32_scores() {
        let dev = Device::Cpu;
        let (b, heads, t, d) = (2, 3, 21, 16);
        let mut m = vec![0f32; b * t];
        m[t + 13..].fill(-1e9);
        let mask = Tensor::from_vec(m, (b, t), &dev).unwrap();
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        for dtype in [DType::BF16, DType::F16] {
            let q = Tensor::randn(0f32, 1.5, (b, heads, t, d), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let k = Tensor::randn(0f32, 1.5, (b, heads, t, d), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let got = attention_probs(&q, &k, &mask.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(got.dtype(), dtype);
            let scores = f32(&q).matmul(&f32(&k).t().unwrap()).unwrap();
            let want = mask_softmax(&scores, &mask).unwrap();
            let diff = max_diff(&f32(&got), &want);
            // One rounding of probabilities up to 1: half a unit in the last place below 1.
            let rounding = if dtype == DType::BF16 {
                2f32.powi(-9)
            } else {
                2f32.powi(-12)
            };
            let rounded_first = mask_softmax(&f32(&q.matmul(&k.t().unwrap()).unwrap()), &mask).unwrap();
            let old = max_diff(&rounded_first, &want);
            eprintln!("{dtype:?}: {diff:.2e} from the f32 scores' softmax; scores rounded first: {old:.2e}");
            assert!(
                diff <= rounding,
                "{dtype:?}: {diff:e} from the f32 scores' softmax (one rounding: {rounding:e})"
            );
            // Queries alone (the last layer's [CLS]): the same rows.
            let q1 = q.narrow(2, 0, 1).unwrap().contiguous().unwrap();
            let got1 = attention_probs(&q1, &k, &mask.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(got1.dims(), [b, heads, 1, t]);
            assert_eq!(max_diff(&f32(&got1), &f32(&got.narrow(2, 0, 1).unwrap())), 0.0);
        }
    }

    #[test]
    fn attention_in_one_op_matches_candle_ops() {
        let (diff, ran) = check_attention(&Device::Cpu, DType::F32).unwrap();
        assert!(ran);
        assert!(diff < 1e-5, "attention differs by {diff} (relative)");
        // The op reads the layout the scoring path gives it: the same context as its own passes.
        let dev = Device::Cpu;
        let (b, t, heads, d) = (2, 9, 3, 8);
        let h = heads * d;
        let qkv = Tensor::randn(0f32, 1.0, (b * t, 3 * h), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 3 * h, &dev).unwrap();
        let mut m = vec![0f32; b * t];
        m[t + 6..].fill(-1e9);
        let mask = Tensor::from_vec(m, (b, t), &dev).unwrap();
        let split = qkv_split(&qkv, &bias, b, t, heads, d).unwrap();
        let (q, k, v) = (
            split.get(0).unwrap(),
            split.get(1).unwrap(),
            split.get(2).unwrap(),
        );
        let probs = mask_softmax(&q.matmul(&k.t().unwrap()).unwrap(), &mask).unwrap();
        let want = merge_heads(&probs.matmul(&v).unwrap())
            .unwrap()
            .reshape((b * t, h))
            .unwrap();
        let got = attention(&qkv, &bias, &mask, b, t, t, heads, d).unwrap();
        assert!(max_diff(&want, &got) < 1e-5);
        // [CLS] alone: the first query of each text.
        let got1 = attention(&qkv, &bias, &mask, b, t, 1, heads, d).unwrap();
        let want1 = want
            .reshape((b, t, h))
            .unwrap()
            .narrow(1, 0, 1)
            .unwrap()
            .reshape((b, h))
            .unwrap();
        assert!(max_diff(&want1, &got1) < 1e-5);
        // Shapes that do not fit are an error, not a wrong answer.
        assert!(attention(&qkv, &bias, &mask, b, t + 1, t, heads, d).is_err());
        assert!(attention(&qkv, &bias, &mask, b, t, t + 1, heads, d).is_err());
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
