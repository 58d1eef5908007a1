#!/usr/bin/env bash
# Scoring throughput of viralclip's engine and of PyTorch (the original project's stack) side by
# side on this machine: one JSON line per case from each. Needs the fixtures, and a Python with
# torch and transformers ($PYTHON, default python3).
#   scripts/bench.sh [--device cuda] [--shapes 1x128,32x128,256x128,256x32,1024x32] [--dtypes f32,bf16]
#
# `--shorts [VIDEO]` instead: a 30 s clip of VIDEO (default the demo, 720p) the way a short is
# made, each stage beside the tool a user would pick for it, in the same run: viralclip's 16:9
# cut and captioned 9:16 encode beside the ffmpeg command line with the same x264 settings (a
# fixed centre crop and the same clip.ass through its `ass` filter), the framing analysis and
# YuNet per frame with viralclip's detector on tract-onnx and on ONNX Runtime, beside ONNX
# Runtime from Python ($PYTHON with onnxruntime and numpy).
#
# `--whisper [VIDEO [REFERENCE]]` instead: Whisper base on VIDEO's audio (default the demo, with
# its script as the reference; bench/long-video.sh makes the 10-minute one and its srt), viralclip
# with the fixture's f16 file and its q8_0 copy (made once by `viralclip model whisper-quantize`)
# beside faster-whisper int8 and float32 on the same weights and threads, each with its word error
# against REFERENCE (bench/whisper_bench.py; $PYTHON with faster-whisper and jiwer).
# `--neighbour` with it: the same runs again with one busy process on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu; shapes=1x128,8x128,32x32,32x128; dtypes=f32; secs=3; shorts=; whisper=; ref=; neighbour=
while (($#)); do
  case $1 in
    --whisper) whisper=assets/demo/demo.mp4; ref=assets/demo/script.ru.txt; shift
      if (($#)) && [[ $1 != --* ]]; then whisper=$1; ref=${whisper%.*}.srt; shift; fi
      if (($#)) && [[ $1 != --* ]]; then ref=$1; shift; fi;;
    --neighbour) neighbour=1; shift;;
    --shorts) shorts=assets/demo/demo.mp4; shift
      if (($#)) && [[ $1 != --* ]]; then shorts=$1; shift; fi;;
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
bin=${VIRALCLIP_BIN:-${CARGO_TARGET_DIR:-target}/release/viralclip}
[[ -x $bin ]] || cargo build --release -q -p viralclip

if [[ -n $whisper ]]; then
  base=${VIRALCLIP_WHISPER_BASE:?no Whisper fixture: run scripts/setup.sh}
  q8=${base%.bin}-q8_0.bin
  [[ -s $q8 ]] || "$bin" model whisper-quantize "$base" "$q8" --type q8_0 >&2
  "${PYTHON:-python3}" -c 'import faster_whisper, jiwer' 2>/dev/null || {
    echo "bench: ${PYTHON:-python3} lacks faster-whisper or jiwer (pip install faster-whisper jiwer)" >&2; exit 1; }
  runs() {
    echo "{\"case\": \"load\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"cpus\": $(nproc), \"neighbour\": ${1:-false}}"
    lines=$(mktemp)
    for m in "$base" "$q8"; do
      "$bin" bench --no-score --no-shorts --video "$whisper" --lang ru --whisper "$m" | grep '"whisper"' >> "$lines"
    done
    "${PYTHON:-python3}" bench/whisper_bench.py --audio "$whisper" --reference "$ref" --viralclip "$lines"
    rm -f "$lines"
  }
  runs false
  if [[ -n $neighbour ]]; then
    # One busy process (a shell loop on one core), as another tenant would be.
    (while :; do :; done) & busy=$!
    trap 'kill $busy 2>/dev/null' EXIT
    runs true
  fi
  exit 0
fi

if [[ -n $shorts ]]; then
  faces=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/faces/face_detection_yunet_2023mar.onnx
  face_model=${VIRALCLIP_FACE_MODEL:-$faces}
  out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
  echo "{\"case\": \"load\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"cpus\": $(nproc)}"
  # viralclip's stages with YuNet on tract, then on ONNX Runtime (the fixture's library, or
  # $VIRALCLIP_ONNXRUNTIME) where there is one.
  ort_lib=${VIRALCLIP_ONNXRUNTIME:-${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/onnxruntime/libonnxruntime.so.1.32.0}
  VIRALCLIP_ONNXRUNTIME= ORT_DYLIB_PATH= "$bin" bench --no-score --video "$shorts" --face-model "$face_model" --shorts-out "$out"
  if [[ -f $ort_lib ]]; then
    VIRALCLIP_ONNXRUNTIME=$ort_lib "$bin" bench --no-score --video "$shorts" --face-model "$face_model" --shorts-out "$out"
  else
    echo "bench: no ONNX Runtime library at $ort_lib (scripts/setup.sh): YuNet timed on tract only" >&2
  fi
  # The same clip as the bench's (from 30 % of the video, 30 s), by the ffmpeg command line.
  dur=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$shorts")
  read -r s e < <(python3 -c "d=$dur; s=d*0.3; print(s, s+min(30, d*0.5))")
  x264=(-c:v libx264 -preset veryfast -crf 23 -pix_fmt yuv420p -c:a aac -b:a 128k -movflags +faststart)
  timed() { # case, then the ffmpeg arguments
    local case=$1 t0 t1; shift
    t0=$(date +%s.%N)
    ffmpeg -v error -y "$@"
    t1=$(date +%s.%N)
    python3 -c "import json; w=$t1-$t0; c=$e-$s; print(json.dumps({'case': '$case', 'engine': 'ffmpeg $(ffmpeg -version | head -1 | cut -d' ' -f3)', 'clip_secs': round(c, 2), 'wall_s': round(w, 2), 'share_of_clip': round(w / c, 3)}))"
  }
  timed cut -ss "$s" -to "$e" -i "$shorts" "${x264[@]}" "$out/cli-16x9.mp4"
  timed shorts_encode -ss "$s" -to "$e" -i "$shorts" \
    -vf "crop=ih*9/16:ih,scale=720:1280,ass=$out/clip.ass" "${x264[@]}" "$out/cli-9x16.mp4"
  if "${PYTHON:-python3}" -c 'import onnxruntime, numpy' 2>/dev/null; then
    "${PYTHON:-python3}" bench/yunet_ort.py --model "$face_model" --video "$shorts" \
      --at "$(python3 -c "print(($s + $e) / 2)")"
  else
    echo "bench: no onnxruntime in ${PYTHON:-python3} (pip install onnxruntime numpy): YuNet on ONNX Runtime not timed" >&2
  fi
  exit 0
fi
"$bin" bench --device "$device" --encoder "$VIRALCLIP_ENCODER_MULTILINGUAL" --rubert-shape \
  --shapes "$shapes" --precision "$dtypes" --secs "$secs"
"${PYTHON:-python3}" bench/pytorch_bench.py --device "$device" --encoder "$VIRALCLIP_ENCODER_MULTILINGUAL" \
  --rubert-shape --shapes "$shapes" --dtypes "$dtypes" --secs "$secs"
