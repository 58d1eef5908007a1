// Runs every kernel of kernels/fused.cu, launched as the engine's launchers launch them
// (engine/src/model/ops/, adam.rs, step.rs), and compares each with a plain reference
// written here in double precision. Prints one line per case and exits with 1 if any case is off.
// Two builds: on the CPU (cuda_emu.h; engine/tests/kernels_emulated.rs builds and runs it in CI),
// and on a GPU (cuda_real.h; `nvcc -x cu`, see README.md here; scripts/gpu-check.sh runs it).
#ifdef __CUDACC__
#include "cuda_real.h"
#else
#include "cuda_emu.h"
#endif

#include "../fused.cu"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <random>
#include <string>
#include <type_traits>

namespace {

int failures = 0, cases = 0;

void report(const std::string &name, double err, double tol) {
  cases++;
  const bool ok = err <= tol;  // false for NaN too
  if (!ok) failures++;
  std::printf("%s %-52s max error %.3g (tolerance %.3g)\n", ok ? "ok  " : "FAIL", name.c_str(), err, tol);
}

std::mt19937 rng(20261127);
float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

template <typename T> const char *type_name();
template <> const char *type_name<float>() { return "f32"; }
template <> const char *type_name<__half>() { return "f16"; }
template <> const char *type_name<__nv_bfloat16>() { return "bf16"; }

// How close a value stored in T can be to the exact one, relative to max(1, |exact|).
template <typename T> double tolerance();
template <> double tolerance<float>() { return 1e-5; }
template <> double tolerance<__half>() { return 2e-3; }
template <> double tolerance<__nv_bfloat16>() { return 1e-2; }

template <typename T> double value(T x) { return emu::to_float(x); }
template <typename T> T rounded(double x) { return emu::from_float<T>((float)x); }
template <typename T> buf<T> random_vec(size_t n, float lo = -1.0f, float hi = 1.0f) {
  buf<T> v(n);
  for (auto &e : v) e = rounded<T>(uniform(lo, hi));
  return v;
}

// The largest of some errors, NaN if any is NaN (std::max drops a NaN in its second argument).
double worst(std::initializer_list<double> errs) {
  double e = 0.0;
  for (double d : errs) {
    if (std::isnan(d)) return NAN;
    e = std::max(e, d);
  }
  return e;
}

// max over i of |got[i] - want[i]| / max(1, |want[i]|); NaN if any value is NaN.
template <typename T> double max_error(const buf<T> &got, const std::vector<double> &want) {
  if (got.size() != want.size()) return NAN;
  double e = 0.0;
  for (size_t i = 0; i < got.size(); i++) {
    const double d = std::fabs(value(got[i]) - want[i]) / std::max(1.0, std::fabs(want[i]));
    e = worst({e, d});
  }
  return e;
}

// The launchers' configurations.
dim3 for_num_elems(uint32_t n) { return {(n + 1023) / 1024, 1, 1}; }
dim3 per_vector(size_t n) { return for_num_elems((uint32_t)std::max<size_t>((n + 7) / 8, 1)); }
const dim3 threads1024{1024, 1, 1}, threads256{256, 1, 1}, threads128{128, 1, 1};

double gelu(double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }

// ---- the scoring path ----

template <typename T, typename K> void bias_gelu_case(K kernel, uint32_t rows, uint32_t d, uint32_t offset) {
  // `offset` elements in front of every operand: 16-byte vectors no longer fit, the element loop runs.
  auto x = random_vec<T>(offset + rows * d, -3, 3), b = random_vec<T>(offset + d, -1, 1);
  buf<T> y(offset + rows * d);
  const uint32_t n = rows * d;
  emu::launch(per_vector(n), threads1024, 0, kernel, (const T *)x.data() + offset, (const T *)b.data() + offset,
              y.data() + offset, n, d);
  std::vector<double> want(n);
  for (uint32_t i = 0; i < n; i++) want[i] = gelu(value(x[offset + i]) + value(b[offset + i % d]));
  report(std::string("bias_gelu_") + type_name<T>() + " " + std::to_string(rows) + "x" + std::to_string(d) +
             (offset ? " unaligned" : ""),
         max_error(buf<T>(y.begin() + offset, y.end()), want), tolerance<T>());
}

template <typename T, typename K> void add_norm_case(K kernel, bool vec, uint32_t rows, uint32_t d) {
  // The params in f32 whatever T: a 16-bit model keeps its norms' parameters unrounded.
  auto x = random_vec<T>(rows * d, -2, 2), r = random_vec<T>(rows * d, -2, 2);
  auto p = random_vec<float>(3 * d, -1, 1);
  buf<T> y(rows * d);
  const float eps = 1e-12f;
  const dim3 grid = vec ? dim3{(rows + 7) / 8, 1, 1} : dim3{rows, 1, 1};
  const dim3 block = vec ? threads256 : dim3{std::clamp((d + 31) / 32 * 32, 32u, 256u), 1, 1};
  emu::launch(grid, block, 0, kernel, (const T *)x.data(), (const T *)r.data(), (const float *)p.data(), y.data(),
              rows, d, eps);
  std::vector<double> want(rows * d);
  for (uint32_t i = 0; i < rows; i++) {
    std::vector<double> v(d);
    double mean = 0, var = 0;
    for (uint32_t c = 0; c < d; c++) mean += v[c] = value(x[i * d + c]) + value(p[c]) + value(r[i * d + c]);
    mean /= d;
    for (double e : v) var += (e - mean) * (e - mean);
    const double inv = 1.0 / std::sqrt(var / d + eps);
    for (uint32_t c = 0; c < d; c++) want[i * d + c] = (v[c] - mean) * inv * value(p[d + c]) + value(p[2 * d + c]);
  }
  report(std::string(vec ? "add_norm_vec_" : "add_norm_") + type_name<T>() + " " + std::to_string(rows) + "x" +
             std::to_string(d),
         max_error(y, want), 2 * tolerance<T>());
}

// `parts` packed projections plus their bias, split by heads (split_parts: parts = 3 is the
// scoring path's query, key and value; 1 a training projection).
template <typename T, typename K>
void split_parts_case(K kernel, uint32_t parts, uint32_t b, uint32_t t, uint32_t heads, uint32_t d) {
  const uint32_t h = heads * d, n = b * t * parts * h;
  auto x = random_vec<T>(n), bias = random_vec<T>(parts * h);
  buf<T> y(n);
  emu::launch(per_vector(n), threads1024, 0, kernel, (const T *)x.data(), (const T *)bias.data(), y.data(), parts, b,
              t, heads, d);
  std::vector<double> want(n);
  size_t o = 0;
  for (uint32_t which = 0; which < parts; which++)
    for (uint32_t bi = 0; bi < b; bi++)
      for (uint32_t head = 0; head < heads; head++)
        for (uint32_t ti = 0; ti < t; ti++)
          for (uint32_t j = 0; j < d; j++) {
            const uint32_t c = which * h + head * d + j;
            want[o++] = value(x[(bi * t + ti) * parts * h + c]) + value(bias[c]);
          }
  report(std::string("split_parts_") + type_name<T>() + " parts=" + std::to_string(parts) + " d=" + std::to_string(d),
         max_error(y, want), tolerance<T>());
}

template <typename T, typename K> void merge_heads_case(K kernel, uint32_t b, uint32_t heads, uint32_t t, uint32_t d) {
  const uint32_t n = b * heads * t * d;
  auto x = random_vec<T>(n);
  buf<T> y(n);
  emu::launch(per_vector(n), threads1024, 0, kernel, (const T *)x.data(), y.data(), b, heads, t, d);
  std::vector<double> want(n);
  size_t o = 0;
  for (uint32_t bi = 0; bi < b; bi++)
    for (uint32_t ti = 0; ti < t; ti++)
      for (uint32_t head = 0; head < heads; head++)
        for (uint32_t j = 0; j < d; j++) want[o++] = value(x[((bi * heads + head) * t + ti) * d + j]);
  report(std::string("merge_heads_") + type_name<T>() + " d=" + std::to_string(d), max_error(y, want), 0.0);
}

// The engine's additive mask: 0 where attended, -1e9 where padded; text i has t - 2i tokens.
template <typename T> buf<T> padding_mask(uint32_t b, uint32_t t) {
  buf<T> m(b * t);
  for (uint32_t i = 0; i < b; i++) {
    const uint32_t len = t > 2 * i ? t - 2 * i : 1;
    for (uint32_t j = 0; j < t; j++) m[i * t + j] = rounded<T>(j < len ? 0.0f : -1e9f);
  }
  return m;
}

// Softmax of s + mask (values as stored) in double.
std::vector<double> softmax(const std::vector<double> &s) {
  const double mx = *std::max_element(s.begin(), s.end());
  std::vector<double> p(s.size());
  double sum = 0;
  for (size_t j = 0; j < s.size(); j++) sum += p[j] = std::exp(s[j] - mx);
  for (double &e : p) e /= sum;
  return p;
}

// S: the scores' type (T, or f32 for a 16-bit model's unrounded scores); T: the mask's and output's.
template <typename S, typename T, typename K>
void mask_softmax_case(K kernel, uint32_t b, uint32_t per_text, uint32_t t) {
  const uint32_t rows = b * per_text;
  auto s = random_vec<S>(rows * t, -4, 4);
  auto m = padding_mask<T>(b, t);
  buf<T> y(rows * t);
  emu::launch(dim3{(rows + 7) / 8, 1, 1}, threads256, 0, kernel, (const S *)s.data(), (const T *)m.data(), y.data(),
              rows, t, per_text);
  std::vector<double> want;
  for (uint32_t r = 0; r < rows; r++) {
    std::vector<double> v(t);
    for (uint32_t j = 0; j < t; j++) v[j] = value(s[r * t + j]) + value(m[(r / per_text) * t + j]);
    for (double p : softmax(v)) want.push_back(p);
  }
  const std::string scores = std::is_same<S, T>::value ? "" : "f32s_";
  report(std::string("mask_softmax_") + scores + type_name<T>() + " t=" + std::to_string(t), max_error(y, want),
         tolerance<T>());
}

// Attention in one kernel, against the same arithmetic in double with the kernel's roundings to T
// (queries, keys and values with their bias; the probabilities).
template <typename T, uint32_t D, typename K>
void attention_case(K kernel, uint32_t b, uint32_t heads, uint32_t t, bool cls_only) {
  const uint32_t h = heads * D, tq = cls_only ? 1 : t, tp = attn_pad16(t);
  auto qkv = random_vec<T>(b * t * 3 * h), bias = random_vec<T>(3 * h, -0.5, 0.5);
  auto mask = padding_mask<T>(b, t);
  buf<T> out(b * tq * h);
  const size_t smem = (64 * (D + 8) + 2 * tp * (D + 8)) * sizeof(T) + (64 * (tp + 4) + 64 * (D + 4)) * 4;
  emu::launch(dim3{(tq + 63) / 64, heads, b}, threads128, smem, kernel, (const T *)qkv.data(), (const T *)bias.data(),
              (const T *)mask.data(), out.data(), t, tq, heads);
  std::vector<double> want(b * tq * h);
  auto part = [&](uint32_t bi, uint32_t tok, uint32_t which, uint32_t head, uint32_t j) {
    const uint32_t c = which * h + head * D + j;
    return value(rounded<T>(value(qkv[(bi * t + tok) * 3 * h + c]) + value(bias[c])));
  };
  for (uint32_t bi = 0; bi < b; bi++)
    for (uint32_t head = 0; head < heads; head++)
      for (uint32_t q = 0; q < tq; q++) {
        std::vector<double> s(t);
        for (uint32_t k = 0; k < t; k++) {
          double dot = 0;
          for (uint32_t j = 0; j < D; j++) dot += part(bi, q, 0, head, j) * part(bi, k, 1, head, j);
          s[k] = dot + value(mask[bi * t + k]);
        }
        auto p = softmax(s);
        for (uint32_t j = 0; j < D; j++) {
          double c = 0;
          for (uint32_t k = 0; k < t; k++) c += value(rounded<T>(p[k])) * part(bi, k, 2, head, j);
          want[(bi * tq + q) * h + head * D + j] = c;
        }
      }
  report(std::string("attention_d") + std::to_string(D) + "_" + type_name<T>() + " " + std::to_string(b) + " x " +
             std::to_string(heads) + " heads, t=" + std::to_string(t) + (cls_only ? ", [CLS] only" : ""),
         max_error(out, want), tolerance<T>());
}

// ---- the training path (f32) ----

void adam_cases() {
  const uint32_t n = 3000;
  auto x = random_vec<float>(n), g = random_vec<float>(n), w = random_vec<float>(n), m = random_vec<float>(n);
  auto v = random_vec<float>(n, 0.0f, 0.01f);
  for (uint32_t square = 0; square < 2; square++) {
    auto y = x;
    emu::launch(for_num_elems(n), threads1024, 0, adam_moment_f32, y.data(), (const float *)g.data(), n, 0.9f, square);
    std::vector<double> want(n);
    for (uint32_t i = 0; i < n; i++) want[i] = 0.9 * x[i] + 0.1 * (square ? (double)g[i] * g[i] : g[i]);
    report(square ? "adam_moment_f32 squared" : "adam_moment_f32", max_error(y, want), 1e-6);
  }
  auto y = w;
  const float lr = 1e-3f, bc1 = 0.1f, bc2 = 0.001f, eps = 1e-8f, decay = 0.01f;
  emu::launch(for_num_elems(n), threads1024, 0, adam_update_f32, y.data(), (const float *)m.data(),
              (const float *)v.data(), n, lr, bc1, bc2, eps, decay);
  std::vector<double> want(n);
  for (uint32_t i = 0; i < n; i++)
    want[i] = w[i] - lr * ((m[i] / (double)bc1) / (std::sqrt(v[i] / (double)bc2) + eps) + decay * w[i]);
  report("adam_update_f32", max_error(y, want), 1e-6);
}

// One optimiser step over three tensors (a shared one of three chunks, the last partial; a shared
// one with only the first task's gradient; a head's), against PCGrad + clipping + AdamW in double.
void step_case(bool pcgrad, bool conflict, double clip) {
  struct Tensor {
    uint32_t n;
    bool shared, has_a, has_b;
    buf<float> w, m, v, a, b;
  };
  std::vector<Tensor> ts = {{2 * STEP_CHUNK + 1000, true, true, true, {}, {}, {}, {}, {}},
                                {100, true, true, false, {}, {}, {}, {}, {}},
                                {5000, false, true, false, {}, {}, {}, {}, {}}};
  for (auto &t : ts) {
    t.w = random_vec<float>(t.n);
    t.m = random_vec<float>(t.n, -0.01f, 0.01f);
    t.v = random_vec<float>(t.n, 0.0f, 1e-4f);
    t.a = random_vec<float>(t.n);
    t.b = random_vec<float>(t.n);
    // The second task's gradient leans against the first's (or with it).
    for (uint32_t i = 0; i < t.n; i++) t.b[i] = (conflict ? -0.6f : 0.6f) * t.a[i] + 0.5f * t.b[i];
  }
  const float lr = 2e-3f, bc1 = 0.19f, bc2 = 0.002f, eps = 1e-8f, decay = 0.01f, beta1 = 0.9f, beta2 = 0.999f;
  buf<StepParam> params;
  buf<uint32_t> chunks;
  auto got = ts;
  for (size_t k = 0; k < got.size(); k++) {
    auto &t = got[k];
    params.push_back({t.w.data(), t.m.data(), t.v.data(), t.has_a ? t.a.data() : nullptr,
                      t.has_b ? t.b.data() : nullptr, t.n, t.shared, lr, bc1, bc2, eps, decay, 0.0f});
    for (uint32_t c = 0; c * STEP_CHUNK < t.n; c++) chunks.insert(chunks.end(), {(uint32_t)k, c * STEP_CHUNK});
  }
  buf<double> out(4, 0.0);
  const dim3 grid{(uint32_t)chunks.size() / 2, 1, 1};
  const StepParam *table = params.data();
  const uint32_t *chunk_table = chunks.data();
  if (pcgrad) emu::launch(grid, threads256, 0, step_dots, table, chunk_table, out.data());
  emu::launch(grid, threads256, 0, step_norm, table, chunk_table, out.data(), (uint32_t)pcgrad);
  emu::launch(grid, threads256, 0, step_adamw, table, chunk_table, (const double *)out.data(), (uint32_t)pcgrad, clip,
              beta1, beta2);
  // The reference.
  double dot = 0, n1 = 0, n2 = 0, norm2 = 0;
  auto grad = [](const Tensor &t, uint32_t i, double alpha, double beta) {
    return (t.has_a ? alpha * t.a[i] : 0.0) + (t.has_b ? beta * t.b[i] : 0.0);
  };
  for (auto &t : ts)
    if (pcgrad && t.shared)
      for (uint32_t i = 0; i < t.n; i++) {
        const double x = t.has_a ? t.a[i] : 0.0, y = t.has_b ? t.b[i] : 0.0;
        dot += x * y, n1 += x * x, n2 += y * y;
      }
  const bool project = pcgrad && dot < 0 && n1 > 0 && n2 > 0;
  auto coef = [&](const Tensor &t) {
    return project && t.shared ? std::pair{1 - dot / n1, 1 - dot / n2} : std::pair{1.0, 1.0};
  };
  for (auto &t : ts) {
    const auto [al, be] = coef(t);
    for (uint32_t i = 0; i < t.n; i++) norm2 += grad(t, i, al, be) * grad(t, i, al, be);
  }
  const double scale = std::sqrt(norm2) > clip ? clip / (std::sqrt(norm2) + 1e-6) : 1.0;
  double err_w = 0, err_mv = 0;
  for (size_t k = 0; k < ts.size(); k++) {
    const auto &t = ts[k];
    const auto [al, be] = coef(t);
    std::vector<double> w(t.n), m(t.n), v(t.n);
    for (uint32_t i = 0; i < t.n; i++) {
      const double g = grad(t, i, al * scale, be * scale);
      m[i] = t.m[i] * beta1 + g * (1 - beta1);
      v[i] = t.v[i] * beta2 + g * g * (1 - beta2);
      w[i] = t.w[i] - lr * ((m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps) + decay * t.w[i]);
    }
    err_w = worst({err_w, max_error(got[k].w, w)});
    err_mv = worst({err_mv, max_error(got[k].m, m), max_error(got[k].v, v)});
  }
  const std::string name = std::string(pcgrad ? " pcgrad" : " plain") + (conflict ? ", conflicting" : ", agreeing") +
                           (scale < 1 ? ", clipped" : "");
  if (pcgrad)
    report("step_dots" + name, worst({std::fabs(out[0] - dot) / std::max(1.0, std::fabs(dot)),
                                      std::fabs(out[1] - n1) / std::max(1.0, n1),
                                      std::fabs(out[2] - n2) / std::max(1.0, n2)}),
         1e-5);
  report("step_norm" + name, std::fabs(out[3] - norm2) / std::max(1.0, norm2), 1e-5);
  report("step_adamw" + name + ": weights", err_w, 1e-5);
  report("step_adamw" + name + ": moments", err_mv, 1e-5);
}

// Whether dropout keeps element i under `seed` at rate p: splitmix64 of (seed, i), as
// ops/dropout.rs's dropout_uniform (written again here, not taken from fused.cu).
bool kept(uint64_t seed, uint64_t i, float p) {
  uint64_t z = seed ^ (i * 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 40) / 16777216.0 >= p;
}

void layer_norm_cases(uint32_t rows, uint32_t h) {
  auto x = random_vec<float>(rows * h, -2, 2), g = random_vec<float>(h), b = random_vec<float>(h),
       dy = random_vec<float>(rows * h);
  const float eps = 1e-12f;
  buf<float> y(rows * h), out(2 * rows * h);
  emu::launch(dim3{rows, 1, 1}, threads128, 0, ln_train_fwd_f32, (const float *)x.data(), (const float *)g.data(),
              (const float *)b.data(), y.data(), h, eps);
  emu::launch(dim3{rows, 1, 1}, threads128, 0, ln_train_bwd_f32, (const float *)x.data(), (const float *)g.data(),
              (const float *)dy.data(), out.data(), rows, h, eps);
  std::vector<double> want_y(rows * h), want_out(2 * rows * h);
  for (uint32_t r = 0; r < rows; r++) {
    double mean = 0, var = 0;
    for (uint32_t i = 0; i < h; i++) mean += x[r * h + i];
    mean /= h;
    for (uint32_t i = 0; i < h; i++) var += (x[r * h + i] - mean) * (x[r * h + i] - mean);
    const double rstd = 1.0 / std::sqrt(var / h + eps);
    double sg = 0, sgx = 0;
    for (uint32_t i = 0; i < h; i++) {
      const double xh = (x[r * h + i] - mean) * rstd;
      want_y[r * h + i] = xh * g[i] + b[i];
      sg += dy[r * h + i] * g[i];
      sgx += dy[r * h + i] * g[i] * xh;
    }
    sg /= h, sgx /= h;
    for (uint32_t i = 0; i < h; i++) {
      const double xh = (x[r * h + i] - mean) * rstd;
      want_out[r * h + i] = rstd * (dy[r * h + i] * g[i] - sg - xh * sgx);
      want_out[rows * h + r * h + i] = dy[r * h + i] * xh;
    }
  }
  report("ln_train_fwd_f32 h=" + std::to_string(h), max_error(y, want_y), 1e-5);
  report("ln_train_bwd_f32 h=" + std::to_string(h), max_error(out, want_out), 1e-5);
  // With the dropout below it: the same two planes and dx through the mask as a third.
  const float p = 0.1f;
  const uint64_t seed = 0xD80B + h;
  buf<float> out3(3 * rows * h);
  emu::launch(dim3{rows, 1, 1}, threads128, 0, ln_train_bwd_drop_f32, (const float *)x.data(), (const float *)g.data(),
              (const float *)dy.data(), out3.data(), rows, h, eps, p, seed);
  want_out.resize(3 * rows * h);
  for (uint32_t i = 0; i < rows * h; i++) want_out[2 * rows * h + i] = kept(seed, i, p) ? want_out[i] / (1.0 - p) : 0.0;
  report("ln_train_bwd_drop_f32 h=" + std::to_string(h), max_error(out3, want_out), 1e-5);
}

// A head's bias + ReLU + dropout, forward (no dy) and backward, with and without dropout.
void bias_relu_drop_case(bool backward, bool drop) {
  const uint32_t rows = 7, d = 300, n = rows * d;
  auto x = random_vec<float>(n), b = random_vec<float>(d), dy = random_vec<float>(n);
  const float p = 0.3f;
  const uint64_t seed = 0x4E1A;
  buf<float> out(n);
  emu::launch(for_num_elems(n), threads1024, 0, bias_relu_drop_f32, (const float *)x.data(), (const float *)b.data(),
              backward ? (const float *)dy.data() : nullptr, out.data(), n, d, p, seed, (uint32_t)drop);
  std::vector<double> want(n);
  for (uint32_t i = 0; i < n; i++) {
    const double v = (double)x[i] + b[i % d];
    double y = backward ? (v > 0 ? dy[i] : 0.0) : std::max(v, 0.0);
    if (drop) y = kept(seed, i, p) ? y / (1.0 - p) : 0.0;
    want[i] = y;
  }
  report(std::string("bias_relu_drop_f32 ") + (backward ? "backward" : "forward") + (drop ? ", dropout" : ""),
         max_error(out, want), 1e-5);
}

// r = dropout(x + bias) + res and its layer norm, with and without dropout.
void bias_drop_add_norm_case(uint32_t rows, uint32_t h, bool drop) {
  auto x = random_vec<float>(rows * h, -2, 2), bias = random_vec<float>(h), res = random_vec<float>(rows * h, -2, 2),
       g = random_vec<float>(h), beta = random_vec<float>(h);
  const float eps = 1e-12f, p = 0.1f;
  const uint64_t seed = 0xB1A5 + h;
  buf<float> out(2 * rows * h);
  emu::launch(dim3{rows, 1, 1}, threads128, 0, bias_drop_add_norm_f32, (const float *)x.data(),
              (const float *)bias.data(), (const float *)res.data(), (const float *)g.data(),
              (const float *)beta.data(), out.data(), rows, h, eps, p, seed, (uint32_t)drop);
  std::vector<double> want(2 * rows * h);
  for (uint32_t r = 0; r < rows; r++) {
    double mean = 0, var = 0;
    for (uint32_t i = 0; i < h; i++) {
      const size_t k = (size_t)r * h + i;
      double v = (double)x[k] + bias[i];
      if (drop) v = kept(seed, k, p) ? v / (1.0 - p) : 0.0;
      want[k] = v + res[k];
      mean += want[k];
    }
    mean /= h;
    for (uint32_t i = 0; i < h; i++) var += (want[r * h + i] - mean) * (want[r * h + i] - mean);
    const double rstd = 1.0 / std::sqrt(var / h + eps);
    for (uint32_t i = 0; i < h; i++)
      want[rows * h + r * h + i] = (want[r * h + i] - mean) * rstd * g[i] + beta[i];
  }
  report("bias_drop_add_norm_f32 h=" + std::to_string(h) + (drop ? ", dropout" : ""), max_error(out, want), 1e-5);
}

void softmax_train_cases(uint32_t rows, uint32_t per_text, uint32_t t) {
  const float scale = 0.125f;
  auto s = random_vec<float>(rows * t, -8, 8), dp = random_vec<float>(rows * t);
  auto m = padding_mask<float>(rows / per_text, t);
  buf<float> p(rows * t), ds(rows * t);
  emu::launch(dim3{rows, 1, 1}, threads128, 0, softmax_train_fwd_f32, (const float *)s.data(), (const float *)m.data(),
              p.data(), t, per_text, scale);
  emu::launch(dim3{rows, 1, 1}, threads128, 0, softmax_train_bwd_f32, (const float *)p.data(), (const float *)dp.data(),
              ds.data(), t, scale);
  std::vector<double> want_p, want_ds(rows * t);
  for (uint32_t r = 0; r < rows; r++) {
    std::vector<double> v(t);
    for (uint32_t j = 0; j < t; j++) v[j] = s[r * t + j] * (double)scale + m[(r / per_text) * t + j];
    auto pr = softmax(v);
    double dot = 0;
    for (uint32_t j = 0; j < t; j++) dot += pr[j] * dp[r * t + j];
    for (uint32_t j = 0; j < t; j++) {
      want_p.push_back(pr[j]);
      want_ds[r * t + j] = scale * pr[j] * (dp[r * t + j] - dot);
    }
  }
  report("softmax_train_fwd_f32 t=" + std::to_string(t), max_error(p, want_p), 1e-5);
  report("softmax_train_bwd_f32 t=" + std::to_string(t), max_error(ds, want_ds), 1e-5);
}

void gelu_train_case(uint32_t rows, uint32_t d) {
  const uint32_t n = rows * d;
  auto x = random_vec<float>(n, -4, 4), b = random_vec<float>(d), dy = random_vec<float>(n);
  buf<float> dz(n);
  emu::launch(for_num_elems(n), threads1024, 0, gelu_train_bwd_f32, (const float *)x.data(), (const float *)b.data(),
              (const float *)dy.data(), dz.data(), n, d);
  // The derivative by central differences of gelu in double.
  std::vector<double> want(n);
  for (uint32_t i = 0; i < n; i++) {
    const double z = (double)x[i] + b[i % d], e = 1e-6;
    want[i] = dy[i] * (gelu(z + e) - gelu(z - e)) / (2 * e);
  }
  report("gelu_train_bwd_f32", max_error(dz, want), 1e-5);
}

void dropout_case() {
  const uint32_t n = 20000;
  const float p = 0.1f;
  auto x = random_vec<float>(n, 0.5f, 1.5f), g = random_vec<float>(n, 0.5f, 1.5f);
  buf<float> y(n), y2(n), gy(n), other(n);
  const uint64_t seed = 0x5eed;
  auto run = [&](const buf<float> &in, buf<float> &out, uint64_t s) {
    emu::launch(for_num_elems(n), threads1024, 0, dropout_f32, (const float *)in.data(), out.data(), n, p, s);
  };
  run(x, y, seed), run(x, y2, seed), run(g, gy, seed), run(x, other, seed + 1);
  uint32_t dropped = 0, mismatched = 0, moved = 0, same_elsewhere = 0;
  double err = 0;
  for (uint32_t i = 0; i < n; i++) {
    const bool gone = y[i] == 0.0f;
    dropped += gone;
    if (!gone) err = worst({err, std::fabs(y[i] - x[i] / (1.0 - p))});
    mismatched += (y2[i] == 0.0f) != gone || y2[i] != y[i];
    moved += (gy[i] == 0.0f) != gone;
    same_elsewhere += (other[i] == 0.0f) == gone;
  }
  report("dropout_f32: kept values scaled", err, 1e-6);
  // The mask itself: the one ops/dropout.rs draws on the CPU (and the fused kernels above draw).
  uint32_t other_mask = 0;
  for (uint32_t i = 0; i < n; i++) other_mask += (y[i] == 0.0f) == kept(seed, i, p);
  report("dropout_f32: the CPU's mask", other_mask, 0);
  report("dropout_f32: dropped fraction vs p", std::fabs(dropped / (double)n - p), 0.01);
  report("dropout_f32: one seed, one mask (forward, again, gradient)", mismatched + moved, 0);
  // Another seed: an independent mask agrees on about (1-p)^2 + p^2 = 82% of the elements.
  report("dropout_f32: another seed, another mask", std::fabs(same_elsewhere / (double)n - 0.82), 0.02);
}

void bce_case(bool weighted) {
  const uint32_t rows = 40, cols = 28, n = rows * cols;
  auto x = random_vec<float>(n, -6, 6), pw = random_vec<float>(cols, 0.1f, 10.0f);
  buf<float> y(n), l(n), d(n);
  for (auto &e : y) e = uniform(0, 1) < 0.3f ? 1.0f : 0.0f;
  const float *w = weighted ? pw.data() : nullptr;  // unweighted: never read
  emu::launch(for_num_elems(n), threads1024, 0, bce_fwd_f32, (const float *)x.data(), (const float *)y.data(), w,
              l.data(), n, cols, (uint32_t)weighted);
  emu::launch(for_num_elems(n), threads1024, 0, bce_grad_f32, (const float *)x.data(), (const float *)y.data(), w,
              d.data(), n, cols, (uint32_t)weighted);
  std::vector<double> want_l(n), want_d(n);
  for (uint32_t i = 0; i < n; i++) {
    const double s = 1.0 / (1.0 + std::exp(-(double)x[i])), c = weighted ? pw[i % cols] : 1.0;
    want_l[i] = -(c * y[i] * std::log(s) + (1 - y[i]) * std::log(1 - s));
    want_d[i] = -c * y[i] * (1 - s) + (1 - y[i]) * s;
  }
  report(std::string("bce_fwd_f32") + (weighted ? " weighted" : ""), max_error(l, want_l), 1e-5);
  report(std::string("bce_grad_f32") + (weighted ? " weighted" : ""), max_error(d, want_d), 1e-5);
}

}  // namespace

