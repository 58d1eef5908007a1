// A CUDA driver (and the few cuBLAS, cuBLASLt, cuRAND calls candle makes to set a device up)
// on the CPU, so the engine's own launchers (engine/src/model/kernels.rs, train_ops.rs, step.rs)
// run through candle and cudarc exactly as on a GPU, with every kernel of ../fused.cu executed by
// the emulation in cuda_emu.h. Device memory is host memory; every call is synchronous, so stream
// order holds trivially. It runs viralclip's kernels only: candle's own kernels (PTX from
// candle-kernels) and cuBLAS's products are not emulated, and asking for one fails with a message.
//
// scripts/cuda-emulated.sh builds it once per library the test binary needs (-DFAKE_LIB=...), adds a
// stub for every other symbol that binary imports from that library (each stub prints its name and
// returns an error), and runs the `cuda` feature's tests against it. See README.md here.
#include <cstdarg>
#include <cstddef>
#include <cstdio>

#define API extern "C" __attribute__((visibility("default")))

#define LIB_cuda 1
#define LIB_cublas 2
#define LIB_cublasLt 3
#define LIB_curand 4
#define LIB_cudart 5
#define CAT(a, b) a##b
#define XCAT(a, b) CAT(a, b)
#define THIS_LIB XCAT(LIB_, FAKE_LIB)

namespace {

[[maybe_unused]] void say(const char *fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fprintf(stderr, "fake cuda: ");
  std::vfprintf(stderr, fmt, ap);
  std::fprintf(stderr, "\n");
  va_end(ap);
}

}  // namespace

#if THIS_LIB == LIB_cuda

#include "cuda_emu.h"

#include "../fused.cu"

#include <functional>
#include <map>
#include <string>
#include <utility>

