// CUDA on the CPU, for checking kernels/fused.cu where there is no GPU (engine/tests/kernels_emulated.rs
// builds kernels/emu/check.cpp with this header and runs it; see README.md here).
//
// Every CUDA thread of a block is one std::thread; blocks run one after another. What the kernels
// use is emulated with the semantics a correct kernel may rely on and no more:
// - __syncthreads() and __syncwarp() are barriers; a thread that returns leaves them (as on the
//   GPU, where exited threads no longer count);
// - __shfl_xor_sync with the full mask needs all 32 lanes present: a warp with a lane gone (or a
//   partial warp) is reported as an error, since on the GPU that is undefined;
// - WMMA fragments: load_matrix_sync, mma_sync and store_matrix_sync wait for the warp on entry,
//   and each lane owns (stores) only its share of the accumulator's elements, so a lane that reads
//   another lane's stored results without a __syncwarp() races (ThreadSanitizer reports it);
// - dynamic shared memory starts as 0xFF bytes (NaN in every float type), so a kernel reading what
//   it never wrote gives NaN;
// - bf16 and f16 round to nearest even, as __float2bfloat16 / __float2half do.
// Static __shared__ arrays are function statics: correct because blocks never overlap.
#pragma once
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
// kernels/fused.cu declares its dynamic shared memory through this macro.
#define DYNAMIC_SMEM(name) unsigned char *name = emu::dynamic_smem()

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline uint32_t min(uint32_t a, uint32_t b) { return a < b ? a : b; }
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "emu: __trap()\n");
  std::abort();
}

// ---- 16-bit floats ----
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.bits, 2);
  return (float)f;
}
inline __half __float2half(float x) {
  const _Float16 f = (_Float16)x;  // round to nearest even
  __half h;
  std::memcpy(&h.bits, &f, 2);
  return h;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = (uint32_t)b.bits << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  __nv_bfloat16 b;
  if (std::isnan(x)) {
    b.bits = 0x7fc0;
  } else {
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
    b.bits = (uint16_t)(u >> 16);
  }
  return b;
}

inline void atomicAdd(double *p, double v) {
  static std::mutex m;
  std::lock_guard<std::mutex> g(m);
  *p += v;
}

#include "convert.h"

namespace emu {

// What check.cpp shares with cuda_real.h: the buffers the kernels read and write (here plain
// memory).
template <typename T> using allocator = std::allocator<T>;

[[noreturn]] inline void fail(const char *what) {
  std::fprintf(stderr, "emu: %s (block %u,%u,%u thread %u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z,
               threadIdx.x);
  std::abort();
}

struct Warp {
  explicit Warp(unsigned lanes) : lanes(lanes), bar(lanes) {}
  unsigned lanes;
  std::barrier<> bar;
  // The fewest warp-collective operations a lane that returned had taken part in (none returned:
  // the maximum): a lane that returned after k of them must not be missing from the (k+1)th.
  std::atomic<unsigned> left_after{~0u};
  float buf[32];
};

// Warp-collective operations this thread has taken part in, in the current block.
inline thread_local unsigned warp_ops = 0;

struct Block {
  // The dynamic shared memory is exactly the launch's size (AddressSanitizer sees past its end),
  // 128-byte aligned.
  Block(unsigned threads, size_t bytes)
      : bar(threads), smem(bytes ? static_cast<unsigned char *>(::operator new(bytes, std::align_val_t(128))) : nullptr) {
    for (unsigned t = 0; t < threads; t += 32) warps.push_back(std::make_unique<Warp>(std::min(32u, threads - t)));
    if (smem) std::memset(smem, 0xFF, bytes);
  }
  ~Block() {
    if (smem) ::operator delete(smem, std::align_val_t(128));
  }
  Block(const Block &) = delete;
  Block &operator=(const Block &) = delete;
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
  unsigned char *smem;
};

inline thread_local Block *block = nullptr;

inline unsigned lane() { return threadIdx.x & 31; }
inline Warp &warp() { return *block->warps[threadIdx.x >> 5]; }
inline unsigned char *dynamic_smem() { return block->smem; }

// A warp-collective operation: all 32 lanes must take part. Checked on the way in and again once
// the warp has met (`met`: a lane that returns drops out of the barrier, so the others meet
// without it), so a lane that returned instead of joining is caught either way.
inline Warp &whole_warp(unsigned mask, const char *what) {
  Warp &w = warp();
  if (mask != 0xffffffffu) fail("only the full mask is emulated");
  warp_ops++;
  if (w.lanes != 32 || w.left_after.load() < warp_ops) fail(what);
  return w;
}
inline void met(Warp &w, const char *what) {
  w.bar.arrive_and_wait();
  if (w.left_after.load() < warp_ops) fail(what);
}

// A barrier that some thread never reaches (a __syncthreads() or __syncwarp() in a branch not
// every thread takes) hangs the GPU and would hang the emulation: a launch still running after
// two minutes (EMU_WATCHDOG_SECS, for the big launches of a whole binary's batches) ends the
// process with exit code 3 and says so.
inline std::atomic<long long> launch_started{0};  // steady-clock ms; 0: no launch running
inline long long now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline void start_watchdog() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char *env = std::getenv("EMU_WATCHDOG_SECS");
    const long long limit = env && std::atoll(env) > 0 ? std::atoll(env) : 120;
    std::thread([limit] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        const long long s = launch_started.load();
        if (s != 0 && now_ms() - s > limit * 1000) {
          std::fprintf(stderr, "emu: a launch still runs after %lld s: a barrier some thread never reaches?\n", limit);
          std::_Exit(3);
        }
      }
    }).detach();
  });
}

