//! The CUDA kernels (`kernels/fused.cu`) on the CPU: `kernels/emu/check.cpp` runs every kernel
//! through a CUDA emulation (`kernels/emu/cuda_emu.h`: a std::thread per CUDA thread, barriers,
//! warp shuffles, WMMA tiles), launched as the engine's launchers launch them, and compares each
//! with a plain double-precision reference. It runs twice: built with AddressSanitizer, so a read or
//! write past an input, an output or the shared memory is an error; and with ThreadSanitizer, so a
//! missing `__syncthreads()` or `__syncwarp()` is a reported race (and a misaligned 16-byte vector
//! an error). No GPU is needed: CI checks the kernels' arithmetic and
//! indexing on every run; what only a GPU shows (speed, the hardware's own fragment layout) is for
//! `scripts/gpu-check.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The C++ compiler: $CXX, else the first of c++, g++, clang++ that runs.
fn compiler() -> String {
    let candidates: Vec<String> = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from))
        .collect();
    candidates
        .iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .cloned()
        .unwrap_or_else(|| {
            panic!("no C++20 compiler (tried {candidates:?}): install g++ or clang, or set CXX")
        })
}

fn build(cxx: &str, out: &Path, sanitize: Option<&str>) -> std::process::Output {
    let emu = common::repo().join("engine/kernels/emu");
    let mut cmd = Command::new(cxx);
    cmd.args([
        "-std=c++20",
        "-O2",
        "-g",
        "-pthread",
        "-fno-strict-aliasing",
        "-Wall",
    ])
    .arg("-Wno-unknown-pragmas")
    .arg(format!("-I{}", emu.join("include").display()));
    if let Some(s) = sanitize {
        cmd.args([
            &format!("-fsanitize={s}"),
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]);
    }
    cmd.arg(emu.join("check.cpp")).arg("-o").arg(out);
    cmd.output().expect("running the C++ compiler")
}

/// Builds check.cpp with each sanitizer the compiler has (a plain build if it has none) and runs
/// it; returns the report of the last run. Panics when a build or a run fails.
fn run_checks() -> String {
    let cxx = compiler();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // Out-of-bounds reads and writes (global and shared memory), then races between threads (a
    // missing barrier) and misaligned 16-byte vectors.
    let variants = [("address,undefined", "asan"), ("thread,alignment", "tsan")];
    let mut report = None;
    for (sanitize, tag) in variants {
        let bin = dir.join(format!("kernels-emulated-{tag}"));
        let built = build(&cxx, &bin, Some(sanitize));
        if !built.status.success() {
            eprintln!(
                "NOTE: {cxx} could not build with -fsanitize={sanitize} ({}); that run is left out",
                String::from_utf8_lossy(&built.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            continue;
        }
        report = run(&bin, sanitize).or(report);
    }
    report.unwrap_or_else(|| {
        let bin = dir.join("kernels-emulated");
        let plain = build(&cxx, &bin, None);
        assert!(
            plain.status.success(),
            "{cxx} failed on kernels/emu/check.cpp:\n{}",
            String::from_utf8_lossy(&plain.stderr)
        );
        run(&bin, "no sanitizer").expect("a build without a sanitizer starts")
    })
}

/// Runs the checks; `None` when the sanitizer's runtime could not start on this machine (before
/// `main`: some kernels' address-space layouts defeat ThreadSanitizer), which is said, not hidden.
fn run(bin: &Path, what: &str) -> Option<String> {
    let started = std::time::Instant::now();
    let run = Command::new(bin)
        .env("TSAN_OPTIONS", "halt_on_error=1")
        .output()
        .expect("running the emulated kernels");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("-- {what}, {:.0} s:\n{stdout}", started.elapsed().as_secs_f64());
    if stdout.is_empty() && stderr.contains("FATAL:") && stderr.contains("Sanitizer") {
        eprintln!("NOTE: the {what} runtime did not start here; that run is left out:\n{stderr}");
        return None;
    }
    assert!(
        run.status.success(),
        "the emulated kernels failed under {what} ({}):\n{stdout}\n{stderr}",
        run.status
    );
    Some(stdout)
}

#[test]
fn cuda_kernels_match_plain_references_in_cpu_emulation() {
    let stdout = run_checks();
    // Every kernel of fused.cu has a case: its name (for those a macro stamps out per element
    // type, the name before the type) starts a line of the report.
    let cu = std::fs::read_to_string(common::repo().join("engine/kernels/fused.cu")).unwrap();
    let kernels: Vec<&str> = cu
        .split("__global__ void")
        .skip(1)
        .map(|rest| {
            // Skips white space, a macro's line continuations and __launch_bounds__(...).
            fn skip(s: &str) -> &str {
                s.trim_start_matches(|c: char| c.is_whitespace() || c == '\\')
            }
            let rest = skip(rest);
            let rest = match rest.strip_prefix("__launch_bounds__(") {
                Some(r) => skip(r.split_once(')').expect("__launch_bounds__(...)").1),
                None => rest,
            };
            let name = rest.split('(').next().unwrap_or("");
            name.split("##").next().unwrap_or(name).trim_end_matches('_')
        })
        .collect();
    assert!(kernels.len() >= 20, "found only {kernels:?} in fused.cu");
    for name in &kernels {
        assert!(
            stdout
                .lines()
                .any(|l| l.get(5..).is_some_and(|l| l.starts_with(name))),
            "kernel {name} has no case in kernels/emu/check.cpp"
        );
    }
    assert!(
        stdout.lines().any(|l| l.ends_with(" 0 off")),
        "no summary line in:\n{stdout}"
    );
}
