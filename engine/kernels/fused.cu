// Fused element-wise kernels for the scoring path (see engine/src/model/ops/).
// Compiled to PTX by engine/build.rs when the `cuda` feature is on. Arithmetic in f32 whatever the
// storage type, as candle's own bf16/f16 kernels do.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(__half x) { return __half2float(x); }
__device__ __forceinline__ float load(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T store(float x);
template <> __device__ __forceinline__ float store<float>(float x) { return x; }
template <> __device__ __forceinline__ __half store<__half>(float x) { return __float2half(x); }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float x) { return __float2bfloat16(x); }

// 16-byte vectors: V elements of T moved with one load or store (the kernels below use them when
// the row length is a multiple of V and the pointers are 16-byte aligned, else element by element).
template <typename T> struct Vec { static constexpr uint32_t N = 16 / sizeof(T); };
__device__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }
template <typename T> __device__ __forceinline__ void load_vec(const T *p, float *out) {
  const uint4 u = *reinterpret_cast<const uint4 *>(p);
  const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
  for (uint32_t k = 0; k < Vec<T>::N; k++) out[k] = load(e[k]);
}
// N f32 values (a multiple of 4, 16-byte aligned) in N / 4 loads: the f32 parameters that go with
// a vector of a 16-bit T (N = Vec<T>::N).
template <uint32_t N> __device__ __forceinline__ void load_f32s(const float *p, float *out) {
#pragma unroll
  for (uint32_t k = 0; k < N; k += 4) {
    const float4 u = *reinterpret_cast<const float4 *>(p + k);
    out[k] = u.x, out[k + 1] = u.y, out[k + 2] = u.z, out[k + 3] = u.w;
  }
}
template <typename T> __device__ __forceinline__ void store_vec(T *p, const float *in) {
  uint4 u;
  T *e = reinterpret_cast<T *>(&u);
#pragma unroll
  for (uint32_t k = 0; k < Vec<T>::N; k++) e[k] = store<T>(in[k]);
  *reinterpret_cast<uint4 *>(p) = u;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

// y[r, c] = gelu_erf(x[r, c] + b[c]); x, y: rows × d, contiguous; n = rows · d.
template <typename T>
__device__ void bias_gelu(const T *x, const T *b, T *y, uint32_t n, uint32_t d) {
  constexpr uint32_t V = Vec<T>::N;
  const uint32_t stride = blockDim.x * gridDim.x;
  if (d % V == 0 && aligned16(x) && aligned16(b) && aligned16(y)) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n / V; i += stride) {
      float v[V], bb[V];
      load_vec(x + (size_t)i * V, v);
      load_vec(b + (i * V) % d, bb);
#pragma unroll
      for (uint32_t k = 0; k < V; k++) v[k] = gelu_erf(v[k] + bb[k]);
      store_vec(y + (size_t)i * V, v);
    }
    return;
  }
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = store<T>(gelu_erf(load(x[i]) + load(b[i % d])));
}

