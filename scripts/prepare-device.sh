#!/usr/bin/env bash
# Prepares .device/ for scripts/gpu-check.sh, on this machine, for a lent GPU host with no network:
#   .device/viralclip.xz  a release `--no-default-features --features cuda` binary (sm_$CUDA_COMPUTE_CAP),
#                         stripped and compressed (gpu-check.sh unpacks it);
#   .device/kernels-gpu   the kernels' own checks, engine/kernels/emu/check.cpp built by nvcc;
#   .device/e5            multilingual-e5-small shrunk to the pieces the data uses (bench/shrink_encoder.py);
#   .device/data          the training data and the demo's script (read from ../shared, never committed).
# Then, with the `run` tool: carry [".device/viralclip.xz", ".device/kernels-gpu", ".device/e5",
# ".device/data"] and run `bash scripts/gpu-check.sh --steps` or `--quick` (README, "GPU (CUDA)").
# Needs the fixtures (../shared/tools/fetch-fixtures.sh) and ../shared/tools/cuda-env.sh (nvcc 13.0
# from PyPI, a stub libcuda). About 8 minutes cold on 2 cores, 1-2 after.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
CAP=${CUDA_COMPUTE_CAP:-90}
TARGET=${CUDA_TARGET_DIR:-$HOME/.cache/viralclip-cuda-target}
# shellcheck disable=SC1091
source "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env"
mkdir -p .device/data
grep -qx '/.device' .gitignore || { echo "add /.device to .gitignore first" >&2; exit 1; }

echo "== data"
D=$SHARED/data
cp -f "$D/goemotions-en/train.tsv" "$D/goemotions-ru/validation.csv" \
  "$D/clickbait/clickbait.txt.gz" "$D/clickbait/non_clickbait.txt.gz" .device/data/
cp -f assets/demo/script.ru.txt .device/data/demo.txt
chmod u+w .device/data/*

echo "== e5-small, shrunk to the data's pieces"
py=.venv/bin/python
if ! "$py" -c 'import numpy, safetensors, tokenizers' 2>/dev/null; then
  python3 -m venv .venv
  "$py" -m pip install -q numpy safetensors tokenizers
fi
rm -rf .device/e5
"$py" bench/shrink_encoder.py --prefix "query: " "$VIRALCLIP_ENCODER_MULTILINGUAL" .device/e5 \
  .device/data/train.tsv .device/data/validation.csv .device/data/clickbait.txt.gz \
  .device/data/non_clickbait.txt.gz .device/data/demo.txt

echo "== the binary and the kernels' checks (sm_$CAP)"
cuda_env=$("$SHARED/tools/cuda-env.sh")
(
  # shellcheck disable=SC1090
  source "$cuda_env"
  CUDA_COMPUTE_CAP=$CAP CARGO_TARGET_DIR=$TARGET cargo build --release -p viralclip \
    --no-default-features --features cuda
  nvcc -x cu -std=c++20 -O2 -arch="sm_$CAP" engine/kernels/emu/check.cpp -o .device/kernels-gpu
)
strip -o .device/viralclip "$TARGET/release/viralclip"
rm -f .device/viralclip.xz
xz -T2 -6 .device/viralclip
echo "built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')" \
  | tee .device/data/VERSION
du -sh .device/* | sort -k2
