// check.cpp on a GPU: the same cases, the real kernels, the real hardware. Build with
//   nvcc -x cu -std=c++20 -O2 -arch=sm_90 engine/kernels/emu/check.cpp -o kernels-gpu
// (no -I of include/ here: those headers are the emulation's). Buffers are managed memory, so the
// cases' host code reads and writes them as it does on the CPU; each launch is checked and
// synchronised.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <vector>

#include "convert.h"

namespace emu {

inline void check(cudaError_t e, const char *what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "cuda: %s: %s\n", what, cudaGetErrorString(e));
    std::exit(2);
  }
}

template <typename T> struct allocator {
  using value_type = T;
  allocator() = default;
  template <typename U> allocator(const allocator<U> &) {}
  T *allocate(size_t n) {
    void *p = nullptr;
    check(cudaMallocManaged(&p, n * sizeof(T) > 0 ? n * sizeof(T) : 1), "cudaMallocManaged");
    return static_cast<T *>(p);
  }
  void deallocate(T *p, size_t) { cudaFree(p); }
  template <typename U> bool operator==(const allocator<U> &) const { return true; }
  template <typename U> bool operator!=(const allocator<U> &) const { return false; }
};

// `kernel<<<grid, threads, smem>>>(args...)`, with the dynamic shared memory allowed first where it
// is over the default 48 KiB (as the attention's launcher does), then checked and waited for.
template <typename... P, typename... A>
void launch(dim3 grid, dim3 threads, size_t smem, void (*kernel)(P...), A... args) {
  if (smem > 48 * 1024)
    check(cudaFuncSetAttribute(reinterpret_cast<const void *>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                               (int)smem),
          "cudaFuncSetAttribute");
  kernel<<<grid, threads, smem>>>(args...);
  check(cudaGetLastError(), "launch");
  check(cudaDeviceSynchronize(), "kernel");
}

}  // namespace emu

template <typename T> using buf = std::vector<T, emu::allocator<T>>;