// Sum over the block; `shared` holds 32 floats. Every thread gets the total.
__device__ __forceinline__ float block_sum(float v, float *shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  v = lane < warps ? shared[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// One block per row: y = layer_norm(x + bias + residual) * gamma + beta, with p = [bias; gamma; beta]
// (3 × d) in f32 whatever T (a 16-bit model keeps its norms' parameters unrounded). Two passes over the row (mean, then variance of the centred values), as candle does.
// (A warp-per-row version holding the row in registers measured slower on an H200: 218 µs against
// 120 µs for 32,768 rows of 768 in bf16.)
template <typename T>
__device__ void add_norm_block(const T *x, const T *r, const float *p, T *y, uint32_t row, uint32_t d, float eps) {
  __shared__ float shared[32];
  const T *xr = x + (size_t)row * d, *rr = r + (size_t)row * d;
  T *yr = y + (size_t)row * d;
  const float *bias = p, *gamma = p + d, *beta = p + 2 * d;
  float sum = 0.0f;
  for (uint32_t c = threadIdx.x; c < d; c += blockDim.x) sum += load(xr[c]) + load(bias[c]) + load(rr[c]);
  const float mean = block_sum(sum, shared) / d;
  float var = 0.0f;
  for (uint32_t c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = load(xr[c]) + load(bias[c]) + load(rr[c]) - mean;
    var += v * v;
  }
  const float inv = rsqrtf(block_sum(var, shared) / d + eps);
  for (uint32_t c = threadIdx.x; c < d; c += blockDim.x) {
    const float v = load(xr[c]) + load(bias[c]) + load(rr[c]) - mean;
    yr[c] = store<T>(v * inv * load(gamma[c]) + load(beta[c]));
  }
}

template <typename T>
__device__ void add_norm(const T *x, const T *r, const float *p, T *y, uint32_t rows, uint32_t d, float eps) {
  if (blockIdx.x < rows) add_norm_block<T>(x, r, p, y, blockIdx.x, d, eps);
}

// The default (VIRALCLIP_LN_VEC=0 turns it off; on an H200, 40 µs a norm against the block kernel's
// 118 at 256×128 on the ruBert-base shape): one warp per row, the row in
// registers as 16-byte vectors (up to 4 a lane: d <= 1024 in bf16/f16, 512 in f32). The launcher
// uses it only when d is a multiple of the vector and every operand is 16-byte aligned.
template <typename T>
__device__ void add_norm_vec(const T *x, const T *r, const float *p, T *y, uint32_t rows, uint32_t d, float eps) {
  constexpr uint32_t V = Vec<T>::N;
  constexpr int NV = 4;
  const uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const uint32_t lane = threadIdx.x & 31, nv = d / V;
  const T *xr = x + (size_t)row * d, *rr = r + (size_t)row * d;
  T *yr = y + (size_t)row * d;
  const float *bias = p, *gamma = p + d, *beta = p + 2 * d;
  float v[NV][V];
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const uint32_t j = lane + 32 * k;
    if (j < nv) {
      float a[V], b[V];
      load_vec(xr + j * V, v[k]);
      load_vec(rr + j * V, a);
      load_f32s<V>(bias + j * V, b);
#pragma unroll
      for (uint32_t e = 0; e < V; e++) {
        v[k][e] += a[e] + b[e];
        sum += v[k][e];
      }
    }
  }
  const float mean = warp_sum(sum) / d;
  float var = 0.0f;
#pragma unroll
  for (int k = 0; k < NV; k++) {
    if (lane + 32 * k < nv) {
#pragma unroll
      for (uint32_t e = 0; e < V; e++) {
        const float c = v[k][e] - mean;
        var += c * c;
      }
    }
  }
  const float inv = rsqrtf(warp_sum(var) / d + eps);
#pragma unroll
  for (int k = 0; k < NV; k++) {
    const uint32_t j = lane + 32 * k;
    if (j < nv) {
      float g[V], b[V], o[V];
      load_f32s<V>(gamma + j * V, g);
      load_f32s<V>(beta + j * V, b);
#pragma unroll
      for (uint32_t e = 0; e < V; e++) o[e] = (v[k][e] - mean) * inv * g[e] + b[e];
      store_vec(yr + j * V, o);
    }
  }
}

#define FUSED(T, S)                                                                                \
  extern "C" __global__ void bias_gelu_##S(const T *x, const T *b, T *y, uint32_t n, uint32_t d) { \
    bias_gelu<T>(x, b, y, n, d);                                                                   \
  }                                                                                                \
  extern "C" __global__ void add_norm_##S(const T *x, const T *r, const float *p, T *y,            \
                                          uint32_t rows, uint32_t d, float eps) {                  \
    add_norm<T>(x, r, p, y, rows, d, eps);                                                         \
  }                                                                                                \
  extern "C" __global__ void add_norm_vec_##S(const T *x, const T *r, const float *p, T *y,        \
                                              uint32_t rows, uint32_t d, float eps) {              \
    add_norm_vec<T>(x, r, p, y, rows, d, eps);                                                     \
  }

FUSED(float, f32)
FUSED(__half, f16)
FUSED(__nv_bfloat16, bf16)

// Bias and head split in one pass: x is `parts` packed projections (b·t, parts·h) without their
// bias (parts = 3: query, key and value for scoring; 1: one of them, for training by hand); y is
// (parts, b, heads, t, d) with h = heads·d. One thread per output vector (16 bytes) when d
// allows, else per element; 32-bit index arithmetic.
template <typename T>
__device__ void split_parts(const T *x, const T *bias, T *y, uint32_t parts, uint32_t b, uint32_t t,
                            uint32_t heads, uint32_t d) {
  constexpr uint32_t V = Vec<T>::N;
  const bool vec = d % V == 0 && aligned16(x) && aligned16(bias) && aligned16(y);
  const uint32_t w = vec ? V : 1, dw = d / w, h = heads * d;
  const uint32_t items = parts * b * t * heads * dw;
  for (uint32_t o = blockIdx.x * blockDim.x + threadIdx.x; o < items; o += blockDim.x * gridDim.x) {
    uint32_t rest = o;
    const uint32_t j = (rest % dw) * w; rest /= dw;
    const uint32_t ti = rest % t; rest /= t;
    const uint32_t head = rest % heads; rest /= heads;
    const uint32_t bi = rest % b;
    const uint32_t which = rest / b;
    const uint32_t c = which * h + head * d + j;
    const size_t src = ((size_t)bi * t + ti) * parts * h + c, dst = (size_t)o * w;
    if (vec) {
      float v[V], bb[V];
      load_vec(x + src, v);
      load_vec(bias + c, bb);
#pragma unroll
      for (uint32_t k = 0; k < V; k++) v[k] += bb[k];
      store_vec(y + dst, v);
    } else {
      y[dst] = store<T>(load(x[src]) + load(bias[c]));
    }
  }
}

