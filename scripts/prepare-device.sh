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
#
# With --video, for the whole video on the card (gpu-check.sh --video, issue 27), instead of the
# scoring binary:
#   .device/video        the full binary (media, Whisper on CUDA, the model on CUDA:
#                        scripts/build-whisper-cuda.sh, about 45 minutes cold), FFmpeg's libraries
#                        for a host without them (scripts/build-ffmpeg-device.sh) and every library
#                        they and the binary need that is not glibc, libstdc++ or CUDA's; the font
#                        and a fontconfig file naming only it; YuNet; the hour (bench/hour-video.sh)
#                        with its subtitles;
#   .device/whisper      Whisper base in q5_0 (55 MB; the default q8_0, 82 MB, is over what one
#                        call carries);
# all of it with e5, the data and the kernels' checks in one bundle cut into parts
# (.device/part-K-of-N-SUM) that each travel in a call of their own, since a call carries 64 MiB
# with the tree: `bash scripts/gpu-check.sh --receive` keeps each but the last, and
# `bash scripts/gpu-check.sh --video` with the last joins, checks and runs them. It prints the calls.
set -euo pipefail
video=0
for a in "$@"; do
  case $a in
    --video) video=1 ;;
    *) echo "unknown option $a" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
CAP=${CUDA_COMPUTE_CAP:-90}
TARGET=${CUDA_TARGET_DIR:-$HOME/.cache/viralclip-cuda-target}
# shellcheck disable=SC1091
source "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env"
mkdir -p .device/data
grep -qx '/.device' .gitignore || { echo "add /.device to .gitignore first" >&2; exit 1; }

# The full binary, FFmpeg and what they link, the font, YuNet, the hour; Whisper apart.
prepare_video() {
  local wtarget=${WHISPER_CUDA_TARGET_DIR:-$HOME/.cache/viralclip-whisper-cuda-target}
  local ff=${FFMPEG_DEVICE:-$HOME/.cache/viralclip-ffmpeg-device} hour=$HOME/.cache/viralclip-bench/hour
  local V=.device/video
  echo "== the full binary: Whisper on CUDA (about 45 minutes cold)"
  CMAKE_CUDA_ARCHITECTURES=$CAP CUDA_COMPUTE_CAP=$CAP CARGO_TARGET_DIR=$wtarget scripts/build-whisper-cuda.sh
  echo "== FFmpeg for a host without it"
  scripts/build-ffmpeg-device.sh
  [[ -f $hour/hour.mp4 && -f $hour/hour.srt ]] || bench/hour-video.sh "$hour"
  rm -rf "$V" .device/whisper
  mkdir -p "$V/lib" "$V/fonts" .device/whisper
  strip -o "$V/viralclip" "$wtarget/release/viralclip"
  # FFmpeg's libraries under their sonames, then every library the binary loads through them that
  # is not the C/C++ runtime or CUDA's (the host has those: its driver, PyTorch's wheels).
  for f in "$ff"/lib/lib*.so.*; do
    [[ -L $f ]] && cp -L "$f" "$V/lib/"
  done
  # The toolkit's libraries and its stub libcuda let the binary start here (it runs `model
  # whisper-quantize` below); the host has the real ones.
  local cuda_stub
  cuda_stub=$(source "$cuda_env" && echo "$CUDA_HOME/lib")
  mkdir -p .device/stub && ln -sf "$cuda_stub/stubs/libcuda.so" .device/stub/libcuda.so.1
  cuda_stub=$cuda_stub:$PWD/.device/stub
  local host='^(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libcu[a-zA-Z]*|libnv[a-zA-Z]*)\.so|ld-linux'
  local linked
  linked=$(LD_LIBRARY_PATH=$V/lib:$cuda_stub ldd "$V/viralclip")
  if grep "not found" <<<"$linked" | grep -v -E "$host"; then
    echo "a library above is missing" >&2
    exit 1
  fi
  awk '$3 ~ /^\// { print $1, $3 }' <<<"$linked" | grep -v -E "$host" | while read -r name path; do
    [[ -f $V/lib/$name ]] || cp -L "$path" "$V/lib/$name"
  done
  cp "$VIRALCLIP_FIXTURES/faces/face_detection_yunet_2023mar.onnx" "$V/"
  cp -L "${VIRALCLIP_FONT:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}" "$V/fonts/DejaVuSans.ttf"
  cat >"$V/fonts/fonts.conf.in" <<'XML'
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><dir>@DIR@</dir><cachedir>/tmp/viralclip-fontconfig</cachedir></fontconfig>
XML
  cp "$hour/hour.mp4" "$hour/hour.srt" "$V/"
  echo "== Whisper base in q5_0"
  LD_LIBRARY_PATH=$V/lib:$cuda_stub "$V/viralclip" model whisper-quantize --type q5_0 \
    "$VIRALCLIP_WHISPER_BASE" .device/whisper/ggml-base-q5_0.bin
  # Compressed, each: gpu-check.sh unpacks them.
  xz -T2 -9 .device/whisper/ggml-base-q5_0.bin
  xz -T2 -9 "$V/viralclip"
  tar -C "$V" -cJf "$V/lib.tar.xz" lib
  rm -rf "$V/lib"
}

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
  .device/data/non_clickbait.txt.gz .device/data/demo.txt $( ((video)) && echo bench/moments/scripts.ru.txt)