// Several tensors in one launch, as ops/projection.rs's `column_sums` builds the table: split and
// not, a split at either end, columns not a multiple of 32, one row, ruBert-base's FFN width.
void col_sums_case() {
  struct Item {
    uint32_t rows, cols, cut;
    bool split;
  };
  const std::vector<Item> items = {{5, 37, 2, true},   {300, 64, 300, false}, {17, 768, 0, true},
                                   {16, 3072, 16, true}, {1, 1, 1, false},    {40, 33, 13, true}};
  std::vector<buf<float>> srcs;
  buf<ColSum> table;
  size_t total = 0;
  uint32_t blocks = 0;
  std::vector<size_t> at;
  for (const auto &it : items) {
    srcs.push_back(random_vec<float>((size_t)it.rows * it.cols));
    at.push_back(total);
    total += (size_t)it.cols * (it.split ? 2 : 1);
  }
  buf<float> out(total, NAN);
  for (size_t k = 0; k < items.size(); k++) {
    const auto &it = items[k];
    float *a = out.data() + at[k];
    table.push_back({srcs[k].data(), a, it.split ? a + it.cols : nullptr, it.rows, it.cols, it.cut, blocks});
    blocks += (it.cols + 31) / 32;
  }
  emu::launch(dim3{blocks, 1, 1}, threads256, 0, col_sums_f32, (const ColSum *)table.data(), (uint32_t)items.size());
  std::vector<double> want(total, 0.0);
  for (size_t k = 0; k < items.size(); k++) {
    const auto &it = items[k];
    for (uint32_t r = 0; r < it.rows; r++)
      for (uint32_t c = 0; c < it.cols; c++) {
        const double v = srcs[k][(size_t)r * it.cols + c];
        if (!it.split || r < it.cut)
          want[at[k] + c] += v;
        else
          want[at[k] + it.cols + c] += v;
      }
  }
  report("col_sums_f32 (6 tensors, 4 split)", max_error(out, want), 1e-5);
}