// The attention context back to token order: x (b, heads, t, d) -> y (b, t, heads, d).
template <typename T>
__device__ void merge_heads(const T *x, T *y, uint32_t b, uint32_t heads, uint32_t t, uint32_t d) {
  constexpr uint32_t V = Vec<T>::N;
  const bool vec = d % V == 0 && aligned16(x) && aligned16(y);
  const uint32_t w = vec ? V : 1, dw = d / w;
  const uint32_t items = b * t * heads * dw;
  for (uint32_t o = blockIdx.x * blockDim.x + threadIdx.x; o < items; o += blockDim.x * gridDim.x) {
    uint32_t rest = o;
    const uint32_t j = (rest % dw) * w; rest /= dw;
    const uint32_t head = rest % heads; rest /= heads;
    const uint32_t ti = rest % t;
    const uint32_t bi = rest / t;
    const size_t src = (((size_t)bi * heads + head) * t + ti) * d + j, dst = (size_t)o * w;
    if (vec) *reinterpret_cast<uint4 *>(y + dst) = *reinterpret_cast<const uint4 *>(x + src);
    else y[dst] = x[src];
  }
}

// Softmax over the last dimension of scores + mask: s is (rows, t) with rows = b·rows_per_batch
// (heads·queries per text), m the additive mask (b, t). One warp per row; rows of up to 32·PER
// values are held in registers (read once, written once). The scores are S: T, or f32 where a
// 16-bit model's scores come from a GEMM that keeps them unrounded (mask_softmax_f32s_*).
template <typename S, typename T, int PER>
__device__ void mask_softmax_reg(const S *sr, const T *mr, T *yr, uint32_t t) {
  const uint32_t lane = threadIdx.x & 31;
  float v[PER];
  float mx = -INFINITY;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    const uint32_t c = lane + 32 * k;
    v[k] = c < t ? load(sr[c]) + load(mr[c]) : -INFINITY;
    mx = fmaxf(mx, v[k]);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
#pragma unroll
  for (int k = 0; k < PER; k++) {
    v[k] = lane + 32 * k < t ? expf(v[k] - mx) : 0.0f;
    sum += v[k];
  }
  const float inv = 1.0f / warp_sum(sum);
#pragma unroll
  for (int k = 0; k < PER; k++) {
    const uint32_t c = lane + 32 * k;
    if (c < t) yr[c] = store<T>(v[k] * inv);
  }
}

template <typename S, typename T>
__device__ void mask_softmax(const S *s, const T *m, T *y, uint32_t rows, uint32_t t, uint32_t rows_per_batch) {
  const uint32_t row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const uint32_t lane = threadIdx.x & 31;
  const S *sr = s + (size_t)row * t;
  const T *mr = m + (size_t)(row / rows_per_batch) * t;
  T *yr = y + (size_t)row * t;
  if (t <= 64) return mask_softmax_reg<S, T, 2>(sr, mr, yr, t);
  if (t <= 128) return mask_softmax_reg<S, T, 4>(sr, mr, yr, t);
  if (t <= 256) return mask_softmax_reg<S, T, 8>(sr, mr, yr, t);
  if (t <= 512) return mask_softmax_reg<S, T, 16>(sr, mr, yr, t);
  float mx = -INFINITY;
  for (uint32_t c = lane; c < t; c += 32) mx = fmaxf(mx, load(sr[c]) + load(mr[c]));
  mx = warp_max(mx);
  float sum = 0.0f;
  for (uint32_t c = lane; c < t; c += 32) sum += expf(load(sr[c]) + load(mr[c]) - mx);
  const float inv = 1.0f / warp_sum(sum);
  for (uint32_t c = lane; c < t; c += 32) yr[c] = store<T>(expf(load(sr[c]) + load(mr[c]) - mx) * inv);
}

#define ATTN(T, S)                                                                                 \
  extern "C" __global__ void split_parts_##S(const T *x, const T *bias, T *y, uint32_t parts,      \
                                             uint32_t b, uint32_t t, uint32_t heads, uint32_t d) { \
    split_parts<T>(x, bias, y, parts, b, t, heads, d);                                             \
  }                                                                                                \
  extern "C" __global__ void mask_softmax_##S(const T *s, const T *m, T *y, uint32_t rows,         \
                                              uint32_t t, uint32_t rows_per_batch) {               \
    mask_softmax<T, T>(s, m, y, rows, t, rows_per_batch);                                          \
  }                                                                                                \
  extern "C" __global__ void merge_heads_##S(const T *x, T *y, uint32_t b, uint32_t heads,         \
                                             uint32_t t, uint32_t d) {                             \
    merge_heads<T>(x, y, b, heads, t, d);                                                          \
  }

ATTN(float, f32)
ATTN(__half, f16)
ATTN(__nv_bfloat16, bf16)

// A 16-bit model's mask + softmax on f32 scores (its probabilities in T).
#define F32_SCORES(T, S)                                                                           \
  extern "C" __global__ void mask_softmax_f32s_##S(const float *s, const T *m, T *y, uint32_t rows, \
                                                   uint32_t t, uint32_t rows_per_batch) {          \
    mask_softmax<float, T>(s, m, y, rows, t, rows_per_batch);                                      \
  }