namespace {

using CUresult = int;
constexpr CUresult OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_FOUND = 500, NOT_SUPPORTED = 801;

// A launch: the kernel's grid, block, dynamic shared memory and parameters (cuLaunchKernel's
// `kernelParams`: a pointer to each argument's value).
using Launcher = std::function<void(dim3, dim3, size_t, void **)>;

// Calls `kernel` on the emulation with its parameters read from `params` as the driver reads them:
// each argument's bytes, the size of the kernel's own parameter type.
template <typename... P> Launcher launcher(void (*kernel)(P...)) {
  return [kernel](dim3 grid, dim3 block, size_t smem, void **params) {
    [&]<size_t... I>(std::index_sequence<I...>) {
      emu::launch(grid, block, smem, kernel, *static_cast<std::remove_cvref_t<P> *>(params[I])...);
    }(std::index_sequence_for<P...>{});
  };
}

// A few of candle's own kernels (candle-kernels' affine.cu, unary.cu, fill.cu, reduce.cu), computed directly
// on the host with their signatures: the copies and scalings candle makes around the engine's
// operations (`.contiguous()`, `* scalar`, sums). Any other candle kernel is not emulated.
size_t strided_index(size_t i, size_t nd, const size_t *info) {
  if (!info) return i;
  size_t at = 0;
  for (size_t d = nd; d-- > 0;) {
    at += (i % info[d]) * info[nd + d];
    i /= info[d];
  }
  return at;
}
template <typename T> Launcher candle_ucopy() {
  return [](dim3, dim3, size_t, void **p) {
    const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
    const size_t *info = *(const size_t **)p[2];
    const T *in = *(const T **)p[3];
    T *out = *(T **)p[4];
    for (size_t i = 0; i < numel; i++) out[i] = in[strided_index(i, nd, info)];
  };
}
Launcher candle_affine_f32() {
  return [](dim3, dim3, size_t, void **p) {
    const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
    const size_t *info = *(const size_t **)p[2];
    const float *in = *(const float **)p[3];
    float *out = *(float **)p[4];
    const float mul = *(float *)p[5], add = *(float *)p[6];
    for (size_t i = 0; i < numel; i++) out[i] = (in ? in[strided_index(i, nd, info)] : out[i]) * mul + add;
  };
}
// Sums of consecutive runs of `el` elements in the layout's order (reductions over trailing dims).
Launcher candle_fast_sum_f32() {
  return [](dim3, dim3, size_t, void **p) {
    const size_t numel = *(size_t *)p[0], el = *(size_t *)p[1], nd = *(size_t *)p[2];
    const size_t *info = *(const size_t **)p[3];
    const float *src = *(const float **)p[4];
    float *dst = *(float **)p[5];
    for (size_t o = 0; o < numel / el; o++) {
      double s = 0;
      for (size_t i = o * el; i < (o + 1) * el; i++) s += src[strided_index(i, nd, info)];
      dst[o] = (float)s;
    }
  };
}
template <typename T> Launcher candle_copy2d() {
  return [](dim3, dim3, size_t, void **p) {
    const T *src = *(const T **)p[0];
    T *dst = *(T **)p[1];
    const uint32_t d1 = *(uint32_t *)p[2], d2 = *(uint32_t *)p[3], ss = *(uint32_t *)p[4], ds = *(uint32_t *)p[5];
    for (uint32_t i = 0; i < d1; i++)
      for (uint32_t j = 0; j < d2; j++) dst[(size_t)i * ds + j] = src[(size_t)i * ss + j];
  };
}

struct Function {
  std::string name;
  Launcher launch;
  int max_dynamic_smem = 48 * 1024;
};

const std::map<std::string, Launcher> &kernels() {
  static const std::map<std::string, Launcher> k = [] {
    std::map<std::string, Launcher> m;
#define K(name) m.emplace(#name, launcher(&name));
#define TYPED(name) K(name##_f32) K(name##_f16) K(name##_bf16)
    TYPED(bias_gelu)
    TYPED(add_norm)
    TYPED(add_norm_vec)
    TYPED(split_parts)
    TYPED(mask_softmax)
    TYPED(merge_heads)
    K(attention_d32_f16)
    K(attention_d64_f16)
    K(attention_d32_bf16)
    K(attention_d64_bf16)
    K(adam_moment_f32)
    K(adam_update_f32)
    K(step_dots)
    K(step_norm)
    K(step_adamw)
    K(ln_train_fwd_f32)
    K(ln_train_bwd_f32)
    K(ln_train_bwd_drop_f32)
    K(softmax_train_fwd_f32)
    K(softmax_train_bwd_f32)
    K(gelu_train_bwd_f32)
    K(dropout_f32)
    K(bce_fwd_f32)
    K(bce_grad_f32)
    K(col_sums_f32)
    K(bias_drop_add_norm_f32)
    K(bias_relu_drop_f32)
#undef TYPED
#undef K
    m.emplace("ucopy_f32", candle_ucopy<float>());
    m.emplace("ucopy_f16", candle_ucopy<uint16_t>());
    m.emplace("ucopy_bf16", candle_ucopy<uint16_t>());
    m.emplace("copy2d_f32", candle_copy2d<float>());
    m.emplace("copy2d_f16", candle_copy2d<uint16_t>());
    m.emplace("copy2d_bf16", candle_copy2d<uint16_t>());
    m.emplace("affine_f32", candle_affine_f32());
    m.emplace("fast_sum_f32", candle_fast_sum_f32());
    return m;
  }();
  return k;
}

int primary_ctx = 1;
thread_local void *current = nullptr;

// The allocations' sizes, so a free of something never allocated (or freed twice) is caught.
std::mutex mem_lock;
std::map<uintptr_t, size_t> &allocations() {
  static std::map<uintptr_t, size_t> a;
  return a;
}

CUresult alloc(unsigned long long *p, size_t bytes) {
  if (!p) return INVALID_VALUE;
  const size_t rounded = (bytes + 255) / 256 * 256 + 256;
  void *m = std::aligned_alloc(256, rounded);
  if (!m) return OUT_OF_MEMORY;
  std::memset(m, 0xA5, rounded);  // neither zero nor a float anyone would expect
  std::lock_guard<std::mutex> g(mem_lock);
  allocations()[(uintptr_t)m] = bytes;
  *p = (unsigned long long)(uintptr_t)m;
  return OK;
}

CUresult release(unsigned long long p) {
  if (p == 0) return OK;
  std::lock_guard<std::mutex> g(mem_lock);
  auto it = allocations().find((uintptr_t)p);
  if (it == allocations().end()) {
    say("free of %#llx, which is not an allocation (or was freed before)", p);
    return INVALID_VALUE;
  }
  allocations().erase(it);
  std::free((void *)(uintptr_t)p);
  return OK;
}

// Whether [p, p + bytes) lies inside one allocation (device pointers the tests hand over).
bool inside(unsigned long long p, size_t bytes) {
  std::lock_guard<std::mutex> g(mem_lock);
  auto &a = allocations();
  auto it = a.upper_bound((uintptr_t)p);
  if (it == a.begin()) return false;
  --it;
  return (uintptr_t)p + bytes <= it->first + it->second;
}

}  // namespace