// Runs `kernel(args...)` on a grid of blocks of blockDim.x threads (1-D blocks), one block at a
// time: blockDim.x std::threads take every block in turn, each block with its own barriers and
// shared memory, and all wait for the block to end before the next begins.
template <typename... P, typename... A>
void launch(dim3 grid, dim3 threads, size_t smem, void (*kernel)(P...), A... args) {
  if (threads.y != 1 || threads.z != 1) fail("1-D blocks only");
  if (threads.x > 1024) fail("more than 1,024 threads in a block");
  if (smem > 227 * 1024) fail("more dynamic shared memory than an sm_90 block may have (227 KiB)");
  start_watchdog();
  launch_started = now_ms();
  std::vector<std::unique_ptr<Block>> blocks;
  for (unsigned i = 0; i < grid.x * grid.y * grid.z; i++) blocks.push_back(std::make_unique<Block>(threads.x, smem));
  std::barrier<> between(threads.x);
  std::vector<std::thread> ts;
  ts.reserve(threads.x);
  for (unsigned t = 0; t < threads.x; t++)
    ts.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      blockDim = threads;
      gridDim = grid;
      for (unsigned i = 0; i < blocks.size(); i++) {
        block = blocks[i].get();
        blockIdx = {i % grid.x, i / grid.x % grid.y, i / (grid.x * grid.y)};
        warp_ops = 0;
        kernel(args...);
        // The thread has returned: it no longer counts at this block's barriers.
        Warp &w = warp();
        for (unsigned seen = w.left_after.load(); warp_ops < seen && !w.left_after.compare_exchange_weak(seen, warp_ops);) {
        }
        w.bar.arrive_and_drop();
        block->bar.arrive_and_drop();
        between.arrive_and_wait();
      }
    });
  for (auto &t : ts) t.join();
  launch_started = 0;
}

}  // namespace emu

template <typename T> using buf = std::vector<T, emu::allocator<T>>;

inline void __syncthreads() { emu::block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  const char *what = "__syncwarp with a lane gone";
  emu::met(emu::whole_warp(mask, what), what);
}
inline float __shfl_xor_sync(unsigned mask, float v, int o) {
  const char *what = "__shfl_xor_sync with a lane gone";
  emu::Warp &w = emu::whole_warp(mask, what);
  w.buf[emu::lane()] = v;
  emu::met(w, what);
  const float r = w.buf[emu::lane() ^ (unsigned)o];
  w.bar.arrive_and_wait();
  return r;
}

// ---- WMMA, 16 × 16 × 16 tiles ----
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

using emu::to_float;

// The tile, row-major, in f32 (exact for the 16-bit inputs). An accumulator's lane holds only its
// share (element i for i % 32 == lane) as far as anyone can tell: only that share is stored.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "16 × 16 × 16 only");
  float x[256];
};

inline void enter(const char *what) { emu::met(emu::whole_warp(0xffffffffu, what), what); }

// What the hardware requires of a fragment's memory: a 256-bit aligned pointer, and a stride that is
// a multiple of 16 bytes.
template <typename T> void check_memory(const T *p, unsigned ldm) {
  if ((uintptr_t)p % 32 != 0) emu::fail("wmma: pointer not 32-byte aligned");
  if (ldm * sizeof(T) % 16 != 0) emu::fail("wmma: stride not a multiple of 16 bytes");
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p, unsigned ldm) {
  enter("load_matrix_sync with a lane gone");
  check_memory(p, ldm);
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int r = 0; r < 16; r++)
    for (int c = 0; c < 16; c++) f.x[r * 16 + c] = to_float(row ? p[r * ldm + c] : p[c * ldm + r]);
}

template <typename T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T> &f, T v) {
  for (float &e : f.x) e = v;
}

template <typename A, typename LA, typename B, typename LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, A, LA> &a,
              const fragment<matrix_b, 16, 16, 16, B, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
  enter("mma_sync with a lane gone");
  for (unsigned i = emu::lane(); i < 256; i += 32) {
    const unsigned r = i / 16, col = i % 16;
    float s = c.x[i];
    for (int k = 0; k < 16; k++) s += a.x[r * 16 + k] * b.x[k * 16 + col];
    d.x[i] = s;
  }
}

inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t l) {
  enter("store_matrix_sync with a lane gone");
  check_memory(p, ldm);
  for (unsigned i = emu::lane(); i < 256; i += 32) {
    const unsigned r = i / 16, c = i % 16;
    (l == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
  }
}
}  // namespace wmma
}  // namespace nvcuda
