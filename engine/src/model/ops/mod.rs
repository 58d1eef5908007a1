//! The model's fused operations, by family. Each family file holds its scoring pass (no backward:
//! the model's inference mode), its training twin (with its backward, or its backward by hand) and
//! both launchers side by side, each falling back to candle's operations computing the same where
//! it has no kernel (dtypes other than f32 on the CPU; CUDA with the switches off), over shared
//! plumbing: [`cpu`] and [`cuda`] (storage access, PTX, launch shapes, cuBLAS helpers), [`math`]
//! (the scalar math) and [`switches`] (the one place that reads the `VIRALCLIP_*` switches).
//!
//! CPU loops here and CUDA kernels in `kernels/fused.cu` compute the same; a test holds each pass
//! to candle's operations (values and, for training, gradients), and `cuda_launch` holds every
//! launcher to the CPU path.

/// `fn cpu_fwd` of a candle custom op over `n` storages, named in the call:
/// `cpu_fwd!(self, s1, l1, s2, l2 => { body })` (the same signature whatever the op, written once).
macro_rules! cpu_fwd {
    ($self:ident, $($s:ident, $l:ident),+ => $body:block) => {
        fn cpu_fwd(
            &$self,
            $($s: &candle_core::CpuStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> $body
    };
}

/// `fn cuda_fwd` of a candle custom op (`cuda` builds), as [`cpu_fwd!`].
macro_rules! cuda_fwd {
    ($self:ident, $($s:ident, $l:ident),+ => $body:block) => {
        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &$self,
            $($s: &candle_core::CudaStorage, $l: &candle_core::Layout),+
        ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> $body
    };
}

pub mod attention;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod dropout;
pub mod ffn;
pub mod layout;
pub mod loss;
pub mod math;
pub mod norm;
pub mod projection;
pub mod softmax;
pub mod switches;
#[cfg(test)]
pub(crate) mod testing;