F32_SCORES(__half, f16)
F32_SCORES(__nv_bfloat16, bf16)

// Attention in one kernel for short texts (t ≤ 256), on tensor cores: the packed projection
// `qkv` (b·t, 3·h) without its bias, `bias` (3·h; the query's part already scaled by 1/√d),
// the additive mask (b, t); `out` (b, tq, h), the context in token order. It replaces the QKV bias +
// head split, the scores' product, the mask + softmax, the context's product and the head merge:
// the scores never leave shared memory. One block per (64 queries, head, text), four warps of 16
// queries each. In shared memory: the block's queries and the text's keys and values with their
// bias (rows past t zeroed, so tp = t rounded up to 16), the scores in f32 and, over them, the
// probabilities in T, and the context in f32. Strides are padded (+8 elements, +4 floats) so the
// fragments' rows do not all start on one bank. Only the first `tq` queries (t, or 1 for the
// [CLS] alone) are computed and written. Needs sm_80 (bf16/f16 WMMA); T is __half or
// __nv_bfloat16, D the head size (32 or 64).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#include <mma.h>
#define ATTN_TC 1
#endif
constexpr uint32_t ATTN_QUERIES = 64, ATTN_WARPS = 4;
// The block's dynamic shared memory (kernels/emu/cuda_emu.h gives its own on the CPU).
#ifndef DYNAMIC_SMEM
#define DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

__host__ __device__ constexpr uint32_t attn_pad16(uint32_t t) { return (t + 15) & ~15u; }

template <typename T, uint32_t D>
__device__ void attention(const T *qkv, const T *bias, const T *mask, T *out, uint32_t t, uint32_t tq,
                          uint32_t heads) {
#ifdef ATTN_TC
  using namespace nvcuda;
  constexpr uint32_t LD = D + 8, OLD = D + 4, VPR = D / 8;  // strides; 16-byte vectors per row
  const uint32_t tp = attn_pad16(t), sld = tp + 4, h = heads * D;
  const uint32_t head = blockIdx.y, bi = blockIdx.z, q0 = blockIdx.x * ATTN_QUERIES;
  DYNAMIC_SMEM(smem);
  T *qs = reinterpret_cast<T *>(smem);                        // ATTN_QUERIES × LD
  T *ks = qs + ATTN_QUERIES * LD;                             // tp × LD
  T *vs = ks + tp * LD;                                       // tp × LD
  float *ss = reinterpret_cast<float *>(vs + tp * LD);        // ATTN_QUERIES × sld
  float *os = ss + ATTN_QUERIES * sld;                        // ATTN_QUERIES × OLD
  // Queries, keys and values with their bias, 16 bytes at a time; rows past the text are zeros.
  const uint32_t rows = ATTN_QUERIES + 2 * tp;
  for (uint32_t i = threadIdx.x; i < rows * VPR; i += blockDim.x) {
    const uint32_t row = i / VPR, c = (i % VPR) * 8;
    uint32_t part, src;
    T *dst;
    bool valid;
    if (row < ATTN_QUERIES) {
      part = 0, src = q0 + row, dst = qs + row * LD + c, valid = src < tq;
    } else if (row < ATTN_QUERIES + tp) {
      part = 1, src = row - ATTN_QUERIES, dst = ks + src * LD + c, valid = src < t;
    } else {
      part = 2, src = row - ATTN_QUERIES - tp, dst = vs + src * LD + c, valid = src < t;
    }
    float v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (valid) {
      const uint32_t col = part * h + head * D + c;
      float bb[8];
      load_vec(qkv + ((size_t)bi * t + src) * 3 * h + col, v);
      load_vec(bias + col, bb);
#pragma unroll
      for (int k = 0; k < 8; k++) v[k] += bb[k];
    }
    store_vec(dst, v);
  }
  __syncthreads();
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = warp * 16;
  if (q0 + r0 >= tq) return;  // no query of this warp's is wanted
  // Scores: this warp's 16 queries against every key, f32, into shared memory.
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[D / 16];
#pragma unroll
  for (uint32_t kk = 0; kk < D / 16; kk++) wmma::load_matrix_sync(qa[kk], qs + r0 * LD + kk * 16, LD);
  for (uint32_t n = 0; n < tp / 16; n++) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
#pragma unroll
    for (uint32_t kk = 0; kk < D / 16; kk++) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;  // keys as Kᵀ
      wmma::load_matrix_sync(kb, ks + n * 16 * LD + kk * 16, LD);
      wmma::mma_sync(acc, qa[kk], kb, acc);
    }
    wmma::store_matrix_sync(ss + r0 * sld + n * 16, acc, sld, wmma::mem_row_major);
  }
  __syncwarp();
  // Mask + softmax row by row (a row is read whole into registers before its probabilities, in
  // T with stride 2·sld, are written over its first half).
  T *ps = reinterpret_cast<T *>(ss);
  const T *mr = mask + (size_t)bi * t;
  for (uint32_t r = r0; r < r0 + 16; r++) {
    float v[8];
    float mx = -INFINITY;
#pragma unroll
    for (uint32_t k = 0; k < 8; k++) {
      const uint32_t j = lane + 32 * k;
      v[k] = j < t ? ss[r * sld + j] + load(mr[j]) : -INFINITY;
      mx = fmaxf(mx, v[k]);
    }
    mx = warp_max(mx);
    float sum = 0.0f;
#pragma unroll
    for (uint32_t k = 0; k < 8; k++) {
      v[k] = lane + 32 * k < t ? expf(v[k] - mx) : 0.0f;
      sum += v[k];
    }
    const float inv = 1.0f / warp_sum(sum);
    __syncwarp();
#pragma unroll
    for (uint32_t k = 0; k < 8; k++) {
      const uint32_t j = lane + 32 * k;
      if (j < tp) ps[r * 2 * sld + j] = store<T>(v[k] * inv);
    }
    __syncwarp();
  }
  // Context: probabilities × values, f32, into shared memory.
