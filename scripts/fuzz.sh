#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/: SRT, WebVTT, the encoding detection, the bot's command and
# caption parsing) with cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP lets it pass
# libFuzzer's flags; no sanitizer: the code under test is safe Rust, a panic is the finding).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 1800 s each, every target, one at a time
#   FUZZ_JOBS=2 scripts/fuzz.sh 1800          # two targets at a time
#
# Each target starts from fuzz/corpus/TARGET (the seeds kept in the repo) and grows a working
# corpus under $FUZZ_WORK (default ~/.cache/viralclip-fuzz); a crash lands in
# fuzz/artifacts/TARGET/ and the run fails. One summary line per target: runs, seconds, corpus
# size, crashes; the full logs are in $FUZZ_WORK/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(srt webvtt encoding bot_command)
work=${FUZZ_WORK:-$HOME/.cache/viralclip-fuzz}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/viralclip-fuzz-target}
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
for t in "${targets[@]}"; do (cd fuzz && cargo fuzz build -s none "$t"); done
mkdir -p "$work"
run() {
  local t=$1 rc=0 runs crashes
  mkdir -p "$work/$t"
  (cd fuzz && cargo fuzz run -s none "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1) \
    >"$work/$t.log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo '?')
  crashes=$({ find "fuzz/artifacts/$t" -type f 2>/dev/null || true; } | wc -l)
  local took
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$work/$t.log" | grep -o '[0-9]* second' | grep -o '[0-9]*' || echo '?')
  echo "fuzz $t: rc $rc, $runs runs in $took s (of $secs), corpus $(find "$work/$t" -type f | wc -l) inputs, $crashes crash files"
  return $rc
}
jobs=${FUZZ_JOBS:-1}
status=0
pids=()
for t in "${targets[@]}"; do
  run "$t" &
  pids+=($!)
  if ((${#pids[@]} >= jobs)); then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
exit $status