API CUresult cuInit(unsigned) { return OK; }
API CUresult cuDeviceGet(int *d, int ordinal) {
  if (ordinal != 0) return INVALID_VALUE;
  *d = 0;
  return OK;
}
API CUresult cuDeviceGetCount(int *n) {
  *n = 1;
  return OK;
}
// An sm_90 card: what cudarc and the engine ask for.
API CUresult cuDeviceGetAttribute(int *v, int attribute, int) {
  switch (attribute) {
    case 1: *v = 1024; break;     // max threads per block
    case 8: *v = 49152; break;    // shared memory per block
    case 10: *v = 32; break;      // warp size
    case 16: *v = 132; break;     // multiprocessors
    case 75: *v = 9; break;       // compute capability
    case 76: *v = 0; break;
    case 97: *v = 232448; break;  // opt-in shared memory per block
    case 115: *v = 1; break;      // memory pools
    default: *v = 0;
  }
  return OK;
}
API CUresult cuDevicePrimaryCtxRetain(void **ctx, int) {
  *ctx = &primary_ctx;
  return OK;
}
API CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
API CUresult cuCtxGetCurrent(void **ctx) {
  *ctx = current;
  return OK;
}
API CUresult cuCtxSetCurrent(void *ctx) {
  current = ctx;
  return OK;
}
API CUresult cuCtxDestroy_v2(void *) { return OK; }
API CUresult cuCtxSynchronize() { return OK; }

API CUresult cuEventCreate(void **e, unsigned) {
  *e = new int(0);
  return OK;
}
API CUresult cuEventDestroy_v2(void *e) {
  delete static_cast<int *>(e);
  return OK;
}
API CUresult cuEventRecord(void *, void *) { return OK; }
API CUresult cuEventSynchronize(void *) { return OK; }
API CUresult cuStreamWaitEvent(void *, void *, unsigned) { return OK; }
API CUresult cuStreamSynchronize(void *) { return OK; }
API CUresult cuStreamCreate(void **s, unsigned) {
  *s = new int(0);
  return OK;
}
API CUresult cuStreamDestroy_v2(void *s) {
  // The per-thread and legacy streams are small constants, not ours to free.
  if ((uintptr_t)s > 0x10) delete static_cast<int *>(s);
  return OK;
}
API CUresult cuStreamIsCapturing(void *, int *status) {
  *status = 0;  // CU_STREAM_CAPTURE_STATUS_NONE
  return OK;
}

API CUresult cuGetErrorString(CUresult e, const char **s) {
  switch (e) {
    case OK: *s = "no error"; break;
    case INVALID_VALUE: *s = "invalid argument (fake cuda)"; break;
    case OUT_OF_MEMORY: *s = "out of memory (fake cuda)"; break;
    case NOT_FOUND: *s = "named symbol not found: the fake driver runs viralclip's kernels only"; break;
    case NOT_SUPPORTED: *s = "operation not supported by the fake driver"; break;
    default: *s = "unknown error (fake cuda)";
  }
  return OK;
}
API CUresult cuGetErrorName(CUresult e, const char **s) { return cuGetErrorString(e, s); }

API CUresult cuMemAlloc_v2(unsigned long long *p, size_t bytes) { return alloc(p, bytes); }
API CUresult cuMemAllocAsync(unsigned long long *p, size_t bytes, void *) { return alloc(p, bytes); }
API CUresult cuMemFree_v2(unsigned long long p) { return release(p); }
API CUresult cuMemFreeAsync(unsigned long long p, void *) { return release(p); }
API CUresult cuMemcpyHtoDAsync_v2(unsigned long long dst, const void *src, size_t n, void *) {
  if (n && !inside(dst, n)) return say("copy to the device outside an allocation"), INVALID_VALUE;
  std::memcpy((void *)(uintptr_t)dst, src, n);
  return OK;
}
API CUresult cuMemcpyHtoD_v2(unsigned long long dst, const void *src, size_t n) {
  return cuMemcpyHtoDAsync_v2(dst, src, n, nullptr);
}
API CUresult cuMemcpyDtoHAsync_v2(void *dst, unsigned long long src, size_t n, void *) {
  if (n && !inside(src, n)) return say("copy from the device outside an allocation"), INVALID_VALUE;
  std::memcpy(dst, (const void *)(uintptr_t)src, n);
  return OK;
}
API CUresult cuMemcpyDtoH_v2(void *dst, unsigned long long src, size_t n) {
  return cuMemcpyDtoHAsync_v2(dst, src, n, nullptr);
}
API CUresult cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n, void *) {
  if (n && (!inside(src, n) || !inside(dst, n))) return say("device copy outside an allocation"), INVALID_VALUE;
  std::memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
  return OK;
}
API CUresult cuMemsetD8Async(unsigned long long dst, unsigned char v, size_t n, void *) {
  if (n && !inside(dst, n)) return say("memset outside an allocation"), INVALID_VALUE;
  std::memset((void *)(uintptr_t)dst, v, n);
  return OK;
}
API CUresult cuMemsetD32Async(unsigned long long dst, unsigned v, size_t n, void *) {
  if (n && !inside(dst, 4 * n)) return say("memset outside an allocation"), INVALID_VALUE;
  auto *p = (unsigned *)(uintptr_t)dst;
  for (size_t i = 0; i < n; i++) p[i] = v;
  return OK;
}