int main(int argc, char **argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // every line out before a sanitizer stops the run
  // An argument runs only the kernels whose names contain it.
  auto want = [&](const char *kernel) { return argc < 2 || std::strstr(kernel, argv[1]) != nullptr; };
  // The scoring path's kernels, each element type.
  if (want("bias_gelu")) {
    bias_gelu_case<float>(bias_gelu_f32, 5, 96, 0);
    bias_gelu_case<float>(bias_gelu_f32, 3, 37, 0);
    bias_gelu_case<__half>(bias_gelu_f16, 5, 96, 0);
    bias_gelu_case<__half>(bias_gelu_f16, 5, 96, 1);
    bias_gelu_case<__nv_bfloat16>(bias_gelu_bf16, 5, 96, 0);
    bias_gelu_case<__nv_bfloat16>(bias_gelu_bf16, 3, 37, 0);
    bias_gelu_case<__nv_bfloat16>(bias_gelu_bf16, 3, 3072, 0);  // ruBert-base's FFN
  }
  if (want("add_norm")) {
    for (uint32_t d : {37u, 96u, 384u, 768u}) {
      add_norm_case<float>(add_norm_f32, false, 5, d);
      add_norm_case<__half>(add_norm_f16, false, 5, d);
      add_norm_case<__nv_bfloat16>(add_norm_bf16, false, 5, d);
    }
  }
  // The vectorised one where its launcher uses it: d a multiple of the vector, d / vector ≤ 128.
  if (want("add_norm_vec")) {
    for (uint32_t d : {96u, 512u}) add_norm_case<float>(add_norm_vec_f32, true, 11, d);
    for (uint32_t d : {96u, 768u, 1024u}) {
      add_norm_case<__half>(add_norm_vec_f16, true, 11, d);
      add_norm_case<__nv_bfloat16>(add_norm_vec_bf16, true, 11, d);
    }
  }
  if (want("split_parts") || want("merge_heads")) {
    for (uint32_t d : {12u, 32u}) {  // 12: element by element; 32: 16-byte vectors
      split_parts_case<float>(split_parts_f32, 3, 2, 5, 3, d);
      split_parts_case<__nv_bfloat16>(split_parts_bf16, 3, 2, 5, 3, d);
      split_parts_case<float>(split_parts_f32, 1, 2, 5, 3, d);
      split_parts_case<float>(split_parts_f32, 2, 3, 4, 2, d);
      merge_heads_case<float>(merge_heads_f32, 2, 3, 5, d);
      merge_heads_case<__half>(merge_heads_f16, 2, 3, 5, d);
    }
  }
  if (want("mask_softmax")) {
    // Every register width (t ≤ 64, 128, 256, 512) and the loop past them.
    for (uint32_t t : {5u, 64u, 65u, 100u, 128u, 129u, 256u, 257u, 300u, 512u, 513u, 600u}) {
      mask_softmax_case<float, float>(mask_softmax_f32, 2, 3, t);
      mask_softmax_case<__nv_bfloat16, __nv_bfloat16>(mask_softmax_bf16, 2, 3, t);
      mask_softmax_case<float, __nv_bfloat16>(mask_softmax_f32s_bf16, 2, 3, t);
    }
    mask_softmax_case<__half, __half>(mask_softmax_f16, 2, 3, 100);
    for (uint32_t t : {100u, 600u}) mask_softmax_case<float, __half>(mask_softmax_f32s_f16, 2, 3, t);
  }
  if (want("attention")) {
    // One token, one partial tile, several query blocks, the longest; all queries or [CLS] alone.
    for (uint32_t t : {1u, 33u, 100u, 256u})
      for (bool cls : {false, true}) {
        if (t == 1 && cls) continue;
        attention_case<__nv_bfloat16, 64>(attention_d64_bf16, 2, 2, t, cls);
        attention_case<__half, 32>(attention_d32_f16, 2, 3, t, cls);
      }
    // Tile and block boundaries: one tile exactly, one past it, one query block exactly, one past.
    for (uint32_t t : {16u, 17u, 64u, 65u, 255u}) attention_case<__half, 32>(attention_d32_f16, 2, 1, t, false);
    attention_case<__nv_bfloat16, 32>(attention_d32_bf16, 1, 2, 70, false);
    attention_case<__half, 64>(attention_d64_f16, 1, 2, 70, false);
    // ruBert-base's shape: 12 heads of 64.
    attention_case<__nv_bfloat16, 64>(attention_d64_bf16, 1, 12, 128, false);
  }
  // The training path's (f32).
  if (want("adam_")) adam_cases();
  if (want("step_")) {
    step_case(true, true, 1e9);
    step_case(true, false, 1e9);
    step_case(false, true, 1e9);
    step_case(true, true, 1.0);
  }
  if (want("ln_train"))
    for (uint32_t h : {37u, 384u}) layer_norm_cases(5, h);
  if (want("bias_relu_drop"))
    for (bool backward : {false, true})
      for (bool drop : {false, true}) bias_relu_drop_case(backward, drop);
  if (want("bias_drop_add_norm"))
    for (uint32_t h : {37u, 384u})
      for (bool drop : {false, true}) bias_drop_add_norm_case(5, h, drop);
  if (want("softmax_train"))
    for (uint32_t t : {5u, 130u}) softmax_train_cases(6, 3, t);
  if (want("gelu_train")) gelu_train_case(7, 300);
  if (want("dropout")) dropout_case();
  if (want("bce_")) {
    bce_case(false);
    bce_case(true);
  }
  if (want("col_sums")) col_sums_case();
  std::printf("%d cases, %d off\n", cases, failures);
  return failures ? 1 : 0;
}