#pragma unroll
  for (uint32_t n = 0; n < D / 16; n++) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (uint32_t kk = 0; kk < tp / 16; kk++) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
      wmma::load_matrix_sync(pa, ps + r0 * 2 * sld + kk * 16, 2 * sld);
      wmma::load_matrix_sync(vb, vs + kk * 16 * LD + n * 16, LD);
      wmma::mma_sync(acc, pa, vb, acc);
    }
    wmma::store_matrix_sync(os + r0 * OLD + n * 16, acc, OLD, wmma::mem_row_major);
  }
  __syncwarp();
  // This warp's rows of the context, in token order at the head's columns.
  for (uint32_t i = lane; i < 16 * VPR; i += 32) {
    const uint32_t r = i / VPR, c = (i % VPR) * 8, q = q0 + r0 + r;
    if (q < tq) store_vec(out + ((size_t)bi * tq + q) * h + head * D + c, os + (r0 + r) * OLD + c);
  }
#else
  (void)ATTN_QUERIES;
  __trap();  // built for an architecture without bf16/f16 tensor-core fragments
#endif
}

#define ATTENTION(T, S, D)                                                                         \
  extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32)                                    \
      attention_d##D##_##S(const T *qkv, const T *bias, const T *mask, T *out, uint32_t t,          \
                           uint32_t tq, uint32_t heads) {                                          \
    attention<T, D>(qkv, bias, mask, out, t, tq, heads);                                           \
  }

ATTENTION(__half, f16, 32)
ATTENTION(__half, f16, 64)
ATTENTION(__nv_bfloat16, bf16, 32)
ATTENTION(__nv_bfloat16, bf16, 64)

// AdamW's passes over f32 master weights, in place (the trainer's optimiser step; see
// adam_moment / adam_update in engine/src/model/adam.rs, whose CPU loops compute the same).
// x = beta * x + (1 - beta) * g (g * g when square): a moment.
extern "C" __global__ void adam_moment_f32(float *x, const float *g, uint32_t n, float beta, uint32_t square) {
  const float rest = 1.0f - beta;
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float gi = g[i];
    x[i] = x[i] * beta + (square ? gi * gi : gi) * rest;
  }
}

// w -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + decay * w).
extern "C" __global__ void adam_update_f32(float *w, const float *m, const float *v, uint32_t n, float lr,
                                           float bc1, float bc2, float eps, float decay) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float step = (m[i] / bc1) / (sqrtf(v[i] / bc2) + eps) + decay * w[i];
    w[i] -= lr * step;
  }
}

// One optimiser step over every trainable tensor (engine/src/model/step.rs, whose CPU passes
// compute the same): PCGrad's dot products, the merged gradients' norm, AdamW. One block per
// chunk of STEP_CHUNK elements of one tensor; the chunk table lists (tensor, first element).
// The merged gradient alpha * a + beta * b is recomputed in each pass, never stored.
#define STEP_CHUNK 16384u
struct StepParam {
  float *w, *m, *v;
  const float *a, *b; // either may be null (a zero gradient)
  uint32_t n, shared;
  float lr, bc1, bc2, eps, decay, pad;
};

__device__ __forceinline__ float step_grad(const StepParam &p, uint32_t i, float alpha, float beta) {
  float g = 0.0f;
  if (p.a) g += alpha * p.a[i];
  if (p.b) g += beta * p.b[i];
  return g;
}

// alpha, beta of a tensor from the dot products in out[0..3] (a.b, |a|^2, |b|^2).
__device__ __forceinline__ void step_coefficients(const double *out, uint32_t pcgrad, uint32_t shared,
                                                  float *alpha, float *beta) {
  *alpha = 1.0f;
  *beta = 1.0f;
  const double d = out[0], n1 = out[1], n2 = out[2];
  if (pcgrad && shared && d < 0.0 && n1 > 0.0 && n2 > 0.0) {
    *alpha = (float)(1.0 - d / n1);
    *beta = (float)(1.0 - d / n2);
  }
}

