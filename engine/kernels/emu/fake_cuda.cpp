// A CUDA driver, cuBLAS's strided batched GEMM and cuRAND's generators on the CPU, so the
// engine's CUDA code runs through candle and cudarc exactly as on a GPU, without one: every kernel
// of ../fused.cu is executed by the emulation in cuda_emu.h (a std::thread per CUDA thread), and
// candle's own kernels (copies, casts, element-wise arithmetic, comparisons, reductions, index
// select and add, layer norm, softmax) are computed directly on the host from their names and
// signatures. Device memory is host memory; every call is synchronous, so stream order holds
// trivially. cuBLASLt's matmul is computed on the host too, for the GEMM with a bias + GELU
// epilogue (`ops::ffn::gemm_gelu`). What is not emulated (candle's other kernels, batched cuBLASLt
// layouts) fails with its name.
//
// scripts/cuda-emulated.sh builds it once per library a binary needs (-DFAKE_LIB=...), adds a stub
// for every other symbol that binary imports from that library (each stub prints its name and
// returns an error), and runs the `cuda` feature's tests against it, or any binary (`--run`). See
// README.md here.
#include <cstdarg>
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

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

#include "cuda_emu.h"

#include <functional>
#include <map>
#include <string>
#include <utility>

namespace {
// An element type of the memory the libraries are handed: values read and written through
// double, stored with the type's rounding (16-bit floats to nearest even, cuda_emu.h's
// conversions, as the GPU's).
struct Ty {
  enum Code { U8, U32, I64, F16, BF16, F32, F64 } code;
  // candle's kernel-name suffix.
  static bool parse(const std::string &s, Ty &t) {
    static const std::map<std::string, Code> names = {{"u8", U8},   {"u32", U32},   {"i64", I64}, {"f16", F16},
                                                      {"bf16", BF16}, {"f32", F32}, {"f64", F64}};
    auto it = names.find(s);
    if (it == names.end()) return false;
    t.code = it->second;
    return true;
  }
  // cuBLAS's cudaDataType_t: 0 f32, 1 f64, 2 f16, 14 bf16.
  static bool from_cuda(int type, Ty &t) {
    switch (type) {
      case 0: t.code = F32; return true;
      case 1: t.code = F64; return true;
      case 2: t.code = F16; return true;
      case 14: t.code = BF16; return true;
    }
    return false;
  }
  double get(const void *p, size_t i) const {
    switch (code) {
      case U8: return ((const uint8_t *)p)[i];
      case U32: return ((const uint32_t *)p)[i];
      case I64: return (double)((const int64_t *)p)[i];
      case F16: return __half2float(((const __half *)p)[i]);
      case BF16: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
      case F32: return ((const float *)p)[i];
      case F64: return ((const double *)p)[i];
    }
    return 0;
  }
  void set(void *p, size_t i, double v) const {
    switch (code) {
      case U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
      case U32: ((uint32_t *)p)[i] = (uint32_t)v; break;
      case I64: ((int64_t *)p)[i] = (int64_t)v; break;
      case F16: ((__half *)p)[i] = __float2half((float)v); break;
      case BF16: ((__nv_bfloat16 *)p)[i] = __float2bfloat16((float)v); break;
      case F32: ((float *)p)[i] = (float)v; break;
      case F64: ((double *)p)[i] = v; break;
    }
  }
  size_t size() const {
    switch (code) {
      case U8: return 1;
      case F16: case BF16: return 2;
      case U32: case F32: return 4;
      case I64: case F64: return 8;
    }
    return 0;
  }
  // What arithmetic in this type gives: f32 rounding for f32 and narrower floats.
  double round(double v) const { return code == F32 || code == F16 || code == BF16 ? (double)(float)v : v; }
};

// The tanh approximation of GELU: candle's `gelu` and cuBLASLt's GELU epilogues.
[[maybe_unused]] double gelu_tanh(double x) {
  return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

}  // namespace

#if THIS_LIB == LIB_cuda

#include "../fused.cu"

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

// candle's own kernels (candle-kernels: unary.cu, binary.cu, affine.cu, cast.cu, fill.cu,
// ternary.cu, indexing.cu, reduce.cu), computed directly on the host from their names and
// signatures: what candle's operations launch around and between the engine's (copies, casts,
// element-wise arithmetic, comparisons, sums), so whole model passes run. Values go through double,
// stored back with the type's rounding (bf16 and f16 to nearest even). A kernel of a family or
// type not handled here fails with its name.

// Element i of a layout given as candle passes it: `info` holds the dims, then stride sets; the
// k-th set (1: the input's; binary and where kernels pass more) applies. No info: contiguous.
size_t strided_index(size_t i, size_t nd, const size_t *info, size_t k = 1) {
  if (!info) return i;
  const size_t *strides = info + k * nd;
  size_t at = 0;
  for (size_t d = nd; d-- > 0;) {
    at += (i % info[d]) * strides[d];
    i /= info[d];
  }
  return at;
}

bool contiguous(size_t nd, const size_t *info) {
  if (!info) return true;
  size_t acc = 1;
  for (size_t d = nd; d-- > 0;) {
    if (info[d] > 1 && info[nd + d] != acc) return false;
    acc *= info[d];
  }
  return true;
}


bool unary_fn(const std::string &op, std::function<double(double, double)> &f) {
  static const std::map<std::string, std::function<double(double, double)>> ops = {
      {"copy", [](double x, double) { return x; }},
      {"neg", [](double x, double) { return -x; }},
      {"recip", [](double x, double) { return 1.0 / x; }},
      {"exp", [](double x, double) { return std::exp(x); }},
      {"log", [](double x, double) { return std::log(x); }},
      {"sin", [](double x, double) { return std::sin(x); }},
      {"cos", [](double x, double) { return std::cos(x); }},
      {"tanh", [](double x, double) { return std::tanh(x); }},
      {"erf", [](double x, double) { return std::erf(x); }},
      {"ceil", [](double x, double) { return std::ceil(x); }},
      {"floor", [](double x, double) { return std::floor(x); }},
      {"round", [](double x, double) { return std::round(x); }},
      {"abs", [](double x, double) { return std::fabs(x); }},
      {"sqr", [](double x, double) { return x * x; }},
      {"sqrt", [](double x, double) { return std::sqrt(x); }},
      {"gelu", [](double x, double) { return gelu_tanh(x); }},
      {"gelu_erf", [](double x, double) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }},
      {"relu", [](double x, double) { return x > 0 ? x : 0.0; }},
      {"silu", [](double x, double) { return x / (1.0 + std::exp(-x)); }},
      {"sigmoid", [](double x, double) { return 1.0 / (1.0 + std::exp(-x)); }},
      {"sign", [](double x, double) { return (double)((x > 0) - (x < 0)); }},
      {"elu", [](double x, double a) { return x >= 0 ? x : a * (std::exp(x) - 1.0); }},
      {"powf", [](double x, double a) { return std::pow(x, a); }},
  };
  auto it = ops.find(op);
  if (it == ops.end()) return false;
  f = it->second;
  return true;
}

