#!/usr/bin/env bash
# Runs the README's two commands on a truly fresh Debian 12: a minimal root made with debootstrap,
# with only the Rust toolchain added (this machine's, copied in), the repository as a clean clone
# of HEAD and ../shared beside it. Each command's time and exit code go to $LOG_DIR/times.txt.
#
#   sudo scripts/fresh-check.sh            # everything (about an hour on 2 cores: two cold builds)
#   sudo scripts/fresh-check.sh demo       # only scripts/demo.sh
#   KEEP=1 sudo scripts/fresh-check.sh test  # only scripts/test.sh, in the root made before
#   FRESH_ROOT=/var/tmp/x KEEP=1 ...       # where the root goes; KEEP=1 reuses an existing one
#
# Needs root and the network this machine has (Debian's mirror, crates.io, PyPI); the mirror is
# the one this machine's apt uses, and the chroot gets this machine's DNS and CA settings, nothing
# else. debootstrap is installed when missing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${FRESH_ROOT:-/var/tmp/viralclip-fresh}
logs=${LOG_DIR:-$repo/out/fresh-check}
what=${1:-all}
((EUID == 0)) || { echo "fresh-check: run as root (debootstrap and chroot need it)" >&2; exit 1; }
mkdir -p "$logs"
command -v debootstrap >/dev/null || {
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
}
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)

cleanup() {
  for m in dev/pts dev proc sys; do umount -l "$root/$m" 2>/dev/null || true; done
}
trap cleanup EXIT

if [[ ${KEEP:-} != 1 || ! -x $root/bin/bash ]]; then
  cleanup
  rm -rf "$root"
  t=$(date +%s)
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$logs/debootstrap.log" 2>&1
  echo "debootstrap: $(($(date +%s) - t)) s" | tee "$logs/times.txt"
  # This machine's apt sources, DNS and CA bundle (the registries' certificates), nothing more.
  if cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null; then
    rm -f "$root/etc/apt/sources.list"
  fi
  cp /etc/apt/apt.conf.d/99* "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
  # Only Rust: the toolchain this machine runs (rustc, cargo, rustfmt, clippy), as rustup lays it out.
  sysroot=$(rustc --print sysroot)
  mkdir -p "$root/opt/rust"
  cp -a "$sysroot/." "$root/opt/rust/"
  git clone -q "$repo" "$root/work/main"
  cp -a "$repo/../shared" "$root/work/shared"
fi
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# Kept apart from Debian's own bundle, which installing ca-certificates rewrites.
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/host-ca.crt"
mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"

run() { # name command...: one of the README's commands inside the root, timed
  local name=$1
  shift
  local t rc=0
  t=$(date +%s)
  chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
    PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/host-ca.crt PIP_CERT=/etc/host-ca.crt REQUESTS_CA_BUNDLE=/etc/host-ca.crt \
    CURL_CA_BUNDLE=/etc/host-ca.crt GIT_SSL_CAINFO=/etc/host-ca.crt \
    /bin/bash -c "cd /work/main && $*" >"$logs/$name.log" 2>&1 || rc=$?
  echo "$name: $(($(date +%s) - t)) s, exit $rc" | tee -a "$logs/times.txt"
  return "$rc"
}

rc=0
if [[ $what != test ]]; then
  run demo scripts/demo.sh || rc=1
fi
if [[ $what != demo ]]; then
  run test scripts/test.sh || rc=1
  tail -n 3 "$logs/test.log" | tee -a "$logs/times.txt"
fi
echo "fresh-check: logs in $logs" >&2
exit "$rc"
