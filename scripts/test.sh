#!/usr/bin/env bash
# Runs the whole test suite. Needs the fixtures (../shared/tools/fetch-fixtures.sh), ffmpeg and
# festival with festvox-ru; a missing one fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
f=${VIRALCLIP_FIXTURES:-$HOME/.cache/viralclip-fixtures}/fixtures.env
# shellcheck disable=SC1090
[[ -f $f ]] && source "$f"
cargo test --workspace --all-targets "$@"