API CUresult cuModuleLoadData(void **m, const void *) {
  *m = new int(0);
  return OK;
}
API CUresult cuModuleLoad(void **m, const char *) { return cuModuleLoadData(m, nullptr); }
API CUresult cuModuleUnload(void *m) {
  delete static_cast<int *>(m);
  return OK;
}
API CUresult cuModuleGetFunction(void **f, void *, const char *name) {
  auto it = kernels().find(name);
  if (it == kernels().end()) {
    say("kernel %s is not emulated (only viralclip's own kernels of fused.cu are)", name);
    return NOT_FOUND;
  }
  *f = new Function{name, it->second};
  return OK;
}
API CUresult cuFuncSetAttribute(void *f, int attribute, int value) {
  if (attribute == 8) static_cast<Function *>(f)->max_dynamic_smem = value;  // max dynamic smem
  return OK;
}
API CUresult cuFuncGetAttribute(int *v, int, void *) {
  *v = 0;
  return OK;
}

// Launches over the emulation, after the checks a GPU makes: block and shared memory within the
// card's limits, and the dynamic shared memory within what the function was allowed.
API CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                            unsigned smem, void *, void **params, void **extra) {
  auto *fn = static_cast<Function *>(f);
  if (extra) return say("%s: launch with `extra` parameters", fn->name.c_str()), NOT_SUPPORTED;
  if (!gx || !gy || !gz || !bx || !by || !bz || (unsigned long long)bx * by * bz > 1024)
    return say("%s: grid (%u,%u,%u) block (%u,%u,%u)", fn->name.c_str(), gx, gy, gz, bx, by, bz), INVALID_VALUE;
  if ((int)smem > fn->max_dynamic_smem)
    return say("%s: %u bytes of dynamic shared memory, %d allowed", fn->name.c_str(), smem, fn->max_dynamic_smem),
           INVALID_VALUE;
  if (std::getenv("FAKE_CUDA_TRACE"))
    say("%s grid (%u,%u,%u) block %u smem %u", fn->name.c_str(), gx, gy, gz, bx, smem);
  // One launch at a time: the emulation's static __shared__ arrays are per kernel, not per launch.
  static std::mutex one_at_a_time;
  std::lock_guard<std::mutex> g(one_at_a_time);
  fn->launch(dim3{gx, gy, gz}, dim3{bx, by, bz}, smem, params);
  return OK;
}

#elif THIS_LIB == LIB_cublas

API int cublasCreate_v2(void **h) {
  *h = new int(0);
  return 0;
}
API int cublasDestroy_v2(void *h) {
  delete static_cast<int *>(h);
  return 0;
}
API int cublasSetStream_v2(void *, void *) { return 0; }
API int cublasSetWorkspace_v2(void *, void *, size_t) { return 0; }
API int cublasSetMathMode(void *, int) { return 0; }

#elif THIS_LIB == LIB_cublasLt

API int cublasLtCreate(void **h) {
  *h = new int(0);
  return 0;
}
API int cublasLtDestroy(void *h) {
  delete static_cast<int *>(h);
  return 0;
}

#elif THIS_LIB == LIB_curand

API int curandCreateGenerator(void **g, int) {
  *g = new int(0);
  return 0;
}
API int curandDestroyGenerator(void *g) {
  delete static_cast<int *>(g);
  return 0;
}
API int curandSetPseudoRandomGeneratorSeed(void *, unsigned long long) { return 0; }
API int curandSetStream(void *, void *) { return 0; }

#elif THIS_LIB == LIB_cudart
// The registration calls nvcc's host code makes when the binary loads (candle-kernels' own CUDA
// code): accepted and ignored; none of those kernels is ever launched here.
API void **__cudaRegisterFatBinary(void *) {
  static void *handle = nullptr;
  return &handle;
}
API void __cudaRegisterFatBinaryEnd(void **) {}
API void __cudaUnregisterFatBinary(void **) {}
API void __cudaRegisterFunction(void **, const char *, char *, const char *, int, void *, void *, void *, void *,
                                int *) {}
API void __cudaRegisterVar(void **, char *, char *, const char *, int, size_t, int, int) {}
#else
#error "FAKE_LIB must be one of cuda, cublas, cublasLt, curand, cudart"
#endif