bool binary_fn(const std::string &op, std::function<double(double, double)> &f) {
  static const std::map<std::string, std::function<double(double, double)>> ops = {
      {"badd", [](double x, double y) { return x + y; }},
      {"bsub", [](double x, double y) { return x - y; }},
      {"bmul", [](double x, double y) { return x * y; }},
      {"bdiv", [](double x, double y) { return x / y; }},
      {"bmaximum", [](double x, double y) { return x > y ? x : y; }},
      {"bminimum", [](double x, double y) { return x < y ? x : y; }},
      {"eq", [](double x, double y) { return (double)(x == y); }},
      {"ne", [](double x, double y) { return (double)(x != y); }},
      {"lt", [](double x, double y) { return (double)(x < y); }},
      {"le", [](double x, double y) { return (double)(x <= y); }},
      {"gt", [](double x, double y) { return (double)(x > y); }},
      {"ge", [](double x, double y) { return (double)(x >= y); }},
  };
  auto it = ops.find(op);
  if (it == ops.end()) return false;
  f = it->second;
  return true;
}

// The launcher for candle kernel `name`, or an empty one.
Launcher candle_kernel(const std::string &name) {
  std::vector<std::string> parts;
  for (size_t a = 0, b; a <= name.size(); a = b + 1) {
    b = name.find('_', a);
    if (b == std::string::npos) b = name.size();
    parts.push_back(name.substr(a, b - a));
  }
  if (parts.size() < 2) return {};
  Ty t, t2;
  const std::string last = parts.back();
  const std::string head = name.substr(0, name.size() - last.size() - 1);
  if (parts[0] == "cast" && parts.size() == 3 && Ty::parse(parts[1], t) && Ty::parse(parts[2], t2))
    return [t, t2](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *info = *(const size_t **)p[2];
      const void *in = *(void **)p[3];
      void *out = *(void **)p[4];
      for (size_t i = 0; i < numel; i++) t2.set(out, i, t.get(in, strided_index(i, nd, info)));
    };
  if (!Ty::parse(last, t)) return {};
  if (head == "fill")
    return [t](dim3, dim3, size_t, void **p) {
      void *buf = *(void **)p[0];
      const double v = t.get(p[1], 0);
      const size_t numel = *(size_t *)p[2];
      for (size_t i = 0; i < numel; i++) t.set(buf, i, v);
    };
  if (head == "copy2d")
    return [t](dim3, dim3, size_t, void **p) {
      const void *src = *(void **)p[0];
      void *dst = *(void **)p[1];
      const uint32_t d1 = *(uint32_t *)p[2], d2 = *(uint32_t *)p[3], ss = *(uint32_t *)p[4], ds = *(uint32_t *)p[5];
      for (uint32_t i = 0; i < d1; i++)
        for (uint32_t j = 0; j < d2; j++) t.set(dst, (size_t)i * ds + j, t.get(src, (size_t)i * ss + j));
    };
  if (head == "affine")
    return [t](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *info = *(const size_t **)p[2];
      const void *in = *(void **)p[3];
      void *out = *(void **)p[4];
      const double mul = t.get(p[5], 0), add = t.get(p[6], 0);
      for (size_t i = 0; i < numel; i++) {
        const double x = in ? t.get(in, strided_index(i, nd, info)) : t.get(out, i);
        t.set(out, i, t.round(t.round(x * mul) + add));
      }
    };
  std::function<double(double, double)> f;
  if (name[0] == 'u' && unary_fn(head.substr(1), f)) {
    const bool param = head == "uelu" || head == "upowf";
    return [t, f, param](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *info = *(const size_t **)p[2];
      const double a = param ? t.get(p[3], 0) : 0.0;
      const void *in = *(void **)p[param ? 4 : 3];
      void *out = *(void **)p[param ? 5 : 4];
      for (size_t i = 0; i < numel; i++) {
        const double x = in ? t.get(in, strided_index(i, nd, info)) : t.get(out, i);
        t.set(out, i, f(x, a));
      }
    };
  }
  if (binary_fn(head, f)) {
    const bool cmp = head[0] != 'b';
    return [t, f, cmp](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *ds = *(const size_t **)p[2];
      const void *l = *(void **)p[3], *r = *(void **)p[4];
      void *out = *(void **)p[5];
      Ty u8{Ty::U8};
      for (size_t i = 0; i < numel; i++) {
        const double x = t.get(l, strided_index(i, nd, ds, 1));
        const double y = t.get(r, strided_index(i, nd, ds, 2));
        (cmp ? u8 : t).set(out, i, t.round(f(x, y)));
      }
    };
  }
  if (parts[0] == "where" && parts.size() == 3 && Ty::parse(parts[1], t2))
    return [t, t2](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *info = *(const size_t **)p[2];
      const void *ids = *(void **)p[3], *tv = *(void **)p[4], *fv = *(void **)p[5];
      void *out = *(void **)p[6];
      for (size_t i = 0; i < numel; i++) {
        const bool c = t2.get(ids, strided_index(i, nd, info)) != 0;
        const size_t at = strided_index(i, nd, info, c ? 2 : 3);
        t.set(out, i, t.get(c ? tv : fv, at));
      }
    };
  if (parts[0] == "is" && parts.size() == 3 && Ty::parse(parts[1], t2))
    return [t, t2](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *info = *(const size_t **)p[2];
      const void *ids = *(void **)p[3], *in = *(void **)p[4];
      void *out = *(void **)p[5];
      const size_t src_dim = *(size_t *)p[7], ids_dim = *(size_t *)p[8], right = *(size_t *)p[9];
      for (size_t o = 0; o < numel; o++) {
        const size_t left_i = o / (ids_dim * right), id_i = o / right % ids_dim, right_i = o % right;
        const double id = t2.get(ids, id_i);
        if (id < 0 || id >= (double)src_dim) {
          say("%s: index %g out of range (dimension %zu)", "index_select", id, src_dim);
          std::abort();
        }
        // As the kernel does: `info` is the ids' layout, and only a non-contiguous one re-maps.
        const size_t src = left_i * src_dim * right + (size_t)id * right + right_i;
        t.set(out, o, t.get(in, contiguous(nd, info) ? src : strided_index(src, nd, info)));
      }
    };
  if (parts[0] == "ia" && parts.size() == 3 && Ty::parse(parts[1], t2))
    return [t, t2](dim3, dim3, size_t, void **p) {
      const void *ids = *(void **)p[0];
      const size_t n_ids = *(size_t *)p[1];
      const void *in = *(void **)p[2];
      void *out = *(void **)p[3];
      const size_t left = *(size_t *)p[4], dst_dim = *(size_t *)p[6], right = *(size_t *)p[7];
      for (size_t pre = 0; pre < left; pre++)
        for (size_t j = 0; j < n_ids; j++) {
          const double id = t2.get(ids, j);
          if (id < 0 || id >= (double)dst_dim) continue;
          for (size_t post = 0; post < right; post++) {
            const size_t src = (pre * n_ids + j) * right + post, dst = (pre * dst_dim + (size_t)id) * right + post;
            t.set(out, dst, t.get(out, dst) + t.get(in, src));
          }
        }
    };
  // Row kernels: one row per (block, threadIdx.y), rows = grid.x · block.y.
  if (head == "layernorm")
    return [t](dim3 grid, dim3 block, size_t, void **p) {
      const void *x = *(void **)p[0], *alpha = *(void **)p[2], *beta = *(void **)p[3];
      void *dst = *(void **)p[1];
      const int cols = *(int *)p[4];
      const float eps = *(float *)p[6];
      for (size_t r = 0; r < (size_t)grid.x * block.y; r++) {
        double mean = 0, sq = 0;
        for (int c = 0; c < cols; c++) {
          const double v = t.get(x, r * cols + c);
          mean += v;
          sq += v * v;
        }
        mean /= cols;
        const double inv = 1.0 / std::sqrt(sq / cols - mean * mean + eps);
        for (int c = 0; c < cols; c++) {
          double v = (t.get(x, r * cols + c) - mean) * inv;
          if (alpha) v *= t.get(alpha, c);
          if (beta) v += t.get(beta, c);
          t.set(dst, r * cols + c, v);
        }
      }
    };
  if (head == "softmax")
    return [t](dim3 grid, dim3 block, size_t, void **p) {
      const void *x = *(void **)p[0];
      void *dst = *(void **)p[1];
      const int cols = *(int *)p[2];
      for (size_t r = 0; r < (size_t)grid.x * block.x; r++) {  // softmax's rows run along x
        double m = -INFINITY, sum = 0;
        for (int c = 0; c < cols; c++) m = std::max(m, t.get(x, r * cols + c));
        for (int c = 0; c < cols; c++) sum += std::exp(t.get(x, r * cols + c) - m);
        for (int c = 0; c < cols; c++) t.set(dst, r * cols + c, std::exp(t.get(x, r * cols + c) - m) / sum);
      }
    };
  if (head == "const_set")
    return [t](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], nd = *(size_t *)p[1];
      const size_t *info = *(const size_t **)p[2];
      const double v = t.get(p[3], 0);
      void *out = *(void **)p[4];
      for (size_t i = 0; i < numel; i++) t.set(out, strided_index(i, nd, info), v);
    };
  if (head == "fast_sum_small")
    return [t](dim3, dim3, size_t, void **p) {
      const size_t out_el = *(size_t *)p[0], el = *(size_t *)p[1], nd = *(size_t *)p[2];
      const size_t *info = *(const size_t **)p[3];
      const void *src = *(void **)p[4];
      void *dst = *(void **)p[5];
      for (size_t o = 0; o < out_el; o++) {
        double acc = 0;
        for (size_t i = o * el; i < (o + 1) * el; i++) acc += t.get(src, strided_index(i, nd, info));
        t.set(dst, o, acc);
      }
    };
  if (head == "fast_sum" || head == "fast_max" || head == "fast_min" || head == "fast_argmax" || head == "fast_argmin")
    return [t, head](dim3, dim3, size_t, void **p) {
      const size_t numel = *(size_t *)p[0], el = *(size_t *)p[1], nd = *(size_t *)p[2];
      const size_t *info = *(const size_t **)p[3];
      const void *src = *(void **)p[4];
      void *dst = *(void **)p[5];
      Ty u32{Ty::U32};
      for (size_t o = 0; o < numel / el; o++) {
        double acc = head == "fast_sum" ? 0.0 : t.get(src, strided_index(o * el, nd, info));
        size_t arg = 0;
        for (size_t i = o * el; i < (o + 1) * el; i++) {
          const double v = t.get(src, strided_index(i, nd, info));
          if (head == "fast_sum") acc += v;
          else if ((head == "fast_max" || head == "fast_argmax") ? v > acc : v < acc) acc = v, arg = i - o * el;
        }
        if (head == "fast_argmax" || head == "fast_argmin") u32.set(dst, o, (double)arg);
        else t.set(dst, o, acc);
      }
    };
  return {};
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
    K(mask_softmax_f32s_f16)
    K(mask_softmax_f32s_bf16)
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
    case NOT_FOUND: *s = "named symbol not found: a kernel the fake driver does not emulate"; break;
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
  Launcher l = it != kernels().end() ? it->second : candle_kernel(name);
  if (!l) {
    say("kernel %s is not emulated (fused.cu's are, and the candle kernels fake_cuda.cpp lists)", name);
    return NOT_FOUND;
  }
  *f = new Function{name, l};
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

