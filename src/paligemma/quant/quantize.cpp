// Quantising a float weight as it is loaded: codes.py's quantize_weight (int8 per output row;
// int4 per group with int4_codes' choice of scale), bit for bit, in vectors. Built into the same
// library as kernels.cpp (kernels.py compiles it); ops under torch.ops.paligemma_cpu.
//
//   quantize_isa(w f32|bf16[O, I], bits, group, isa=-1) -> (codes, scale f32)
//     int8: codes int8[O, I] = min(max(nearbyint(w / s), -127), 127),
//           s f32[O] = max(amax, 1e-12) / 127 (amax over the row)
//     int4: codes uint8[O, I/2] (value + 8, two per byte, low nibble first), s f32[O, I/group]:
//           per group and ratio r in kClip (codes.CLIP), s = max(amax, 1e-12) * r / 7 and the
//           codes min(max(nearbyint(w * (1 / s)), -8), 7); the s whose squared error
//           sum((w - code * s)^2) is least (the first on a tie) wins. The sum runs in halves
//           (zero-padded to a power of two, e[i] += e[i + h] for h = P/2 .. 1), as int4_codes
//           sums it, so vector and scalar paths and PyTorch choose alike.
//   quantize(w, bits, group) -> the same on the scalar path (the reference of the others)
//
//   Threads: torch's intra-op count, each taking the next block of rows (kBlock weights).
//   isa: 2 AVX-512, 1 AVX2, 0 scalar, -1 best. The group loops live in the PG_QZ_BODY section
// at the end, included three times under GCC target pragmas (as dequant.cpp; dequant_isa.h
// has each path's vector helpers). Every product and sum is rounded on its own (fp-contract=off
// in those sections: GCC would fuse a product and a sum into an FMA), as PyTorch's ops are.

#ifndef PG_QZ_BODY
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <tuple>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define PG_QZ_X86 1
#endif

int64_t pg_cpu_isa();  // kernels.cpp: the best path this CPU runs

namespace {
constexpr float kClip[] = {1.0f, 0.95f, 0.9f, 0.85f, 0.8f};  // codes.CLIP
constexpr int64_t kBlock = 1 << 16;  // weights per block of rows that one thread takes at a time
}  // namespace

#define PG_QZ_BODY 1
#ifdef PG_QZ_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
namespace pg_qz_avx512 {
#define PG_DQ_ISA 2
#include __FILE__
#undef PG_DQ_ISA
}  // namespace pg_qz_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace pg_qz_avx2 {
#define PG_DQ_ISA 1
#include __FILE__
#undef PG_DQ_ISA
}  // namespace pg_qz_avx2
#pragma GCC pop_options
#endif
#pragma GCC push_options
namespace pg_qz_scalar {
#define PG_DQ_ISA 0
#include __FILE__
#undef PG_DQ_ISA
}  // namespace pg_qz_scalar
#pragma GCC pop_options
#undef PG_QZ_BODY

namespace {

std::tuple<at::Tensor, at::Tensor> quantize_isa(const at::Tensor& w_, int64_t bits, int64_t group,
                                               int64_t isa) {
  TORCH_CHECK(w_.dim() == 2 && (bits == 8 || (bits == 4 && group > 0 && group % 2 == 0)),
              "quantize_isa: w [O, I], bits 8 or 4 with an even group");
  const bool bf16 = w_.scalar_type() == at::kBFloat16;
  const at::Tensor w = bf16 ? w_.contiguous() : w_.to(at::kFloat).contiguous();
  const int64_t O = w.size(0), I = w.size(1), G = bits == 8 ? 1 : I / group;
  TORCH_CHECK(bits == 8 || I % group == 0, "quantize_isa: the group must divide in_features");
  const int64_t best = pg_cpu_isa();
  TORCH_CHECK(isa <= best, "paligemma_cpu: this CPU has no path ", isa, " (best: ", best, ")");
  isa = isa < 0 ? best : isa;
  const auto type = bits == 8 ? at::kChar : at::kByte;
  at::Tensor codes = at::empty({O, bits == 8 ? I : I / 2}, w.options().dtype(type));
  at::Tensor scale = at::empty({O, G}, w.options().dtype(at::kFloat));
  auto* cp = static_cast<uint8_t*>(codes.data_ptr());
  float* sp = scale.data_ptr<float>();
  // Rows in blocks of about kBlock weights, each thread taking the next block while any is left
  // (not a fixed share each: on a busy host a thread that waits for its core delays only the
  // block it holds, not half of the matrix)
  const int64_t rows = std::max<int64_t>(1, kBlock / I), blocks = (O + rows - 1) / rows;
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    for (int64_t b = next++; b < blocks; b = next++) {
      const int64_t o0 = b * rows, o1 = std::min(O, o0 + rows);
      auto run = [&](const auto* wp) {
#ifdef PG_QZ_X86
        if (isa == 2) return pg_qz_avx512::quantize_rows(wp, I, bits, group, cp, sp, o0, o1);
        if (isa == 1) return pg_qz_avx2::quantize_rows(wp, I, bits, group, cp, sp, o0, o1);
#endif
        pg_qz_scalar::quantize_rows(wp, I, bits, group, cp, sp, o0, o1);
      };
      if (bf16) run(w.data_ptr<c10::BFloat16>());
      else run(w.data_ptr<float>());
    }
  };
  // threads of our own, joined (blocking), not at::parallel_for: OpenMP's workers spin after a
  // parallel region, taking the cores the reading of the next tensor needs on a busy host
  std::vector<std::thread> helpers;
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), blocks);
  for (int64_t t = 1; t < threads; ++t) helpers.emplace_back(work, t, t + 1);
  work(0, 1);
  for (auto& h : helpers) h.join();
  return {codes, bits == 8 ? scale.view({O}) : scale};
}

