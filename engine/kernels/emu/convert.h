// Conversions between the kernels' storage types and float on the host, for check.cpp and the
// emulation's WMMA tiles; included by cuda_emu.h and cuda_real.h once the types are declared.
#pragma once

namespace emu {
inline float to_float(float x) { return x; }
inline float to_float(__half x) { return __half2float(x); }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline __half from_float<__half>(float x) { return __float2half(x); }
template <> inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
}  // namespace emu
