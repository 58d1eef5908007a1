// Fused element-wise kernels for the scoring path (see engine/src/model/kernels.rs).
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

// y[r, c] = gelu_erf(x[r, c] + b[c]); x, y: rows × d, contiguous.
template <typename T>
__device__ void bias_gelu(const T *x, const T *b, T *y, uint32_t n, uint32_t d) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    float v = load(x[i]) + load(b[i % d]);
    y[i] = store<T>(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
  }
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
// (3 × d). Two passes over the row (mean, then variance of the centred values), as candle does.
template <typename T>
__device__ void add_norm(const T *x, const T *r, const T *p, T *y, uint32_t d, float eps) {
  __shared__ float shared[32];
  const size_t row = blockIdx.x;
  const T *xr = x + row * d, *rr = r + row * d;
  T *yr = y + row * d;
  const T *bias = p, *gamma = p + d, *beta = p + 2 * d;
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

#define FUSED(T, S)                                                                                \
  extern "C" __global__ void bias_gelu_##S(const T *x, const T *b, T *y, uint32_t n, uint32_t d) { \
    bias_gelu<T>(x, b, y, n, d);                                                                   \
  }                                                                                                \
  extern "C" __global__ void add_norm_##S(const T *x, const T *r, const T *p, T *y, uint32_t d,    \
                                          float eps) {                                             \
    add_norm<T>(x, r, p, y, d, eps);                                                               \
  }

FUSED(float, f32)
FUSED(__half, f16)
FUSED(__nv_bfloat16, bf16)

// QKV bias and head split in one pass: x is the packed projection (b·t, 3·h) without its bias;
// y is (3, b, heads, t, d) with h = heads·d. One thread per output element.
template <typename T>
__device__ void qkv_split(const T *x, const T *bias, T *y, uint32_t b, uint32_t t, uint32_t heads,
                          uint32_t d) {
  const size_t h = (size_t)heads * d, n = 3 * (size_t)b * t * h;
  for (size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x; o < n; o += (size_t)blockDim.x * gridDim.x) {
    size_t rest = o;
    const size_t j = rest % d; rest /= d;
    const size_t ti = rest % t; rest /= t;
    const size_t head = rest % heads; rest /= heads;
    const size_t bi = rest % b;
    const size_t which = rest / b;
    const size_t c = which * h + head * d + j;
    y[o] = store<T>(load(x[(bi * t + ti) * 3 * h + c]) + load(bias[c]));
  }
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  return v;
}

// Softmax over the last dimension of scores + mask: s is (rows, t) with rows = b·rows_per_batch
// (heads·queries per text), m the additive mask (b, t). One warp per row.
template <typename T>
__device__ void mask_softmax(const T *s, const T *m, T *y, uint32_t rows, uint32_t t, uint32_t rows_per_batch) {
  const size_t row = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const uint32_t lane = threadIdx.x & 31;
  const T *sr = s + row * t, *mr = m + (row / rows_per_batch) * t;
  T *yr = y + row * t;
  float mx = -INFINITY;
  for (uint32_t c = lane; c < t; c += 32) mx = fmaxf(mx, load(sr[c]) + load(mr[c]));
  mx = warp_max(mx);
  float sum = 0.0f;
  for (uint32_t c = lane; c < t; c += 32) sum += expf(load(sr[c]) + load(mr[c]) - mx);
  const float inv = 1.0f / warp_sum(sum);
  for (uint32_t c = lane; c < t; c += 32) yr[c] = store<T>(expf(load(sr[c]) + load(mr[c]) - mx) * inv);
}

#define ATTN(T, S)                                                                                 \
  extern "C" __global__ void qkv_split_##S(const T *x, const T *bias, T *y, uint32_t b, uint32_t t,\
                                           uint32_t heads, uint32_t d) {                           \
    qkv_split<T>(x, bias, y, b, t, heads, d);                                                      \
  }                                                                                                \
  extern "C" __global__ void mask_softmax_##S(const T *s, const T *m, T *y, uint32_t rows,         \
                                              uint32_t t, uint32_t rows_per_batch) {               \
    mask_softmax<T>(s, m, y, rows, t, rows_per_batch);                                             \
  }

ATTN(float, f32)
ATTN(__half, f16)
ATTN(__nv_bfloat16, bf16)

// AdamW's passes over f32 master weights, in place (the trainer's optimiser step; see
// adam_moment / adam_update in engine/src/model/kernels.rs, whose CPU loops compute the same).
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