echo "== the kernels' checks$( ((video)) || echo " and the scoring binary") (sm_$CAP)"
cuda_env=$("$SHARED/tools/cuda-env.sh")
(
  # shellcheck disable=SC1090
  source "$cuda_env"
  if ((!video)); then
    CUDA_COMPUTE_CAP=$CAP CARGO_TARGET_DIR=$TARGET cargo build --release -p viralclip \
      --no-default-features --features cuda
  fi
  nvcc -x cu -std=c++20 -O2 -arch="sm_$CAP" engine/kernels/emu/check.cpp -o .device/kernels-gpu
)
rm -f .device/viralclip.xz .device/viralclip
if ((!video)); then
  strip -o .device/viralclip "$TARGET/release/viralclip"
  xz -T2 -6 .device/viralclip
else
  prepare_video
fi
echo "built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')" \
  | tee .device/data/VERSION
du -sh .device/* | sort -k2
# What travels: the working tree (tracked and untracked files) and the carried paths, 64 MiB a call.
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
mib() { echo $(((tree + $(du -sbL "$@" | awk '{s += $1} END {print s}')) / 1048576)); }
if ((video)); then
  # One bundle of everything, cut into parts that each fit a call beside the tree (1 MiB spare).
  rm -f .device/part-* .device/bundle.tar
  tar -C .device -cf .device/bundle.tar video whisper e5 data kernels-gpu
  part=$((64 * 1048576 - tree - 1048576))
  size=$(stat -c %s .device/bundle.tar)
  n=$(((size + part - 1) / part))
  sum=$(sha256sum .device/bundle.tar | cut -c1-12)
  split -b "$part" -d -a 2 .device/bundle.tar .device/piece-
  k=0
  for f in .device/piece-*; do
    k=$((k + 1))
    mv "$f" ".device/part-$k-of-$n-$sum"
  done
  rm -rf .device/bundle.tar .device/stub
  echo "travels: $((size / 1048576)) MiB in $n parts (.device/part-K-of-$n-$sum), each with the tree's $((tree / 1048576)) MiB under 64:"
  echo "  one call per part, each within 30 s of the last (the machine is given back after that):"
  for k in $(seq 1 $((n - 1))); do
    echo "  carry [\".device/part-$k-of-$n-$sum\"], run: bash scripts/gpu-check.sh --receive"
  done
  echo "  carry [\".device/part-$n-of-$n-$sum\"], run: bash scripts/gpu-check.sh --video"
else
  echo "travels: $(mib .device/viralclip.xz .device/e5 .device/data .device/kernels-gpu) MiB with the tree, of 64"
fi