// Sums each of K per-thread values over the block and adds them to out[0..K] (256 threads).
template <int K> __device__ __forceinline__ void step_block_sum(float (&acc)[K], double *out) {
  __shared__ float part[K][8];
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < K; k++) {
    const float s = warp_sum(acc[k]);
    if (lane == 0) part[k][warp] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; k++) {
      double s = 0.0;
      for (uint32_t w = 0; w < (blockDim.x + 31) / 32; w++) s += part[k][w];
      atomicAdd(out + k, s);
    }
  }
}

extern "C" __global__ void step_dots(const StepParam *ps, const uint32_t *chunks, double *out) {
  const StepParam p = ps[chunks[2 * blockIdx.x]];
  if (!p.shared) return; // the whole block leaves: no barrier is skipped
  const uint32_t start = chunks[2 * blockIdx.x + 1], end = min(start + STEP_CHUNK, p.n);
  float acc[3] = {0.0f, 0.0f, 0.0f};
  for (uint32_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    const float x = p.a ? p.a[i] : 0.0f, y = p.b ? p.b[i] : 0.0f;
    acc[0] += x * y;
    acc[1] += x * x;
    acc[2] += y * y;
  }
  step_block_sum<3>(acc, out);
}

extern "C" __global__ void step_norm(const StepParam *ps, const uint32_t *chunks, double *out, uint32_t pcgrad) {
  const StepParam p = ps[chunks[2 * blockIdx.x]];
  const uint32_t start = chunks[2 * blockIdx.x + 1], end = min(start + STEP_CHUNK, p.n);
  float alpha, beta;
  step_coefficients(out, pcgrad, p.shared, &alpha, &beta);
  float acc[1] = {0.0f};
  for (uint32_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    const float g = step_grad(p, i, alpha, beta);
    acc[0] += g * g;
  }
  step_block_sum<1>(acc, out + 3);
}

extern "C" __global__ void step_adamw(const StepParam *ps, const uint32_t *chunks, const double *out,
                                      uint32_t pcgrad, double clip, float beta1, float beta2) {
  const StepParam p = ps[chunks[2 * blockIdx.x]];
  const uint32_t start = chunks[2 * blockIdx.x + 1], end = min(start + STEP_CHUNK, p.n);
  float alpha, beta;
  step_coefficients(out, pcgrad, p.shared, &alpha, &beta);
  const double norm = sqrt(out[3]);
  const float scale = norm > clip ? (float)(clip / (norm + 1e-6)) : 1.0f;
  alpha *= scale;
  beta *= scale;
  for (uint32_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    const float g = step_grad(p, i, alpha, beta);
    const float m = p.m[i] * beta1 + g * (1.0f - beta1);
    const float v = p.v[i] * beta2 + g * g * (1.0f - beta2);
    p.m[i] = m;
    p.v[i] = v;
    const float step = (m / p.bc1) / (sqrtf(v / p.bc2) + p.eps) + p.decay * p.w[i];
    p.w[i] -= p.lr * step;
  }
}

// ---- The training path's fused operations, with their backward passes (f32; see
// engine/src/model/ops/, whose CPU loops compute the same). Row kernels: one block per row.

// The max over the block of each thread's v, returned to every thread (block_sum above: the
// sum); shm: 32 floats.
__device__ __forceinline__ float block_max(float v, float *shm) {
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  return warp_max(lane < warps ? shm[lane] : -INFINITY);
}

// Mean and 1/sqrt(var + eps) of a row of h.
__device__ __forceinline__ void row_stats(const float *xr, uint32_t h, float eps, float *shm, float *mean,
                                          float *rstd) {
  float s = 0.0f;
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) s += xr[i];
  const float mu = block_sum(s, shm) / (float)h;
  float v = 0.0f;
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) {
    const float d = xr[i] - mu;
    v += d * d;
  }
  *mean = mu;
  *rstd = 1.0f / sqrtf(block_sum(v, shm) / (float)h + eps);
}

// y = (x - mean) / sqrt(var + eps) * g + b, over rows of h.
extern "C" __global__ void ln_train_fwd_f32(const float *x, const float *g, const float *b, float *y, uint32_t h,
                                            float eps) {
  __shared__ float shm[32];
  const float *xr = x + (size_t)blockIdx.x * h;
  float *yr = y + (size_t)blockIdx.x * h;
  float mean, rstd;
  row_stats(xr, h, eps, shm, &mean, &rstd);
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) yr[i] = (xr[i] - mean) * rstd * g[i] + b[i];
}

// Dropout's mask, element by element, from (seed, element index) alone: every kernel that applies
// a dropout (dropout_f32, or fused with its neighbours) goes through dropout_at, so all draw the
// same mask for the same seed and element (ops/dropout.rs's Mask computes the same on the CPU).
__device__ __forceinline__ float dropout_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}
// v / (1 - p) where element i is kept, 0 where dropped.
__device__ __forceinline__ float dropout_at(float v, uint64_t seed, uint64_t i, float p) {
  return dropout_uniform(seed, i) >= p ? v * (1.0f / (1.0f - p)) : 0.0f;
}

