#!/usr/bin/env bash
# Runs the whole test suite. scripts/setup.sh first installs what is missing (the Debian packages
# as root, else it prints the apt-get line; the model fixtures from PyPI); the CUDA launchers'
# tests need the CUDA toolchain from ../shared/tools/cuda-env.sh. A missing piece fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
f=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env
# shellcheck disable=SC1090
[[ -f $f ]] && source "$f"
cargo test --workspace --all-targets "$@"

# The CUDA launchers on an emulated driver (scripts/cuda-emulated.sh: the `cuda` feature's tests,
# no GPU needed); only for the whole suite, not when arguments pick tests.
if (($# == 0)); then
  rc=0
  scripts/cuda-emulated.sh || rc=$?
  if ((rc == 2)) && [[ ${VIRALCLIP_ALLOW_MISSING_FIXTURES:-} == 1 ]]; then
    echo "SKIPPED: the CUDA launchers' emulated tests (no CUDA toolchain: ../shared/tools/cuda-env.sh)"
  elif ((rc != 0)); then
    exit "$rc"
  fi
fi
