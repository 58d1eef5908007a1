//! CPU plumbing the passes share: a contiguous f32 storage's elements, and a pass by hand over
//! tensors that candle's custom operations (three inputs at most) do not fit.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Tensor};

/// Rows handed to one rayon task at least (keeps the per-task overhead small for short rows).
pub(crate) const MIN_ROWS_PER_TASK: usize = 8;

/// The elements of a contiguous f32 storage.
pub(crate) fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

/// The elements of contiguous f32 storages, each named for its error.
pub(crate) fn f32_inputs<'a, const N: usize>(
    inputs: [(&'a CpuStorage, &Layout, &str); N],
) -> Result<[&'a [f32]; N]> {
    let mut out = [&[][..]; N];
    for (o, (s, l, what)) in out.iter_mut().zip(inputs) {
        *o = contiguous_f32(s, l, what)?;
    }
    Ok(out)
}

/// The elements of a contiguous f32 storage, for writing.
pub(crate) fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what}: expected f32"),
    }
}

/// A pass by hand over contiguous f32 CPU tensors that candle's custom operations (three inputs
/// at most) do not fit: `f` gets their elements and `n` new ones to write, returned as a 1-D tensor.
pub(crate) fn cpu_pass(
    inputs: &[Tensor],
    n: usize,
    what: &str,
    f: impl FnOnce(&[&[f32]], &mut [f32]),
) -> Result<Tensor> {
    let guards: Vec<_> = inputs.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(s, l)| match &**s {
            candle_core::Storage::Cpu(s) => contiguous_f32(s, l, what),
            _ => candle_core::bail!("{what}: expected CPU tensors"),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = vec![0f32; n];
    f(&slices, &mut out);
    Tensor::from_vec(out, n, &candle_core::Device::Cpu)
}
