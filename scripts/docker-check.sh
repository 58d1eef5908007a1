#!/usr/bin/env bash
# Builds the CPU image from deploy/Dockerfile and starts it with deploy/compose.yml beside a
# stand-in for telegram-bot-api (deploy/check/), then sends it the demo video with subtitles and
# waits for the clips: the image's binary, libraries, font, model and the compose wiring, end to
# end. Where Docker Hub is out of reach, the base images the Dockerfiles name (debian:bookworm-slim,
# rust:1-bookworm) are made here first: a debootstrap root (`docker import`), and that root plus
# this machine's Rust toolchain. Starts dockerd (Debian's docker.io) when none runs.
#
#   sudo scripts/docker-check.sh            # build, start, check, stop
#   sudo scripts/docker-check.sh --cuda     # only the CUDA image's build stage (stand-in base)
#
# Needs root, the fixtures (scripts/setup.sh) and the network this machine has. Logs and the calls
# the stand-in saw go to out/docker-check/.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
logs=$repo/out/docker-check
mkdir -p "$logs"
((EUID == 0)) || { echo "docker-check: run as root" >&2; exit 1; }
# shellcheck disable=SC1091
source "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env"
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  echo "== starting dockerd"
  (dockerd >"$logs/dockerd.log" 2>&1 &)
  for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "docker-check: dockerd did not start (see $logs/dockerd.log)" >&2; exit 1; }
fi

t0=$(date +%s)
step() { echo "== $* ($(($(date +%s) - t0)) s)"; }

