//! CUDA plumbing the launchers share (`cuda` builds): the PTX of `kernels/fused.cu` (built by
//! build.rs) and its functions, contiguous views, launch shapes, pointer tables, cuBLAS(Lt)
//! helpers and a pass by hand over tensors that candle's custom operations do not fit.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaView, DevicePtr, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result};

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
pub(crate) const MODULE: &str = "viralclip_fused";

/// The elements of a contiguous input.
pub(crate) fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

/// The f32 elements of contiguous inputs, each named for its error.
pub(crate) fn views<'a, const N: usize>(
    inputs: [(&'a CudaStorage, &Layout, &str); N],
) -> Result<[CudaView<'a, f32>; N]> {
    let mut out = Vec::with_capacity(N);
    for (s, l, what) in inputs {
        out.push(view::<f32>(s, l, what)?);
    }
    out.try_into()
        .map_err(|_| candle_core::Error::Msg("views: count".into()))
}

/// The kernel `{name}_{f32|f16|bf16}` for `s`'s element type.
pub(crate) fn kernel(s: &CudaStorage, name: &str) -> Result<CudaFunction> {
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

/// The function `name` of the module (exact name, no dtype suffix) on `dev`.
pub(crate) fn function(dev: &CudaDevice, name: &str) -> Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function())
}

/// A new output written by one kernel launch: `launch_new!(like, func, T, n, cfg; [inputs], [scalars])`
/// allocates `n` elements of `T` on `like`'s device, launches `func` with `cfg` and the arguments in
/// the kernel's order (the inputs, the output, the scalars), and is the output as a storage.
/// The caller's contract (why the two `unsafe` blocks inside are sound): the kernel writes every
/// element of the output, and the arguments match its signature.
macro_rules! launch_new {
    ($like:expr, $func:expr, $t:ty, $n:expr, $cfg:expr; [$($input:expr),* $(,)?], [$($scalar:expr),* $(,)?]) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        use candle_core::cuda_backend::WrapErr as _;
        let dev = candle_core::backend::BackendStorage::device($like).clone();
        let func = $func;
        // SAFETY: the kernel writes every element (the caller's contract).
        let mut out = unsafe { dev.alloc::<$t>($n)? };
        {
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&func);
            $(args.arg($input);)*
            args.arg(&mut out);
            $(args.arg($scalar);)*
            // SAFETY: the argument list matches the kernel's signature (the caller's contract).
            unsafe { args.launch($cfg) }.w()?;
        }
        candle_core::cuda_backend::CudaStorage::wrap_cuda_slice(out, dev)
    }};
}
pub(crate) use launch_new;

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
pub(crate) use by_dtype;

/// Calls `$f::<T>(args)` with `T` the 16-bit element type of storage `$s` (bf16 or f16; other
/// types are an error naming `$what`).
macro_rules! by_half {
    ($s:expr, $what:expr, $f:ident($($arg:expr),*)) => {
        match $s.dtype() {
            DType::F16 => $f::<half::f16>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            d => candle_core::bail!("{}: no {d:?} kernel (bf16 and f16 only)", $what),
        }
    };
}
pub(crate) use by_half;

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
pub(crate) fn per_vector(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n.div_ceil(8).max(1) as u32)
}

/// One warp per row, 8 rows a block.
pub(crate) fn per_warp_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(8), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of 128 threads per row.
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The elements of a contiguous f32 storage, for writing.
pub(crate) fn span(l: &Layout, what: &str) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))
}

/// cuBLAS's data type for a 16-bit storage (the f32-scores paths take bf16 and f16 only).
pub(crate) fn blas_type(
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
pub(crate) fn blas_int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what}: {v} too large")))
}

/// One cuBLASLt handle (with its workspace) per device, made on first use.
pub(crate) fn blas_lt(
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

/// Whether `dev` is a GPU with bf16/f16 tensor cores (compute capability 8.0 or later).
pub(crate) fn tensor_cores(dev: &candle_core::Device) -> bool {
    let candle_core::Device::Cuda(d) = dev else {
        return false;
    };
    d.cuda_stream()
        .context()
        .compute_capability()
        .is_ok_and(|(major, _)| major >= 8)
}

/// A pass by hand over contiguous f32 CUDA tensors that candle's custom operations do not
/// fit: `f` gets the device, the inputs' addresses and that of `n` new elements to write,
/// returned as a 1-D tensor.
pub(crate) fn cuda_pass(
    inputs: &[candle_core::Tensor],
    n: usize,
    what: &str,
    f: impl FnOnce(&CudaDevice, &[u64], u64) -> Result<()>,
) -> Result<candle_core::Tensor> {
    let mut dev = None;
    let mut ptrs = Vec::with_capacity(inputs.len());
    for t in inputs {
        let (d, p) = address(t, what)?;
        dev.get_or_insert(d);
        ptrs.push(p);
    }
    let dev = dev.ok_or_else(|| candle_core::Error::Msg(format!("{what}: no inputs")))?;
    // SAFETY: `f`'s kernel writes every element.
    let out = unsafe { dev.alloc::<f32>(n)? };
    let base = out.device_ptr(&dev.cuda_stream()).0;
    f(&dev, &ptrs, base)?;
    Ok(candle_core::Tensor::from_storage(
        candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(out, dev)),
        n,
        candle_core::op::BackpropOp::none(),
        false,
    ))
}