// Column-major C = alpha·op(A)·op(B) + beta·C for each of `batch` matrices, accumulated in double
// (so products agree with the CPU's to its rounding, as a GPU's f32 accumulation does): the
// matrices at a stride from each other (StridedBatched) or anywhere (Batched, tables of pointers
// in device memory, which is this process's).
namespace {
// A and B of one type; C of theirs, or f32 (16-bit products kept unrounded, as cuBLAS allows).
bool gemm_types(const char *what, int at, int bt, int ct, Ty &t, Ty &tc) {
  if (at != bt || !Ty::from_cuda(at, t) || !Ty::from_cuda(ct, tc) || (ct != at && tc.code != Ty::F32)) {
    say("%s with types %d %d %d", what, at, bt, ct);
    return false;
  }
  return true;
}
void gemm_one(Ty t, Ty tc, int ta, int tb, int m, int n, int k, double al, const void *a, int lda, const void *b,
              int ldb, double be, void *c, int ldc) {
  for (int j = 0; j < n; j++)
    for (int i = 0; i < m; i++) {
      double acc = 0;
      for (int l = 0; l < k; l++) {
        const size_t ia = ta ? (size_t)i * lda + l : (size_t)l * lda + i;
        const size_t ib = tb ? (size_t)l * ldb + j : (size_t)j * ldb + l;
        acc += t.get(a, ia) * t.get(b, ib);
      }
      const size_t ic = (size_t)j * ldc + i;
      tc.set(c, ic, al * acc + (be != 0 ? be * tc.get(c, ic) : 0.0));
    }
}
// The scalars' type follows the compute type: 64 (16F) half, 70 (64F) double, else float.
Ty scalars_for(int compute) { return Ty{compute == 64 ? Ty::F16 : compute == 70 ? Ty::F64 : Ty::F32}; }
}  // namespace