// out[0 .. rows*h]: dx = rstd * (dy*g - mean(dy*g) - xhat * mean(dy*g*xhat));
// out[rows*h ..]: dy * xhat (summed over rows by the caller for the gain's gradient);
// with `drop` (ln_train_bwd_drop_f32), out[2*rows*h ..]: dx through dropout.
struct Dropout {
  float p;
  uint64_t seed;
};
__device__ __forceinline__ void ln_bwd_row(const float *x, const float *g, const float *dy, float *out, uint32_t rows,
                                           uint32_t h, float eps, const Dropout *drop) {
  __shared__ float shm[32];
  const size_t off = (size_t)blockIdx.x * h;
  const float *xr = x + off, *dyr = dy + off;
  float mean, rstd;
  row_stats(xr, h, eps, shm, &mean, &rstd);
  float sg = 0.0f, sgx = 0.0f;
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) {
    const float xh = (xr[i] - mean) * rstd, gi = dyr[i] * g[i];
    sg += gi;
    sgx += gi * xh;
  }
  sg = block_sum(sg, shm) / (float)h;
  sgx = block_sum(sgx, shm) / (float)h;
  float *dx = out + off, *dgx = out + (size_t)rows * h + off;
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) {
    const float xh = (xr[i] - mean) * rstd, gi = dyr[i] * g[i];
    const float d = rstd * (gi - sg - xh * sgx);
    dx[i] = d;
    dgx[i] = dyr[i] * xh;
    if (drop) out[2 * (size_t)rows * h + off + i] = dropout_at(d, drop->seed, off + i, drop->p);
  }
}
extern "C" __global__ void ln_train_bwd_f32(const float *x, const float *g, const float *dy, float *out, uint32_t rows,
                                            uint32_t h, float eps) {
  ln_bwd_row(x, g, dy, out, rows, h, eps, nullptr);
}
extern "C" __global__ void ln_train_bwd_drop_f32(const float *x, const float *g, const float *dy, float *out,
                                                 uint32_t rows, uint32_t h, float eps, float p, uint64_t seed) {
  const Dropout drop{p, seed};
  ln_bwd_row(x, g, dy, out, rows, h, eps, &drop);
}

// p = softmax(scale * s + mask) over rows of t; the additive mask row is m[(row / rows_per_batch) * t ..].
extern "C" __global__ void softmax_train_fwd_f32(const float *s, const float *m, float *p, uint32_t t,
                                                 uint32_t rows_per_batch, float scale) {
  __shared__ float shm[32];
  const size_t off = (size_t)blockIdx.x * t;
  const float *sr = s + off, *mr = m + (size_t)(blockIdx.x / rows_per_batch) * t;
  float *pr = p + off;
  float mx = -INFINITY;
  for (uint32_t i = threadIdx.x; i < t; i += blockDim.x) mx = fmaxf(mx, sr[i] * scale + mr[i]);
  mx = block_max(mx, shm);
  float sum = 0.0f;
  for (uint32_t i = threadIdx.x; i < t; i += blockDim.x) sum += expf(sr[i] * scale + mr[i] - mx);
  const float inv = 1.0f / block_sum(sum, shm);
  for (uint32_t i = threadIdx.x; i < t; i += blockDim.x) pr[i] = expf(sr[i] * scale + mr[i] - mx) * inv;
}

// ds = scale * p * (dp - sum(p * dp)) over rows of t.
extern "C" __global__ void softmax_train_bwd_f32(const float *p, const float *dp, float *ds, uint32_t t, float scale) {
  __shared__ float shm[32];
  const size_t off = (size_t)blockIdx.x * t;
  const float *pr = p + off, *dpr = dp + off;
  float dot = 0.0f;
  for (uint32_t i = threadIdx.x; i < t; i += blockDim.x) dot += pr[i] * dpr[i];
  dot = block_sum(dot, shm);
  for (uint32_t i = threadIdx.x; i < t; i += blockDim.x) ds[off + i] = scale * pr[i] * (dpr[i] - dot);
}

// dz = dy * gelu_erf'(x + b): Phi(z) + z * phi(z); x, dy: rows × d.
extern "C" __global__ void gelu_train_bwd_f32(const float *x, const float *b, const float *dy, float *dz, uint32_t n,
                                              uint32_t d) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float z = x[i] + b[i % d];
    const float cdf = 0.5f * (1.0f + erff(z * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * z * z);
    dz[i] = dy[i] * (cdf + z * pdf);
  }
}

// Dropout with a mask drawn from (seed, element index) alone (dropout_at above), so the backward
// pass (the same kernel on the gradient) draws the same one.
extern "C" __global__ void dropout_f32(const float *x, float *y, uint32_t n, float p, uint64_t seed) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
    y[i] = dropout_at(x[i], seed, i, p);
}

