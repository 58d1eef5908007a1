//! Choosing where the model runs: `cpu`, `cuda`, or `auto` (CUDA when this build has it and a GPU
//! answers, CPU otherwise), and in which precision.

use crate::error::{Error, Result};
use candle_core::{DType, Device};

/// The device a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    #[default]
    Auto,
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            _ => Err(format!("unknown device {s:?} (cpu, cuda or auto)")),
        }
    }
}

/// Numeric precision of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// fp32 everywhere (the default on CPU).
    F32,
    /// bf16 weights and activations (the default on CUDA).
    Bf16,
    F16,
    /// fp32 storage with TF32 matrix products on CUDA (opt-in in candle; same as F32 on a CPU).
    Tf32,
    /// Pick for the device: bf16 on CUDA, fp32 on CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            "tf32" => Ok(Precision::Tf32),
            "auto" => Ok(Precision::Auto),
            _ => Err(format!("unknown precision {s:?} (f32, tf32, bf16, f16 or auto)")),
        }
    }
}

impl Precision {
    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Precision::F32 | Precision::Tf32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
            Precision::Auto if device.is_cuda() => DType::BF16,
            Precision::Auto => DType::F32,
        }
    }
}

impl Precision {
    /// Applies process-wide settings the precision needs (TF32 matrix products on CUDA).
    pub fn configure(self, device: &Device) {
        if device.is_cuda() {
            candle_core::cuda::set_gemm_reduced_precision_f32(self == Precision::Tf32);
        }
    }
}

/// Opens the device; `auto` and a failed `cuda` fall back to the CPU, saying why in the second
/// value.
pub fn open(choice: DeviceChoice) -> Result<(Device, Option<String>)> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::Cpu, None)),
        DeviceChoice::Cuda | DeviceChoice::Auto => {
            if !cfg!(feature = "cuda") {
                return match choice {
                    DeviceChoice::Cuda => Err(Error::Unsupported("cuda")),
                    _ => Ok((Device::Cpu, None)),
                };
            }
            match Device::new_cuda(0) {
                Ok(d) => Ok((d, None)),
                Err(e) => Ok((
                    Device::Cpu,
                    Some(format!("no usable CUDA device ({e}); running on the CPU")),
                )),
            }
        }
    }
}

/// Short human name of a device.
pub fn name(device: &Device) -> &'static str {
    if device.is_cuda() {
        "cuda"
    } else if device.is_metal() {
        "metal"
    } else {
        "cpu"
    }
}