API int cublasGemmStridedBatchedEx(void *, int ta, int tb, int m, int n, int k, const void *alpha, const void *a,
                                   int at, int lda, long long sa, const void *b, int bt, int ldb, long long sb,
                                   const void *beta, void *c, int ct, int ldc, long long sc, int batch, int compute,
                                   int) {
  Ty t, tc;
  if (!gemm_types("cublasGemmStridedBatchedEx", at, bt, ct, t, tc)) return 15;  // CUBLAS_STATUS_NOT_SUPPORTED
  const Ty scalars = scalars_for(compute);
  const double al = scalars.get(alpha, 0), be = scalars.get(beta, 0);
  for (int q = 0; q < batch; q++)
    gemm_one(t, tc, ta, tb, m, n, k, al, (const char *)a + q * sa * t.size(), lda, (const char *)b + q * sb * t.size(),
             ldb, be, (char *)c + q * sc * tc.size(), ldc);
  return 0;
}
// Leading dimensions at least the rows they step over, as cuBLAS checks (7: INVALID_VALUE).
API int cublasGemmBatchedEx(void *, int ta, int tb, int m, int n, int k, const void *alpha, const void *const *a,
                            int at, int lda, const void *const *b, int bt, int ldb, const void *beta, void *const *c,
                            int ct, int ldc, int batch, int compute, int) {
  Ty t, tc;
  if (!gemm_types("cublasGemmBatchedEx", at, bt, ct, t, tc)) return 15;
  if (lda < (ta ? k : m) || ldb < (tb ? n : k) || ldc < m)
    return say("cublasGemmBatchedEx: lda %d ldb %d ldc %d for m %d n %d k %d", lda, ldb, ldc, m, n, k), 7;
  const Ty scalars = scalars_for(compute);
  const double al = scalars.get(alpha, 0), be = scalars.get(beta, 0);
  for (int q = 0; q < batch; q++) gemm_one(t, tc, ta, tb, m, n, k, al, a[q], lda, b[q], ldb, be, c[q], ldc);
  return 0;
}
API int cublasSetWorkspace_v2(void *, void *, size_t) { return 0; }
API int cublasSetMathMode(void *, int) { return 0; }

