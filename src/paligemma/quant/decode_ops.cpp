// decode_ops.h's loops (what they compute and how they round: there). Also registered as ops
// for the tests: paligemma_cpu::decode_rms, decode_rope (rope_write), decode_attend.

#include "decode_ops.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PG_OPS_X86
#endif

int64_t pg_cpu_isa();  // kernels.cpp

namespace pg_ops {
namespace {

// bfloat16 bits <-> float32 as PyTorch converts (round to nearest even; NaN -> 0x7fc0)
inline float bf(uint16_t h) { return c10::detail::f32_from_bits(h); }
inline uint16_t to_bf(float f) { return c10::detail::round_to_nearest_even(f); }

inline float rnd(float f) { return bf(to_bf(f)); }

const uint16_t* bits(const at::Tensor& t) { return static_cast<const uint16_t*>(t.data_ptr()); }
uint16_t* bits_mut(const at::Tensor& t) { return static_cast<uint16_t*>(t.data_ptr()); }

void check_bf16(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.is_contiguous(),
              "decode_ops: ", what, " must be a contiguous bfloat16 CPU tensor");
}

// 1 + w of a norm's weight w (bfloat16 or float32, contiguous), in float32 (an ATen `to` costs
// ~20 us here).
std::vector<float> one_plus(const at::Tensor& w) {
  TORCH_CHECK(
      w.is_contiguous() && (w.scalar_type() == at::kBFloat16 || w.scalar_type() == at::kFloat),
      "decode_ops: a norm's weight must be contiguous bfloat16 or float32");
  std::vector<float> f(w.numel());
  if (w.scalar_type() == at::kFloat) {
    const float* p = w.data_ptr<float>();
    for (size_t i = 0; i < f.size(); ++i) f[i] = p[i] + 1.f;
  } else {
    const uint16_t* p = bits(w);
    for (size_t i = 0; i < f.size(); ++i) f[i] = bf(p[i]) + 1.f;
  }
  return f;
}

// The attention of one row, one kv head and J of its query heads (q [J, H] float32, in turn),
// over the n keys idx[0..n) of a [S, H] key and value block (rows `stride` apart).
struct Heads {
  const float* q;
  int64_t j, h;
  const uint16_t* k;
  const uint16_t* v;
  int64_t stride;
  const int64_t* idx;
  int64_t n;
};

// scores [J, n] = q . k.
void scores_scalar(const Heads& a, float* out) {
  for (int64_t i = 0; i < a.n; ++i) {
    const uint16_t* kr = a.k + a.idx[i] * a.stride;
    for (int64_t j = 0; j < a.j; ++j) {
      float acc = 0.f;
      for (int64_t d = 0; d < a.h; ++d) acc += a.q[j * a.h + d] * bf(kr[d]);
      out[j * a.n + i] = acc;
    }
  }
}

// out [J, H] = round((p [J, n] @ v) * inv[j]).
void values_scalar(const Heads& a, const float* p, const float* inv, uint16_t* out) {
  std::vector<float> acc(a.h);
  for (int64_t j = 0; j < a.j; ++j) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t i = 0; i < a.n; ++i) {
      const uint16_t* vr = a.v + a.idx[i] * a.stride;
      const float w = p[j * a.n + i];
      for (int64_t d = 0; d < a.h; ++d) acc[d] += w * bf(vr[d]);
    }
    for (int64_t d = 0; d < a.h; ++d) out[j * a.h + d] = to_bf(acc[d] * inv[j]);
  }
}

}  // namespace
}  // namespace pg_ops

