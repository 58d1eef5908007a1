#!/usr/bin/env bash
# Builds `viralclip` with CUDA for the model and for Whisper (whisper.cpp's CUDA backend) on a
# machine without a GPU or a CUDA toolkit install: nvcc and the libraries come from PyPI
# (../shared/tools/cuda-env.sh). Long: whisper.cpp's CUDA kernels took ~45 minutes on 2 cores.
#
#   scripts/build-whisper-cuda.sh            # → $CARGO_TARGET_DIR/release/viralclip
#
# whisper-rs-sys links libculibos, a static helper of the CUDA toolkit's static libraries that no
# wheel ships; with the shared cuBLAS/cudart it links here nothing in it is used, so an empty
# archive stands in for it. The binary needs the NVIDIA driver (libcuda.so.1) and the CUDA 13
# libraries to start: it is for GPU hosts only.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1090
source "$(../shared/tools/cuda-env.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/viralclip-whisper-cuda-target}
export GGML_NATIVE=OFF CMAKE_CUDA_ARCHITECTURES=${CMAKE_CUDA_ARCHITECTURES:-$CUDA_COMPUTE_CAP}
stub=$CARGO_TARGET_DIR/culibos-stub
mkdir -p "$stub"
[[ -f $stub/libculibos.a ]] || ar rcs "$stub/libculibos.a"
export LIBRARY_PATH=$stub:$LIBRARY_PATH
cargo build --release -p viralclip --features cuda,whisper-cuda "$@"
echo "built $CARGO_TARGET_DIR/release/viralclip"