// Binary cross-entropy with logits, element by element: l = (1 - y) x + c softplus(-x) with
// c = 1 + (pw[col] - 1) y when weighted (else 1); its derivative (1 - y) - c sigmoid(-x). x, y: n
// elements in rows of `cols`.
__device__ __forceinline__ float bce_coef(const float *y, const float *pw, uint32_t i, uint32_t cols, uint32_t weighted) {
  return weighted ? 1.0f + (pw[i % cols] - 1.0f) * y[i] : 1.0f;
}
extern "C" __global__ void bce_fwd_f32(const float *x, const float *y, const float *pw, float *l, uint32_t n, uint32_t cols,
                                       uint32_t weighted) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float xi = x[i];
    const float sp = fmaxf(-xi, 0.0f) + log1pf(expf(-fabsf(xi)));
    l[i] = (1.0f - y[i]) * xi + bce_coef(y, pw, i, cols, weighted) * sp;
  }
}
extern "C" __global__ void bce_grad_f32(const float *x, const float *y, const float *pw, float *d, uint32_t n, uint32_t cols,
                                        uint32_t weighted) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float sig_neg = 1.0f / (1.0f + expf(x[i]));
    d[i] = (1.0f - y[i]) - bce_coef(y, pw, i, cols, weighted) * sig_neg;
  }
}

// Column sums of several row-major (rows × cols) f32 tensors in one launch: the bias and
// layer-norm gradients of a layer's backward pass (engine/src/model/ops/,
// `column_sums`, whose CPU loop computes the same). Each sum is over rows [0, cut) into out_a and,
// when out_b is not null, over rows [cut, rows) into out_b: the two tasks' gradients when they
// share a batch. One block of 256 threads per 32 columns of one tensor: lane = column (a warp
// reads 128 contiguous bytes of a row), warp = every 8th row; the 8 warps' sums are added in warp
// order. `first_block`: the tensor's first block; the table lists tensors in block order.
struct ColSum {
  const float *src;
  float *out_a, *out_b;
  uint32_t rows, cols, cut, first_block;
};
extern "C" __global__ void col_sums_f32(const ColSum *table, uint32_t n) {
  __shared__ float part[2][8][32];
  uint32_t k = 0;
  while (k + 1 < n && table[k + 1].first_block <= blockIdx.x) k++;
  const ColSum c = table[k];
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t col = (blockIdx.x - c.first_block) * 32 + lane;
  float a = 0.0f, b = 0.0f;
  if (col < c.cols)
    for (uint32_t r = warp; r < c.rows; r += 8) {
      const float v = c.src[(size_t)r * c.cols + col];
      if (r < c.cut)
        a += v;
      else
        b += v;
    }
  part[0][warp][lane] = a;
  part[1][warp][lane] = b;
  __syncthreads();
  if (warp == 0 && col < c.cols) {
    float sa = 0.0f, sb = 0.0f;
    for (uint32_t w = 0; w < 8; w++) {
      sa += part[0][w][lane];
      sb += part[1][w][lane];
    }
    c.out_a[col] = sa;
    if (c.out_b) c.out_b[col] = sb;
  }
}

// The training layer's projection bias, dropout, residual and layer norm in one pass over a row
// (one block of 128 threads per row of h): out[0 .. rows*h] = r = dropout(x + bias) + res (the
// mask of dropout_f32 over the (rows, h) elements; no dropout when `drop` is 0), out[rows*h ..] =
// (r - mean) * rstd * g + beta.
extern "C" __global__ void bias_drop_add_norm_f32(const float *x, const float *bias, const float *res, const float *g,
                                                  const float *beta, float *out, uint32_t rows, uint32_t h, float eps,
                                                  float p, uint64_t seed, uint32_t drop) {
  __shared__ float shm[32];
  const size_t off = (size_t)blockIdx.x * h;
  float *r = out + off, *y = out + (size_t)rows * h + off;
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) {
    float v = x[off + i] + bias[i];
    if (drop) v = dropout_at(v, seed, off + i, p);
    r[i] = v + res[off + i];
  }
  // Each thread reads back only the elements of r it wrote (the same stride), so no barrier.
  float mean, rstd;
  row_stats(r, h, eps, shm, &mean, &rstd);
  for (uint32_t i = threadIdx.x; i < h; i += blockDim.x) y[i] = (r[i] - mean) * rstd * g[i] + beta[i];
}

// A head's hidden layer after its product: forward (dy null) out = dropout(relu(x + b)); backward
// out = relu'(x + b) * dropout(dy), the gradient of x + b. x, dy: n elements in rows of d; the
// mask of dropout_f32 (none when `drop` is 0).
extern "C" __global__ void bias_relu_drop_f32(const float *x, const float *b, const float *dy, float *out, uint32_t n,
                                              uint32_t d, float p, uint64_t seed, uint32_t drop) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float v = x[i] + b[i % d];
    float y = dy ? (v > 0.0f ? dy[i] : 0.0f) : fmaxf(v, 0.0f);
    if (drop) y = dropout_at(y, seed, i, p);
    out[i] = y;
  }
}