#elif THIS_LIB == LIB_cublasLt

// cuBLASLt's matmul as cudarc's `CudaBlasLT::matmul` drives it: descriptors that hold what was set
// on them, one "algorithm", and D = epilogue(alpha·op(A)·op(B) + beta·C) computed on the host in
// double (column-major, one matrix: batched layouts fail), rounded once to D's type. Epilogues:
// none, bias, GELU (the tanh approximation, as cuBLASLt's), bias + GELU, ReLU, bias + ReLU; the
// bias runs along D's rows (one value per row) in D's type, or in f32 where BIAS_DATA_TYPE says so.
namespace {
struct Layout {
  Ty t;
  uint64_t rows, cols;
  int64_t ld;
};
struct Desc {
  int compute, scale;
  int32_t trans[3] = {0, 0, 0};  // A, B, C
  uint32_t epilogue = 1;         // CUBLASLT_EPILOGUE_DEFAULT
  const void *bias = nullptr;
  int bias_type = -1;            // -1: D's type
};
constexpr int NOT_SUPPORTED = 15, INVALID_VALUE = 7;
}  // namespace

API int cublasLtCreate(void **h) {
  *h = new int(0);
  return 0;
}
API int cublasLtDestroy(void *h) {
  delete static_cast<int *>(h);
  return 0;
}
API int cublasLtMatrixLayoutCreate(void **layout, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  Ty t;
  if (!Ty::from_cuda(type, t)) return say("cublasLtMatrixLayoutCreate: type %d", type), NOT_SUPPORTED;
  if (ld < (int64_t)rows) return say("cublasLtMatrixLayoutCreate: ld %lld < rows %llu", (long long)ld,
                                     (unsigned long long)rows), INVALID_VALUE;
  *layout = new Layout{t, rows, cols, ld};
  return 0;
}
API int cublasLtMatrixLayoutDestroy(void *layout) {
  delete static_cast<Layout *>(layout);
  return 0;
}
API int cublasLtMatrixLayoutSetAttribute(void *, int attr, const void *buf, size_t) {
  // 5: BATCH_COUNT; a batch of one is the plain matrix.
  if (attr == 5 && *(const int32_t *)buf == 1) return 0;
  return say("cublasLtMatrixLayoutSetAttribute %d: batched layouts are not emulated", attr), NOT_SUPPORTED;
}
API int cublasLtMatmulDescCreate(void **desc, int compute, int scale) {
  *desc = new Desc{compute, scale};
  return 0;
}
API int cublasLtMatmulDescDestroy(void *desc) {
  delete static_cast<Desc *>(desc);
  return 0;
}
API int cublasLtMatmulDescSetAttribute(void *desc, int attr, const void *buf, size_t size) {
  auto *d = static_cast<Desc *>(desc);
  switch (attr) {
    case 3: case 4: case 5: d->trans[attr - 3] = *(const int32_t *)buf; return 0;  // TRANSA, TRANSB, TRANSC
    case 7: d->epilogue = *(const uint32_t *)buf; return 0;                        // EPILOGUE
    case 8: d->bias = *(const void *const *)buf; return 0;                         // BIAS_POINTER
    case 26: d->bias_type = *(const int32_t *)buf; return 0;                       // BIAS_DATA_TYPE
  }
  return say("cublasLtMatmulDescSetAttribute %d (%zu bytes) is not emulated", attr, size), NOT_SUPPORTED;
}
API int cublasLtMatmulPreferenceCreate(void **pref) {
  *pref = new int(0);
  return 0;
}
API int cublasLtMatmulPreferenceDestroy(void *pref) {
  delete static_cast<int *>(pref);
  return 0;
}
API int cublasLtMatmulPreferenceSetAttribute(void *, int, const void *, size_t) { return 0; }
// One algorithm, needing no workspace: cublasLtMatmulHeuristicResult_t is the algorithm's 64
// bytes, then the workspace size, the state and the waves count.
API int cublasLtMatmulAlgoGetHeuristic(void *, void *, void *, void *, void *, void *, void *, int requested,
                                       void *results, int *count) {
  if (requested < 1) return INVALID_VALUE;
  std::memset(results, 0, 64 + sizeof(size_t) + 2 * sizeof(int) + 4 * sizeof(int));
  *(float *)((char *)results + 64 + sizeof(size_t) + sizeof(int)) = 1.0f;
  *count = 1;
  return 0;
}
API int cublasLtMatmul(void *, void *desc, const void *alpha, const void *a, void *adesc, const void *b, void *bdesc,
                       const void *beta, const void *c, void *cdesc, void *dst, void *ddesc, const void *, void *,
                       size_t, void *) {
  const auto &d = *static_cast<Desc *>(desc);
  const auto &la = *static_cast<Layout *>(adesc), &lb = *static_cast<Layout *>(bdesc),
             &lc = *static_cast<Layout *>(cdesc), &ld = *static_cast<Layout *>(ddesc);
  if (d.trans[2]) return say("cublasLtMatmul: TRANSC is not emulated"), NOT_SUPPORTED;
  // op(A) is m × k, op(B) k × n, C and D m × n.
  const uint64_t m = ld.rows, n = ld.cols, k = d.trans[0] ? la.rows : la.cols;
  const uint64_t am = d.trans[0] ? la.cols : la.rows, bk = d.trans[1] ? lb.cols : lb.rows,
                 bn = d.trans[1] ? lb.rows : lb.cols;
  if (am != m || bk != k || bn != n || lc.rows != m || lc.cols != n)
    return say("cublasLtMatmul: shapes A %llux%llu B %llux%llu D %llux%llu do not chain", (unsigned long long)la.rows,
               (unsigned long long)la.cols, (unsigned long long)lb.rows, (unsigned long long)lb.cols,
               (unsigned long long)m, (unsigned long long)n),
           INVALID_VALUE;
  const bool with_bias = d.epilogue == 4 || d.epilogue == 6 || d.epilogue == 36;  // BIAS, RELU_BIAS, GELU_BIAS
  const bool gelu = d.epilogue == 32 || d.epilogue == 36, relu = d.epilogue == 2 || d.epilogue == 6;
  if (!with_bias && !gelu && !relu && d.epilogue != 1)
    return say("cublasLtMatmul: epilogue %u is not emulated", d.epilogue), NOT_SUPPORTED;
  if (with_bias && !d.bias) return say("cublasLtMatmul: a bias epilogue without a bias pointer"), INVALID_VALUE;
  Ty bias_t = ld.t;
  if (d.bias_type >= 0 && !Ty::from_cuda(d.bias_type, bias_t)) return NOT_SUPPORTED;
  const Ty scalars{d.scale == 1 ? Ty::F64 : Ty::F32};  // scale type: CUDA_R_64F, else f32
  const double al = scalars.get(alpha, 0), be = scalars.get(beta, 0);
  for (uint64_t j = 0; j < n; j++)
    for (uint64_t i = 0; i < m; i++) {
      double acc = 0;
      for (uint64_t l = 0; l < k; l++) {
        const size_t ia = d.trans[0] ? i * la.ld + l : l * la.ld + i;
        const size_t ib = d.trans[1] ? l * lb.ld + j : j * lb.ld + l;
        acc += la.t.get(a, ia) * lb.t.get(b, ib);
      }
      double v = al * acc + (be != 0 ? be * lc.t.get(c, j * lc.ld + i) : 0.0);
      if (with_bias) v += bias_t.get(d.bias, i);
      if (gelu) v = gelu_tanh(v);
      if (relu) v = v > 0 ? v : 0.0;
      ld.t.set(dst, j * ld.ld + i, v);
    }
  return 0;
}