std::tuple<at::Tensor, at::Tensor> quantize(const at::Tensor& w, int64_t bits, int64_t group) {
  return quantize_isa(w, bits, group, 0);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("quantize_isa(Tensor w, int bits, int group, int isa=-1) -> (Tensor, Tensor)",
        &quantize_isa);
  m.def("quantize(Tensor w, int bits, int group) -> (Tensor, Tensor)", &quantize);
}

#else  // PG_QZ_BODY: the loops for one instruction set (PG_DQ_ISA 2, 1 or 0)

#pragma GCC optimize("fp-contract=off")  // each product rounded, as PyTorch's ops (no FMA)
#include "dequant_isa.h"  // vf, W and the vector helpers of this path

template <typename T>
inline float load1(const T* w, int64_t i) { return float(w[i]); }

// max |w| over n values
template <typename T>
float amax_of(const T* w, int64_t n) {
  float amax = 0.f;
  int64_t i = 0;
#if PG_DQ_ISA > 0
  vf m = vset(0.f);
  for (; i + W <= n; i += W) m = vmax(m, vabs(vload(w + i)));
  amax = vhmax(m);
#endif
  for (; i < n; ++i) amax = std::max(amax, std::abs(load1(w, i)));
  return amax;
}

// int8: one row of n values -> n codes, its scale
template <typename T>
float int8_row(const T* w, int64_t n, int32_t* c, int8_t* out) {
  const float s = std::max(amax_of(w, n), 1e-12f) / 127.f;
  int64_t i = 0;
#if PG_DQ_ISA > 0
  const vf vs = vset(s), vlo = vset(-127.f), vtop = vset(127.f);
  for (; i + W <= n; i += W) vstore_i32(c + i, vmin(vmax(vround(vdiv(vload(w + i), vs)), vlo), vtop));
#endif
  for (; i < n; ++i) c[i] = int32_t(std::min(std::max(std::nearbyint(load1(w, i) / s), -127.f), 127.f));
  for (i = 0; i < n; ++i) out[i] = int8_t(c[i]);
  return s;
}

// e[0, p) (p a power of two) summed in halves; e[0, p/2) is left changed
inline float halving_sum(float* e, int64_t p) {
  for (int64_t h = p / 2; h >= 1; h /= 2) {
    int64_t i = 0;
#if PG_DQ_ISA > 0
    for (; i + W <= h; i += W) vstore(e + i, vadd(vload(e + i), vload(e + i + h)));
#endif
    for (; i < h; ++i) e[i] += e[i + h];
  }
  return e[0];
}

inline float code1(float f, float inv) { return std::min(std::max(std::nearbyint(f * inv), -8.f), 7.f); }

#if PG_DQ_ISA > 0
// (y - code)^2 of W values y = f / s: the code round(y) clamped to [-8, 7], rounded as
// (y + 1.5 * 2^23) - 1.5 * 2^23 (to nearest even for |y| < 2^22; here |y| <= 7 / 0.8)
inline vf sq_step(vf y) {
  const vf big = vset(12582912.f);
  const vf c = vsub(vmin(vmax(vadd(y, big), vset(12582904.f)), vset(12582919.f)), big);
  const vf d = vsub(y, c);
  return vmul(d, d);
}
#endif

// The squared error (f - code * s)^2 of n floats quantised with scale s (inv = 1 / s), as
// int4_codes computes it: s^2 times sum((y - code)^2), y = f * inv, summed in halves over p
// (e: scratch)
float int4_error(const float* f, int64_t n, int64_t p, float s, float inv, float* e) {
  int64_t i = 0;
#if PG_DQ_ISA > 0
  const vf vinv = vset(inv);
  for (; i + W <= n; i += W) vstore(e + i, sq_step(vmul(vload(f + i), vinv)));
#endif
  for (; i < n; ++i) {
    const float y = f[i] * inv, d = y - std::min(std::max(std::nearbyint(y), -8.f), 7.f);
    e[i] = d * d;
  }
  return halving_sum(e, p) * (s * s);
}

constexpr int kRatios = sizeof(kClip) / sizeof(float);

