#!/usr/bin/env bash
# Scoring throughput of viralclip's engine and of PyTorch (the original project's stack) side by
# side on this machine: one JSON line per case from each. Needs the fixtures, and a Python with
# torch and transformers ($PYTHON, default python3).
#   scripts/bench.sh [--device cuda] [--shapes 1x128,32x128,256x128,256x32,1024x32] [--dtypes f32,bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu; shapes=1x128,8x128,32x32,32x128; dtypes=f32; secs=3
while (($#)); do
  case $1 in
    --device) device=$2; shift 2;;
    --shapes) shapes=$2; shift 2;;
    --dtypes) dtypes=$2; shift 2;;
    --secs) secs=$2; shift 2;;
    *) echo "unknown flag $1" >&2; exit 2;;
  esac
done
f=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env
# shellcheck disable=SC1090
[[ -f $f ]] && source "$f"
bin=${VIRALCLIP_BIN:-target/release/viralclip}
[[ -x $bin ]] || cargo build --release -q -p viralclip
"$bin" bench --device "$device" --encoder "$VIRALCLIP_ENCODER_MULTILINGUAL" --rubert-shape \
  --shapes "$shapes" --precision "$dtypes" --secs "$secs"
"${PYTHON:-python3}" bench/pytorch_bench.py --device "$device" --encoder "$VIRALCLIP_ENCODER_MULTILINGUAL" \
  --rubert-shape --shapes "$shapes" --dtypes "$dtypes" --secs "$secs"