#elif THIS_LIB == LIB_curand

API int curandCreateGenerator(void **g, int) {
  *g = new uint64_t(0x9E3779B97F4A7C15ull);
  return 0;
}
API int curandDestroyGenerator(void *g) {
  delete static_cast<uint64_t *>(g);
  return 0;
}
API int curandSetPseudoRandomGeneratorSeed(void *g, unsigned long long seed) {
  *static_cast<uint64_t *>(g) = seed * 0x9E3779B97F4A7C15ull | 1;
  return 0;
}
API int curandSetStream(void *, void *) { return 0; }

namespace {
// Not cuRAND's sequence (nothing may rely on one): a seeded xorshift, uniform in (0, 1].
double next(void *g) {
  uint64_t &s = *static_cast<uint64_t *>(g);
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return ((s >> 11) + 1) * (1.0 / 9007199254740992.0);
}
}  // namespace

API int curandGenerateUniform(void *g, float *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = (float)next(g);
  return 0;
}
API int curandGenerateUniformDouble(void *g, double *out, size_t n) {
  for (size_t i = 0; i < n; i++) out[i] = next(g);
  return 0;
}
API int curandGenerateNormal(void *g, float *out, size_t n, float mean, float std) {
  for (size_t i = 0; i < n; i++) out[i] = mean + std * (float)(std::sqrt(-2.0 * std::log(next(g))) * std::cos(6.283185307179586 * next(g)));
  return 0;
}
API int curandGenerateNormalDouble(void *g, double *out, size_t n, double mean, double std) {
  for (size_t i = 0; i < n; i++) out[i] = mean + std * std::sqrt(-2.0 * std::log(next(g))) * std::cos(6.283185307179586 * next(g));
  return 0;
}

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
