//! The one place that reads the fused passes' switches: the `VIRALCLIP_*` environment variables
//! (each read once), the per-thread switches tests and comparisons use, and which passes run on
//! which tensors.

use candle_core::{DType, Tensor};
use std::cell::Cell;

thread_local! {
    static OFF: Cell<bool> = const { Cell::new(false) };
    static NO_DROPOUT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with dropout switched off on this thread (even when training): for
/// comparing two ways of computing the same training step, whose masks would differ.
pub fn without_dropout<R>(f: impl FnOnce() -> R) -> R {
    let was = NO_DROPOUT.with(|o| o.replace(true));
    let r = f();
    NO_DROPOUT.with(|o| o.set(was));
    r
}

/// Whether [`without_dropout`] switched dropout off on this thread.
pub(crate) fn dropout_off() -> bool {
    NO_DROPOUT.with(|o| o.get())
}

/// Runs `f` with the fused training operations and the fused optimiser step
/// ([`super::step`]) switched off on this thread (candle's operations instead): for comparing the
/// two.
pub fn without_fused<R>(f: impl FnOnce() -> R) -> R {
    let was = OFF.with(|o| o.replace(true));
    let r = f();
    OFF.with(|o| o.set(was));
    r
}

/// The kernels here run on CPU f32 tensors, and on CUDA tensors (f32, f16, bf16) unless
/// `VIRALCLIP_FUSED_CUDA=0` (checked against the CPU path on an H200: bf16 scores within 6.2e-3 of
/// fp32 CPU, f16 1.0e-3, TF32 3e-4, f32 equal). All operands must share one dtype.
pub(crate) fn fused_scoring(ts: &[&Tensor]) -> bool {
    let same = ts.windows(2).all(|w| w[0].dtype() == w[1].dtype());
    let cpu = ts.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    same && (cpu || (fused_cuda() && ts.iter().all(|t| t.device().is_cuda())))
}

/// Whether the fused operations (and training by hand, and the fused optimiser step) run on
/// these tensors.
pub(crate) fn fused_training(ts: &[&Tensor]) -> bool {
    if OFF.with(|o| o.get()) {
        return false;
    }
    let f32s = ts.iter().all(|t| t.dtype() == DType::F32);
    let cpu = ts.iter().all(|t| t.device().is_cpu());
    f32s && (cpu || (fused_train_cuda() && ts.iter().all(|t| t.device().is_cuda())))
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

/// Whether the training path's fused CUDA kernels run (the training twins in these families, and the optimiser's one-pass
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

/// Whether a model in `dtype` keeps its attention scores in f32 between their product and the
/// softmax ([`attention_probs`]): the 16-bit ones, unless `VIRALCLIP_F32_SCORES=0` (for timing
/// what it costs).
pub fn scores_in_f32(dtype: DType) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    matches!(dtype, DType::BF16 | DType::F16)
        && !*OFF.get_or_init(|| std::env::var("VIRALCLIP_F32_SCORES").is_ok_and(|v| v == "0"))
}

/// Whether CUDA's layer norm uses the vectorised warp-per-row kernel: on unless
/// `VIRALCLIP_LN_VEC=0` (the block-per-row one; on an H200 the vectorised one took 40 µs a norm
/// against 118 at 256×128 on the ruBert-base shape).
#[cfg(feature = "cuda")]
pub(crate) fn ln_vec() -> bool {
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
pub(crate) fn fused_attn_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    env_is(&ON, "VIRALCLIP_FUSED_ATTN", "1")
}

/// [`packed_attention`] where it fits unless `VIRALCLIP_PACKED_ATTN=0`.
#[cfg(feature = "cuda")]
pub(crate) fn packed_attn_on() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !env_is(&OFF, "VIRALCLIP_PACKED_ATTN", "0")
}

/// The FFN's first GEMM with cuBLASLt's epilogue ([`gemm_gelu_fits`]) unless
/// `VIRALCLIP_GEMM_GELU=0`.
#[cfg(feature = "cuda")]
pub(crate) fn gemm_gelu_on() -> bool {
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
        if fused_attn_on() && sixteen && super::cuda::tensor_cores(dev) {
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