# Base images, unless they can be had (a machine that reaches Docker Hub pulls the real ones).
if ! docker image inspect debian:bookworm-slim >/dev/null 2>&1 && ! docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
  step "debian:bookworm-slim from a debootstrap root"
  base=$(mktemp -d /var/tmp/viralclip-base.XXXX)
  trap 'umount -l "$base/proc" "$base/sys" 2>/dev/null; rm -rf "$base"' EXIT
  mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [[ -n $mirror ]] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
  debootstrap --variant=minbase bookworm "$base" "$mirror" >"$logs/debootstrap.log" 2>&1
  if cp /etc/apt/sources.list.d/*.sources "$base/etc/apt/sources.list.d/" 2>/dev/null; then
    rm -f "$base/etc/apt/sources.list"
  fi
  cp /etc/apt/apt.conf.d/99* "$base/etc/apt/apt.conf.d/" 2>/dev/null || true
  rm -rf "$base"/var/cache/apt/archives/*.deb "$base"/var/lib/apt/lists/*
  tar -C "$base" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  rm -rf "$base"
  trap - EXIT
fi
if ! docker image inspect rust:1-bookworm >/dev/null 2>&1 && ! docker pull -q rust:1-bookworm >/dev/null 2>&1; then
  step "rust:1-bookworm: that root + build-essential + this machine's Rust toolchain"
  ctx=$(mktemp -d /var/tmp/viralclip-rust.XXXX)
  sysroot=$(rustc --print sysroot)
  mkdir -p "$ctx/rust"
  cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$ctx/rust/"
  # This machine's CA bundle too: where the registries are reached through a proxy with its own
  # certificate, cargo inside the build needs it (the Dockerfile itself stays as it is).
  cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
  # The official image's layout: cargo and rustc under /usr/local/cargo/bin, RUSTUP_HOME at
  # /usr/local/rustup (here the toolchain itself sits in /usr/local/cargo, so that stays empty),
  # so that Dockerfile.cuda's `COPY --from=rust` finds the same paths in both.
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential ca-certificates \
      curl git libssl-dev pkg-config && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/rustup
COPY rust /usr/local/cargo
COPY host-ca.crt /etc/ssl/host-ca.crt
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH \
    CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt
EOF
  docker build --network host -q -t rust:1-bookworm "$ctx" >"$logs/rust-image.log" 2>&1
  rm -rf "$ctx"
fi

# --cuda: the CUDA image's build stage (deploy/Dockerfile.cuda, `--target build`), then stop.
# NVIDIA's devel image is out of reach here: its stand-in is that root plus the CUDA 13.0 toolchain
# from PyPI (../shared/tools/cuda-env.sh) at /usr/local/cuda, with a stub libcuda as NVIDIA's has,
# and an empty libculibos.a (a static helper NVIDIA's image ships and the wheels do not; nothing
# in it is linked). FEATURES picks the image's features (default here `cuda`: whisper-cuda adds
# ~45 minutes on 2 cores; FEATURES=cuda,whisper-cuda builds what the Dockerfile builds by default).
if [[ ${1:-} == --cuda ]]; then
  cuda_tag=nvidia/cuda:13.0.0-devel-ubuntu24.04
  if ! docker image inspect "$cuda_tag" >/dev/null 2>&1 && ! docker pull -q "$cuda_tag" >/dev/null 2>&1; then
    step "$cuda_tag: a stand-in from that root and the PyPI CUDA toolchain"
    # shellcheck disable=SC1090
    source "$(../shared/tools/cuda-env.sh)"
    ctx=$(mktemp -d /var/tmp/viralclip-cuda.XXXX)
    cp -a "$CUDA_HOME" "$ctx/cuda"
    ar rcs "$ctx/cuda/lib/libculibos.a"
    # This machine's CA bundle, as for the rust stand-in (cargo inside the build reaches the
    # registry through it).
    cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential ca-certificates \
      && rm -rf /var/lib/apt/lists/*
COPY cuda /usr/local/cuda
COPY host-ca.crt /etc/ssl/host-ca.crt
ENV CUDA_HOME=/usr/local/cuda CUDA_PATH=/usr/local/cuda PATH=/usr/local/cuda/bin:$PATH \
    LIBRARY_PATH=/usr/local/cuda/lib:/usr/local/cuda/lib/stubs LD_LIBRARY_PATH=/usr/local/cuda/lib \
    CARGO_HTTP_CAINFO=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt
EOF
    docker build --network host -q -t "$cuda_tag" "$ctx" >"$logs/cuda-base.log" 2>&1 || { tail -20 "$logs/cuda-base.log"; exit 1; }
    rm -rf "$ctx"
  fi
  step "building the CUDA image's build stage (deploy/Dockerfile.cuda, FEATURES=${FEATURES:-cuda})"
  tb=$(date +%s)
  docker build --network host -f deploy/Dockerfile.cuda --target build --build-arg "FEATURES=${FEATURES:-cuda}" \
    -t viralclip:cuda-build . >"$logs/cuda-build.log" 2>&1 || { tail -30 "$logs/cuda-build.log"; exit 1; }
  docker run --rm --entrypoint ls viralclip:cuda-build -l target/release/viralclip
  echo "docker-check: the CUDA build stage built in $(($(date +%s) - tb)) s ($(($(date +%s) - t0)) s in all)"
  exit 0
fi

# The models the bot loads, from the fixtures (no hub here): mounted at /models as compose says.
models=$(mktemp -d /var/tmp/viralclip-models.XXXX)
cp -l "$VIRALCLIP_WHISPER_BASE" "$models/ggml-base.bin" 2>/dev/null || cp "$VIRALCLIP_WHISPER_BASE" "$models/ggml-base.bin"
cp -rl "$VIRALCLIP_ENCODER_MULTILINGUAL" "$models/encoder" 2>/dev/null || cp -r "$VIRALCLIP_ENCODER_MULTILINGUAL" "$models/encoder"
cp "${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/faces/face_detection_yunet_2023mar.onnx" "$models/"
chmod -R a+rX "$models"

export TELOXIDE_TOKEN=123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw_x TELEGRAM_API_ID=1 TELEGRAM_API_HASH=x
export VIRALCLIP_FACE_MODEL=/models/face_detection_yunet_2023mar.onnx
export VIRALCLIP_MODELS_DIR=$models VIRALCLIP_ADMINS=7 CHECK_API_PORT=${CHECK_API_PORT:-18081}
compose=(docker-compose -p viralclip-check -f deploy/compose.yml -f deploy/compose.check.yml)
cleanup() {
  "${compose[@]}" logs --no-color >"$logs/compose.log" 2>&1 || true
  "${compose[@]}" down -v >/dev/null 2>&1 || true
  rm -rf "$models"
}
trap cleanup EXIT

step "the stand-in Bot API image (deploy/check/)"
ctx=$(mktemp -d)
cp deploy/check/fake_bot_api.py deploy/check/Dockerfile.fake-bot-api assets/demo/demo.mp4 assets/demo/script.ru.txt "$ctx/"
docker build --network host -q -t viralclip-fake-bot-api -f "$ctx/Dockerfile.fake-bot-api" "$ctx" >"$logs/fake-image.log" 2>&1
rm -rf "$ctx"

step "building the CPU image (deploy/Dockerfile)"
tb=$(date +%s)
"${compose[@]}" build bot >"$logs/build.log" 2>&1 || { tail -30 "$logs/build.log"; exit 1; }
echo "image built in $(($(date +%s) - tb)) s: $(docker image inspect -f '{{.Size}}' viralclip | awk '{ printf "%.0f MB", $1 / 1e6 }')"

step "starting compose (bot + stand-in Bot API)"
"${compose[@]}" up -d >"$logs/up.log" 2>&1
ok=0
for _ in $(seq 300); do
  if "${compose[@]}" logs --no-color telegram-bot-api 2>/dev/null | grep -q '"call": "sendphoto"'; then
    ok=1
    break
  fi
  sleep 2
done
"${compose[@]}" logs --no-color telegram-bot-api >"$logs/calls.log" 2>&1 || true
calls=$(grep -o '"call": "[a-z]*"' "$logs/calls.log" | sort | uniq -c | tr -s ' ' | paste -sd, -)
videos=$(grep -c '"call": "sendvideo"' "$logs/calls.log" || true)
echo "the stand-in saw: $calls"
if ((ok == 0 || videos == 0)); then
  echo "docker-check: no clips came back (logs in $logs)" >&2
  "${compose[@]}" logs --no-color bot | tail -20 >&2
  exit 1
fi
grep '"call": "sendvideo"' "$logs/calls.log" | head -3
echo "docker-check: the image started, took the demo and sent $videos clips ($(($(date +%s) - t0)) s in all)"

