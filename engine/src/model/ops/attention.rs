//! Attention as a whole, for scoring: the probabilities from f32 scores for a 16-bit model
//! ([`attention_probs`]), attention read straight from the packed projection with cuBLAS's
//! pointer-array GEMMs ([`packed_attention`]), and attention in one kernel for short texts
//! ([`attention`], opt-in). Training builds attention from [`super::softmax`] and
//! [`super::layout`].

use super::cpu::contiguous_f32;
use super::math::exp;
use super::softmax::mask_softmax;
use super::switches::scores_in_f32;
#[cfg(feature = "cuda")]
use super::switches::{fused_attn_on, fused_cuda, packed_attn_on};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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

    cpu_fwd!(self, _s1, _l1, _s2, _l2, _s3, _l3 => {
        candle_core::bail!("scores-softmax runs on CUDA (the CPU's attention_probs converts to f32)")
    });

    cuda_fwd!(self, q, lq, k, lk, m, lm => {
        launch::scores_softmax(q, lq, k, lk, m, lm)
    });
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

    // The same arithmetic as the CUDA kernel in f32 (scores, mask, softmax, context), text by
    // text and head by head; it checks the op's layout on the CPU.
    cpu_fwd!(self, s1, l1, s2, l2, s3, l3 => {
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
    });

    cuda_fwd!(self, s1, l1, s2, l2, s3, l3 => {
        self.check(l1, l2, l3)?;
        launch::attention(
            [self.b, self.t, self.tq, self.heads, self.d],
            s1,
            l1,
            s2,
            l2,
            s3,
            l3,
        )
    });
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
            && super::cuda::tensor_cores(qkv.device())
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

    cpu_fwd!(self, _s1, _l1, _s2, _l2 => {
        let PackedAttention { b, t, tq, heads, d } = *self;
        candle_core::bail!(
            "packed-attention (b {b}, t {t}, tq {tq}, heads {heads}, d {d}): cuBLAS's pointer-array GEMMs, CUDA only"
        )
    });

    cuda_fwd!(self, s1, l1, s2, l2 => {
        launch::packed_attention([self.b, self.t, self.tq, self.heads, self.d], s1, l1, s2, l2)
    });
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

#[cfg(feature = "cuda")]
mod launch {
    //! The attention launchers: cuBLAS's GEMMs for the scores and the context, the f32 scores'
    //! mask + softmax, and the one-kernel attention.
    use crate::model::ops::cuda::{blas_int, blas_type, by_half, kernel, per_warp_row, view};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, CudaStorage, WrapErr};
    use candle_core::{DType, Layout, Result, Shape};

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
        // SAFETY: the argument list matches the kernel's signature.
        unsafe { args.launch(per_warp_row(rows)) }.w()?;
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
        by_half!(q, "scores-softmax", scores_softmax_t(q, lq, k, lk, m, lm))
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
        by_half!(s1, "packed-attention", packed_attention_t(dims, s1, l1, s2, l2))
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
        by_half!(s1, "attention", attention_t(dims, s1, l1, s2, l2, s3, l3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checks::check_attention;
    use crate::model::ops::layout::{merge_heads, qkv_split};
    use crate::model::ops::testing::max_diff;
    use candle_core::Device;

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
            // Queries alone (the last layer's [CLS]): the same rows, up to one rounding. The CPU
            // GEMM sums a 1-row product in another order than a 21-row one, so an f32 score a few
            // ulps apart can round to the neighbouring 16-bit probability (CI saw 7.6e-6 in F16).
            let q1 = q.narrow(2, 0, 1).unwrap().contiguous().unwrap();
            let got1 = attention_probs(&q1, &k, &mask.to_dtype(dtype).unwrap()).unwrap();
            assert_eq!(got1.dims(), [b, heads, 1, t]);
            let row = max_diff(&f32(&got1), &f32(&got.narrow(2, 0, 1).unwrap()));
            assert!(
                row <= rounding,
                "{dtype:?}: the [CLS] row alone differs by {row:e} (one rounding: {rounding:e})"
            );
            let row_want = max_diff(&f32(&got1), &want.narrow(2, 0, 1).unwrap());
            assert!(
                row_want <= rounding,
                "{dtype:?}: the [CLS] row is {row_want:e} off"
            );
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
}
