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