#ifdef PG_OPS_X86
// A task's J (1-4) heads as a compile-time count: CALL with J set (the vector loops' entries).
#define PG_OPS_BY_HEADS(j, CALL)                \
  switch (j) {                                  \
    case 1: { constexpr int J = 1; CALL; } break; \
    case 2: { constexpr int J = 2; CALL; } break; \
    case 3: { constexpr int J = 3; CALL; } break; \
    default: { constexpr int J = 4; CALL; } break; \
  }

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define PG_OPS_INLINE inline __attribute__((always_inline))
namespace pg_ops {
namespace {

inline __m256 load8(const uint16_t* p) {  // 8 bfloat16 -> float32
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Scores of C keys from idx[i] on (C = 2: 2 J independent FMA chains, where one chain's latency
// would bound the loop, and q's vectors read once for both keys).
template <int J, int C>
PG_OPS_INLINE void keys_avx2(const Heads& a, int64_t i, float* out) {
  const float* q = a.q;
  const int64_t h = a.h, n = a.n;
  const uint16_t* k[C];
  __m256 acc[C][J];
  for (int c = 0; c < C; ++c) {
    k[c] = a.k + a.idx[i + c] * a.stride;
    for (int j = 0; j < J; ++j) acc[c][j] = _mm256_setzero_ps();
  }
  for (int64_t d = 0; d < h; d += 8) {
    __m256 kv[C];
    for (int c = 0; c < C; ++c) kv[c] = load8(k[c] + d);
    for (int j = 0; j < J; ++j) {
      const __m256 qv = _mm256_loadu_ps(q + j * h + d);
      for (int c = 0; c < C; ++c) acc[c][j] = _mm256_fmadd_ps(qv, kv[c], acc[c][j]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) out[j * n + i + c] = hsum(acc[c][j]);
}

template <int J>
void scores_avx2(const Heads& a, float* out) {
  int64_t i = 0;
  for (; i + 2 <= a.n; i += 2) keys_avx2<J, 2>(a, i, out);
  if (i < a.n) keys_avx2<J, 1>(a, i, out);
}

// Values' C vectors from d on (C = 2: independent chains again; each output value still sums
// its keys in order).
template <int J, int C>
PG_OPS_INLINE void columns_avx2(const Heads& a, const float* p, const float* inv, int64_t d,
                                uint16_t* out) {
  const int64_t n = a.n, stride = a.stride;
  __m256 acc[C][J];
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) acc[c][j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* vr = a.v + a.idx[i] * stride + d;
    for (int c = 0; c < C; ++c) {
      const __m256 vv = load8(vr + 8 * c);
      for (int j = 0; j < J; ++j)
        acc[c][j] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j * n + i), vv, acc[c][j]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) {
      alignas(32) float f[8];
      _mm256_store_ps(f, _mm256_mul_ps(acc[c][j], _mm256_set1_ps(inv[j])));
      for (int e = 0; e < 8; ++e) out[j * a.h + d + 8 * c + e] = to_bf(f[e]);
    }
}

template <int J>
void values_avx2(const Heads& a, const float* p, const float* inv, uint16_t* out) {
  int64_t d = 0;
  for (; d + 16 <= a.h; d += 16) columns_avx2<J, 2>(a, p, inv, d, out);
  if (d < a.h) columns_avx2<J, 1>(a, p, inv, d, out);
}

// The scores and the values of a task's J (1-4) heads, J a compile-time count.
void scores_avx2(const Heads& a, float* s) { PG_OPS_BY_HEADS(a.j, scores_avx2<J>(a, s)); }

void values_avx2(const Heads& a, const float* p, const float* inv, uint16_t* out) {
  PG_OPS_BY_HEADS(a.j, values_avx2<J>(a, p, inv, out));
}

}  // namespace
}  // namespace pg_ops
#undef PG_OPS_INLINE
#pragma GCC pop_options

namespace pg_ops {
#include "attend_avx512.h"
}  // namespace pg_ops
#undef PG_OPS_BY_HEADS
#endif

namespace pg_ops {
namespace {

constexpr int64_t kHeadsPerTask = 4;  // query heads a task takes (two tasks for one kv head of 8)

// A task's two passes on `path`: 2 AVX-512, 1 AVX2 + FMA, 0 the scalar loops.
void scores(const Heads& a, float* s, int path) {
#ifdef PG_OPS_X86
  if (path == 2) return scores_avx512(a, s);
  if (path == 1) return scores_avx2(a, s);
#endif
  scores_scalar(a, s);
}

void values(const Heads& a, const float* p, const float* inv, uint16_t* out, int path) {
#ifdef PG_OPS_X86
  if (path == 2) return values_avx512(a, p, inv, out);
  if (path == 1) return values_avx2(a, p, inv, out);
#endif
  values_scalar(a, p, inv, out);
}

// Scores, softmax and values of a task's heads; out [J, H].
void attend_heads(const Heads& a, float scale, float cap, bool uniform, int64_t isa,
                  uint16_t* out) {
  std::vector<float> s(a.j * a.n), inv(a.j);
  // whole 16- or 8-float vectors a head, else the scalar loops
  const int path = isa >= 2 && a.h % 16 == 0 ? 2 : (isa >= 1 && a.h % 8 == 0 ? 1 : 0);
  scores(a, s.data(), path);
  for (int64_t j = 0; j < a.j; ++j) {
    float* row = s.data() + j * a.n;
    float top = -INFINITY;
    for (int64_t i = 0; i < a.n; ++i) {
      float x = uniform ? 0.f : row[i] * scale;
      if (cap > 0.f) x = std::tanh(x / cap) * cap;
      row[i] = x;
      top = std::max(top, x);
    }
    double sum = 0.0;
    for (int64_t i = 0; i < a.n; ++i) sum += (row[i] = std::exp(row[i] - top));
    inv[j] = float(1.0 / sum);
  }
  values(a, s.data(), inv.data(), out, path);
}

}  // namespace

namespace {

// N rows of rms (x, y: the first row; rows d apart): each row's squares summed in order, in
// double, the N sums side by side (independent chains in flight; each row's bits as alone). With
// the rows over 2 threads of an AMX Xeon: 0.26 ms a (268, 2048) norm, against 0.54 ms one row
// at a time on one thread.
template <int N>
void rms_rows(const uint16_t* x, uint16_t* y, int64_t d, const float* w1, double eps) {
  double sum[N] = {};
  for (int64_t i = 0; i < d; ++i)
    for (int k = 0; k < N; ++k) {
      const double v = bf(x[k * d + i]);
      sum[k] += v * v;
    }
  for (int k = 0; k < N; ++k) {
    const float rstd = float(1.0 / std::sqrt(sum[k] / double(d) + eps));
    for (int64_t i = 0; i < d; ++i) y[k * d + i] = to_bf(bf(x[k * d + i]) * rstd * w1[i]);
  }
}

}  // namespace

at::Tensor rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  check_bf16(x, "rms's x");
  const int64_t d = x.size(-1), rows = x.numel() / d;
  TORCH_CHECK(w.numel() == d, "decode_ops: rms's weight has ", w.numel(), " values for ", d);
  const std::vector<float> w1 = one_plus(w);
  at::Tensor y = at::empty_like(x);
  const uint16_t* xp = bits(x);
  uint16_t* yp = bits_mut(y);
  // Rows over threads from 64K values (a decode step's few rows stay on this thread).
  const int64_t grain = std::max<int64_t>(4, (int64_t(1) << 16) / std::max<int64_t>(d, 1));
  at::parallel_for(0, rows, grain, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; r += 4) {
      const int64_t o = r * d;
      if (b - r >= 4) rms_rows<4>(xp + o, yp + o, d, w1.data(), eps);
      else if (b - r == 3) rms_rows<3>(xp + o, yp + o, d, w1.data(), eps);
      else if (b - r == 2) rms_rows<2>(xp + o, yp + o, d, w1.data(), eps);
      else rms_rows<1>(xp + o, yp + o, d, w1.data(), eps);
    }
  });
  return y;
}

at::Tensor add(const at::Tensor& x, const at::Tensor& y) {
  check_bf16(x, "add's x");
  check_bf16(y, "add's y");
  TORCH_CHECK(x.sizes() == y.sizes(), "decode_ops: add's x and y differ in shape");
  at::Tensor out = at::empty_like(x);
  const uint16_t *xp = bits(x), *yp = bits(y);
  uint16_t* op = bits_mut(out);
  for (int64_t i = 0; i < x.numel(); ++i) op[i] = to_bf(bf(xp[i]) + bf(yp[i]));
  return out;
}

at::Tensor rope_write(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& cache_k,
                      const at::Tensor& cache_v, int64_t layer, int64_t start) {
  for (const at::Tensor* t : {&q, &k, &v, &cos, &sin}) check_bf16(*t, "rope's q, k, v, cos, sin");
  TORCH_CHECK(cache_k.dim() == 5 && cache_k.sizes() == cache_v.sizes() &&
                  cache_k.scalar_type() == at::kBFloat16 &&
                  cache_v.scalar_type() == at::kBFloat16 && cache_k.stride(4) == 1 &&
                  cache_v.stride(4) == 1,
              "decode_ops: the caches must be bfloat16 [L, B, K, S, H], the last dimension dense");
  const int64_t b = q.size(0), h = cache_k.size(4), kv = cache_k.size(2), n = q.numel() / (b * h);
  TORCH_CHECK(
      h % 2 == 0 && cos.numel() == b * h && k.numel() == b * kv * h && v.numel() == k.numel(),
      "decode_ops: rope's shapes do not fit the cache [L, B, K, S, H]");
  TORCH_CHECK(start >= 0 && start < cache_k.size(3), "decode_ops: slot ", start,
              " outside the cache");
  const int64_t half = h / 2;
  at::Tensor qf = at::empty({b, n, h}, q.options().dtype(at::kFloat));
  float* qo = qf.data_ptr<float>();
  // rope of one head x [H] -> round(round(x c) + round(rot(x) s)) per value, as apply_rope rounds
  auto rope = [half](const uint16_t* x, const uint16_t* c, const uint16_t* s, auto&& put) {
    for (int64_t i = 0; i < half; ++i) {
      const float a = bf(x[i]), z = bf(x[i + half]);
      put(i, rnd(rnd(a * bf(c[i])) + rnd(-z * bf(s[i]))));
      put(i + half, rnd(rnd(z * bf(c[i + half])) + rnd(a * bf(s[i + half]))));
    }
  };
  for (int64_t r = 0; r < b; ++r) {
    const uint16_t *c = bits(cos) + r * h, *s = bits(sin) + r * h;
    for (int64_t i = 0; i < n; ++i) {
      float* out = qo + (r * n + i) * h;
      rope(bits(q) + (r * n + i) * h, c, s, [out](int64_t e, float f) { out[e] = f; });
    }
    for (int64_t g = 0; g < kv; ++g) {
      const int64_t at_ = layer * cache_k.stride(0) + r * cache_k.stride(1) +
                          g * cache_k.stride(2) + start * cache_k.stride(3);
      const int64_t at_v = layer * cache_v.stride(0) + r * cache_v.stride(1) +
                           g * cache_v.stride(2) + start * cache_v.stride(3);
      uint16_t* ko = bits_mut(cache_k) + at_;
      rope(bits(k) + (r * kv + g) * h, c, s, [ko](int64_t e, float f) { ko[e] = to_bf(f); });
      std::memcpy(bits_mut(cache_v) + at_v, bits(v) + (r * kv + g) * h, h * sizeof(uint16_t));
    }
  }
  return qf;
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& cache_k, const at::Tensor& cache_v,
                  int64_t layer, const at::Tensor& mask, double scale,
                  std::optional<double> softcap, int64_t isa) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && q.dim() == 3 && q.is_contiguous(),
              "decode_ops: attend's q must be contiguous float32 [B, N, H]");
  TORCH_CHECK(cache_k.dim() == 5 && cache_k.sizes() == cache_v.sizes() &&
                  cache_k.strides() == cache_v.strides() && cache_k.stride(4) == 1 &&
                  cache_k.scalar_type() == at::kBFloat16 && cache_v.scalar_type() == at::kBFloat16,
              "decode_ops: the caches must be bfloat16 [L, B, K, S, H] of one layout, the last "
              "dimension dense");
  const int64_t b = q.size(0), n = q.size(1), h = q.size(2), kv = cache_k.size(2);
  const int64_t s = mask.size(-1);
  TORCH_CHECK(cache_k.size(1) == b && cache_k.size(4) == h && n % kv == 0,
              "decode_ops: attend's q [B, N, H] does not fit the cache");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 4 && mask.size(0) == b &&
                  mask.size(2) == 1 && s <= cache_k.size(3),
              "decode_ops: attend's mask must be bool [B, 1, 1, S], S within the cache");
  TORCH_CHECK(isa <= pg_cpu_isa(), "decode_ops: this CPU has no path ", isa);
  const int64_t g = n / kv, per = std::min(g, kHeadsPerTask), tasks_per = (g + per - 1) / per;
  const float cap = softcap ? float(*softcap) : 0.f;
  at::Tensor out = at::empty({b, 1, n * h}, q.options().dtype(at::kBFloat16));
  // the keys each row sees (all of them, weighted alike, where the mask allows none: masked
  // scores all equal then, as in gemma's eager attention)
  std::vector<std::vector<int64_t>> idx(b);
  std::vector<char> uniform(b, 0);
  const bool* mp = mask.data_ptr<bool>();
  for (int64_t r = 0; r < b; ++r) {
    for (int64_t i = 0; i < s; ++i)
      if (mp[r * mask.stride(0) + i * mask.stride(3)]) idx[r].push_back(i);
    if (idx[r].empty()) {
      uniform[r] = 1;
      for (int64_t i = 0; i < s; ++i) idx[r].push_back(i);
    }
  }
  at::parallel_for(0, b * kv * tasks_per, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t r = t / (kv * tasks_per), gi = t / tasks_per % kv, first = t % tasks_per * per;
      const int64_t head = gi * g + first, j = std::min(per, g - first);
      const int64_t base =
          layer * cache_k.stride(0) + r * cache_k.stride(1) + gi * cache_k.stride(2);
      const Heads a{q.data_ptr<float>() + (r * n + head) * h,
                    j,
                    h,
                    bits(cache_k) + base,
                    bits(cache_v) + base,
                    cache_k.stride(3),
                    idx[r].data(),
                    int64_t(idx[r].size())};
      attend_heads(a, float(scale), cap, uniform[r], isa, bits_mut(out) + (r * n + head) * h);
    }
  });
  return out;
}

}  // namespace pg_ops

namespace {

at::Tensor decode_rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  return pg_ops::rms(x, w, eps);
}

at::Tensor decode_rope(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& cache_k,
                       const at::Tensor& cache_v, int64_t layer, int64_t start) {
  return pg_ops::rope_write(q, k, v, cos, sin, cache_k, cache_v, layer, start);
}

at::Tensor decode_attend(const at::Tensor& q, const at::Tensor& cache_k, const at::Tensor& cache_v,
                         int64_t layer, const at::Tensor& mask, double scale,
                         std::optional<double> softcap, int64_t isa) {
  return pg_ops::attend(q, cache_k, cache_v, layer, mask, scale, softcap, isa);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("decode_rms(Tensor x, Tensor w, float eps) -> Tensor", &decode_rms);
  m.def(
      "decode_rope(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor(a!) cache_k, "
      "Tensor(b!) cache_v, int layer, int start) -> Tensor",
      &decode_rope);
  m.def(
      "decode_attend(Tensor q, Tensor cache_k, Tensor cache_v, int layer, Tensor mask, "
      "float scale, float? softcap, int isa) -> Tensor",
      &decode_attend);
}
