//! With the `cuda` feature, compiles `kernels/fused.cu` to PTX for the scoring path's fused
//! kernels (nvcc from $NVCC, $CUDA_HOME/bin or PATH; the target from $CUDA_COMPUTE_CAP, as for
//! candle's own kernels).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels/fused.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("fused.ptx");
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("kernels/fused.cu")
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the cuda feature needs nvcc; set NVCC or CUDA_HOME)",
                nvcc.display()
            )
        });
    assert!(status.success(), "nvcc failed on kernels/fused.cu");
}