#if PG_DQ_ISA > 0
// int4_error for every scale s[r] of n = K * W floats, in registers: the halvings run across
// the K vectors first, then within one (vhalves); every ratio at once, so they overlap
template <int K>
void errors_of(const float* f, const float* s, const float* inv, float* err) {
  vf x[K], acc[kRatios];
  for (int k = 0; k < K; ++k) x[k] = vload(f + k * W);
  for (int r = 0; r < kRatios; ++r) {
    const vf vinv = vset(inv[r]);
    vf v[K];
    for (int k = 0; k < K; ++k) v[k] = sq_step(vmul(x[k], vinv));
    for (int h = K / 2; h >= 1; h /= 2)
      for (int k = 0; k < h; ++k) v[k] = vadd(v[k], v[k + h]);
    acc[r] = v[0];
  }
  for (int r = 0; r < kRatios; ++r) err[r] = vhalves(acc[r]) * (s[r] * s[r]);
}
#endif

// err[r] = int4_error(f, n, p, s[r], inv[r], e) for every ratio
void int4_errors(const float* f, int64_t n, int64_t p, const float* s, const float* inv, float* e,
                 float* err) {
#if PG_DQ_ISA > 0
  if (n == p) switch (n / W) {
      case 1: return errors_of<1>(f, s, inv, err);
      case 2: return errors_of<2>(f, s, inv, err);
      case 4: return errors_of<4>(f, s, inv, err);
      case 8: return errors_of<8>(f, s, inv, err);
    }
#endif
  for (int r = 0; r < kRatios; ++r) err[r] = int4_error(f, n, p, s[r], inv[r], e);
}

// n floats -> n / 2 bytes: code + 8, two per byte, low nibble first
inline void pack(const float* f, int64_t n, float inv, uint8_t* out) {
  int64_t i = 0;
#if PG_DQ_ISA > 0
  const vf vinv = vset(inv);
  for (; i + W <= n; i += W) pack_nibbles(vclamp4(vround(vmul(vload(f + i), vinv))), out + i / 2);
#endif
  for (; i < n; i += 2)
    out[i / 2] = uint8_t(int(code1(f[i], inv)) + 8) | uint8_t((int(code1(f[i + 1], inv)) + 8) << 4);
}

// Scratch of one thread's int4 rows (I inputs, groups of n, p the power of two >= n)
struct Rows4 {
  int64_t n, p, G;
  std::vector<float> f, e, s, inv, err;  // the row in float32, padded errors, [G, kRatios] x 3
  Rows4(int64_t I, int64_t n_) : n(n_), p(1), G(I / n_), f(I) {
    while (p < n) p *= 2;
    e.assign(p, 0.f), s.resize(G * kRatios), inv.resize(G * kRatios), err.resize(G * kRatios);
  }
};

// int4: one row -> I / 2 bytes, G scales (per group the kClip ratio of least error), in steps
// over all of the row's groups (independent work, which the CPU overlaps): the floats and each
// group's candidate scales, their errors, then the best's codes
template <typename T>
void int4_row(const T* w, Rows4& t, uint8_t* out, float* scale) {
  const int64_t n = t.n, G = t.G, I = n * G;
  float *f = t.f.data(), *s = t.s.data(), *inv = t.inv.data(), *err = t.err.data();
  int64_t i = 0;
#if PG_DQ_ISA > 0
  for (; i + W <= I; i += W) vstore(f + i, vload(w + i));
#endif
  for (; i < I; ++i) f[i] = load1(w, i);
  for (int64_t g = 0; g < G; ++g) {
    const float amax = std::max(amax_of(f + g * n, n), 1e-12f);
    for (int r = 0; r < kRatios; ++r) s[g * kRatios + r] = amax * kClip[r];
  }
  for (i = 0; i < G * kRatios; ++i) s[i] /= 7.f, inv[i] = 1.f / s[i];  // (vectorised)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t at = g * kRatios;
    int4_errors(f + g * n, n, t.p, s + at, inv + at, t.e.data(), err + at);
  }
  for (int64_t g = 0; g < G; ++g) {
    int64_t best = g * kRatios;
    for (int64_t r = best + 1; r < (g + 1) * kRatios; ++r) best = err[r] < err[best] ? r : best;
    scale[g] = s[best];
    pack(f + g * n, n, inv[best], out + g * n / 2);
  }
}

template <typename T>
void quantize_rows(const T* w, int64_t I, int64_t bits, int64_t group, uint8_t* codes,
                   float* scale, int64_t o0, int64_t o1) {
  if (bits == 8) {
    std::vector<int32_t> c(I);
    for (int64_t o = o0; o < o1; ++o)
      scale[o] = int8_row(w + o * I, I, c.data(), reinterpret_cast<int8_t*>(codes) + o * I);
    return;
  }
  Rows4 t(I, group);
  for (int64_t o = o0; o < o1; ++o) int4_row(w + o * I, t, codes + o * (I / 2), scale + o * t.G);
}

#endif  // PG_QZ_BODY
