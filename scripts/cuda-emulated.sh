#!/usr/bin/env bash
# The `cuda` feature's launchers without a GPU: builds the engine's tests with `--features cuda`,
# builds a CUDA driver that runs kernels/fused.cu on the CPU (engine/kernels/emu/fake_cuda.cpp,
# over the emulation CI already checks the kernels with), and runs the tests named `cuda_launch`
# against it. They put every kernel through its Rust launcher (arguments, grid, shared memory,
# pointer tables), candle and cudarc, and compare with the CPU path.
#
#   scripts/cuda-emulated.sh              # needs ../shared/tools/cuda-env.sh (nvcc from PyPI)
#   scripts/cuda-emulated.sh NAME         # only the tests whose name contains NAME
#   scripts/cuda-emulated.sh --run BIN ARGS...
#                                         # any binary built with `--features cuda` on the fake
#                                         # driver, e.g. `viralclip bench --device cuda ...`
#
# Exits 0 when every test passes. Without the CUDA toolchain it says so and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
env_tool=../shared/tools/cuda-env.sh
if [[ ! -x $env_tool ]]; then
  echo "cuda-emulated: $env_tool is missing: it provides nvcc for building the cuda feature" >&2
  exit 2
fi
# shellcheck disable=SC1090
source "$("$env_tool")"
target=${VIRALCLIP_CUDA_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}-cuda}
if [[ ${1:-} == --run ]]; then
  bin=$2
  shift 2
  fake=$target/fake-cuda-$(basename "$bin")
else
  filter=${1:-cuda_launch}
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  CARGO_TARGET_DIR=$target cargo test -p viralclip-engine --features cuda --lib --no-run 2>&1 | tee "$log" >&2
  bin=$(sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p' "$log" | tail -1)
  fake=$target/fake-cuda
fi
[[ -x $bin ]] || { echo "cuda-emulated: no binary to run ($bin)" >&2; exit 1; }

# One fake library per CUDA library the binary needs, each exporting every symbol the binary
# imports from it (with the binary's symbol versions): the emulated ones from fake_cuda.cpp, the
# rest as stubs that say their name and fail.
mkdir -p "$fake"
src=engine/kernels/emu/fake_cuda.cpp
cxx=${CXX:-c++}
imports=$(objdump -T "$bin" | awk '$3 == "*UND*" { print $(NF-1), $NF }')
for lib in libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13; do
  name=${lib%%.so*}
  name=${name#lib}
  out=$fake/$lib
  if [[ $lib == libcuda.so.1 ]]; then
    syms=$(awk '$1 == "Base" && $2 ~ /^cu[A-Z]/ { print $2 }' <<<"$imports")
  else
    syms=$(awk -v v="($lib)" '$1 == v { print $2 }' <<<"$imports")
  fi
  obj=$fake/$name.o
  if [[ ! -s $obj || $src -nt $obj || engine/kernels/fused.cu -nt $obj || engine/kernels/emu/cuda_emu.h -nt $obj ]]; then
    "$cxx" -std=c++20 -O2 -g -fPIC -pthread -fno-strict-aliasing -fvisibility=hidden -Wall -Wno-unknown-pragmas \
      -Iengine/kernels/emu/include -DFAKE_LIB="$name" -c "$src" -o "$obj"
  fi
  defined=$(nm -g --defined-only "$obj" | awk '{ print $3 }')
  stubs=$fake/$name-stubs.c
  {
    echo '#include <stdio.h>'
    for s in $syms; do
      grep -qx "$s" <<<"$defined" && continue
      echo "__attribute__((visibility(\"default\"))) int $s(void) { fprintf(stderr, \"fake cuda: $s is not emulated\\n\"); return 801; }"
    done
  } >"$stubs"
  ver=()
  if [[ $lib != libcuda.so.1 ]]; then
    echo "$lib { global: *; };" >"$fake/$name.map"
    ver=("-Wl,--version-script=$fake/$name.map")
  fi
  "$cxx" -shared -fPIC -pthread -Wl,-soname,"$lib" "${ver[@]}" -o "$out" "$obj" -x c "$stubs"
done

export LD_LIBRARY_PATH=$fake${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if [[ -z ${filter:-} ]]; then
  exec "$bin" "$@"
fi
echo "cuda-emulated: running $bin against $fake" >&2
VIRALCLIP_CUDA_EMULATED=1 \
  VIRALCLIP_FUSED_ATTN=1 \
  "$bin" "$filter" --test-threads=1 --nocapture
