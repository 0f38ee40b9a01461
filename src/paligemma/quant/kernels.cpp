// Weight-only int8 and int4 matrix products for a few activation rows (decoding), on the CPU.
//
// Decoding reads every weight once per token, so its speed is the memory bandwidth divided by
// the bytes per weight -- if the arithmetic keeps up. PyTorch's packed int8 / int4 kernels
// reach about half the bandwidth on a 2-core x86 machine; these loops stream each weight row
// once (prefetching ahead), widen the codes to float32 in registers and accumulate in float32
// for all the rows of x at once. Built on first use by kernels.py (-O3 -mtune=native).
//
//   int8_matmul(x f32[M, I], q int8[O, I], scale f32[O], isa=-1)   -> f32[M, O]
//       out[m, o] = scale[o] * sum_i x[m, i] * q[o, i]
//   int4_matmul(x f32[M, I], q uint8[O, I/2], scale f32|bf16[O, G], group, isa=-1) -> f32[M, O]
//       out[m, o] = sum_i x[m, i] * (code[o, i] - 8) * scale[o, i / group]
//       (q: the portable layout of linear.py, two codes per byte, low nibble first; G = I/group)
//   cpu_isa() -> int: the best path this CPU runs (2 AVX-512, 1 AVX2 + FMA, 0 scalar)
//   (int4_dot.cpp, linked into the same library, adds int4 x int8-activation products)
//   (quantize.cpp adds quantize / quantize_isa: codes.quantize_weight's codes and scales)
//
// Both loops live in the PG_ISA_BODY section at the end, which this file includes into itself
// three times under GCC target pragmas (AVX-512, AVX2 + FMA, none); the path is chosen at run
// time from the CPU's flags, or forced with isa= (so a test runs every path on one machine).
// int4 needs no repacking: a 16-byte chunk holds the even codes of 32 weights in its low
// nibbles and the odd ones in its high nibbles, so x is reordered once per call to match
// (xs: per 32 inputs, the 16 even ones then the 16 odd ones).

#ifndef PG_ISA_BODY
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define PG_HAS_X86 1
#endif

namespace {

constexpr int64_t kMaxRows = 8;  // rows of x per pass over the weights
#ifndef PG_AHEAD
#define PG_AHEAD 8192
#endif
constexpr int64_t kAhead = PG_AHEAD;  // bytes of weights requested ahead of use

template <typename F>
void by_rows(int64_t M, F&& pass) {
  for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) pass(m0, std::min(kMaxRows, M - m0));
}

#define DISPATCH_MB(mb, CALL)                         \
  switch (mb) {                                       \
    case 1: { constexpr int MB = 1; CALL; } break;    \
    case 2: { constexpr int MB = 2; CALL; } break;    \
    case 3: { constexpr int MB = 3; CALL; } break;    \
    case 4: { constexpr int MB = 4; CALL; } break;    \
    case 5: { constexpr int MB = 5; CALL; } break;    \
    case 6: { constexpr int MB = 6; CALL; } break;    \
    case 7: { constexpr int MB = 7; CALL; } break;    \
    default: { constexpr int MB = 8; CALL; } break;   \
  }

}  // namespace

// -- one copy of the PG_ISA_BODY section per instruction set --------------------------

#define PG_ISA_BODY 1
#ifdef PG_HAS_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
namespace pg_avx512 {
#define PG_ISA 2
#include __FILE__
#undef PG_ISA
}  // namespace pg_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace pg_avx2 {
#define PG_ISA 1
#include __FILE__
#undef PG_ISA
}  // namespace pg_avx2
#pragma GCC pop_options
#endif
namespace pg_scalar {
#define PG_ISA 0
#include __FILE__
#undef PG_ISA
}  // namespace pg_scalar
#undef PG_ISA_BODY

int64_t pg_cpu_isa() {  // also int4_dot.cpp's
#ifdef PG_HAS_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

namespace {

int64_t checked_isa(int64_t isa) {
  const int64_t best = pg_cpu_isa();
  TORCH_CHECK(isa <= best, "paligemma_cpu: this CPU has no path ", isa, " (best: ", best, ")");
  return isa < 0 ? best : isa;
}

at::Tensor int8_matmul(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& scale_,
                       int64_t isa) {
  TORCH_CHECK(x_.dim() == 2 && q_.dim() == 2 && x_.size(1) == q_.size(1), "int8_matmul: shapes");
  TORCH_CHECK(q_.scalar_type() == at::kChar, "int8_matmul: q must be int8");
  TORCH_CHECK(scale_.numel() == q_.size(0), "int8_matmul: one scale per output row");
  isa = checked_isa(isa);
  const at::Tensor x = x_.to(at::kFloat).contiguous();
  const at::Tensor q = q_.contiguous();
  const at::Tensor scale = scale_.to(at::kFloat).contiguous();
  const int64_t M = x.size(0), I = x.size(1), O = q.size(0);
  at::Tensor out = at::empty({M, O}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  by_rows(M, [&](int64_t m0, int64_t mb) {
    const float* xm = xp + m0 * I;
    float* om = op + m0 * O;
    at::parallel_for(0, O, 64, [&](int64_t o0, int64_t o1) {
#ifdef PG_HAS_X86
      if (isa == 2) return pg_avx512::int8_rows(mb, xm, I, qp, sp, om, O, o0, o1);
      if (isa == 1) return pg_avx2::int8_rows(mb, xm, I, qp, sp, om, O, o0, o1);
#endif
      pg_scalar::int8_rows(mb, xm, I, qp, sp, om, O, o0, o1);
    });
  });
  return out;
}

at::Tensor int4_matmul(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& scale_,
                       int64_t group, int64_t isa) {
  const int64_t I = x_.size(-1), O = q_.size(0);
  TORCH_CHECK(x_.dim() == 2 && q_.dim() == 2 && q_.size(1) * 2 == I, "int4_matmul: shapes");
  TORCH_CHECK(q_.scalar_type() == at::kByte, "int4_matmul: q must be uint8");
  TORCH_CHECK(group > 0 && group % 32 == 0 && I % group == 0,
              "int4_matmul: the group size must be a multiple of 32 dividing in_features");
  TORCH_CHECK(scale_.dim() == 2 && scale_.size(0) == O && scale_.size(1) == I / group,
              "int4_matmul: one scale per output row and group");
  isa = checked_isa(isa);
  const int64_t M = x_.size(0);
  // xs[m, b*32 + j] = x[m, b*32 + 2j], xs[m, b*32 + 16 + j] = x[m, b*32 + 2j + 1]  (j < 16)
  const at::Tensor xs =
      x_.to(at::kFloat).reshape({M, I / 32, 16, 2}).transpose(2, 3).contiguous().view({M, I});
  const at::Tensor q = q_.contiguous();
  at::Tensor scale = scale_.contiguous();
  if (scale.scalar_type() != at::kBFloat16) scale = scale.to(at::kFloat);
  at::Tensor out = at::empty({M, O}, xs.options());
  const bool bf16 = scale.scalar_type() == at::kBFloat16;
  const float* xp = xs.data_ptr<float>();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const void* sp = scale.data_ptr();
  float* op = out.data_ptr<float>();
  by_rows(M, [&](int64_t m0, int64_t mb) {
    const float* const xm = xp + m0 * I;
    float* const om = op + m0 * O;
    at::parallel_for(0, O, 16, [&](int64_t o0, int64_t o1) {
#ifdef PG_HAS_X86
      if (isa == 2) return pg_avx512::int4_rows(mb, xm, I, qp, sp, bf16, group, om, O, o0, o1);
      if (isa == 1) return pg_avx2::int4_rows(mb, xm, I, qp, sp, bf16, group, om, O, o0, o1);
#endif
      pg_scalar::int4_rows(mb, xm, I, qp, sp, bf16, group, om, O, o0, o1);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(paligemma_cpu, m) {
  m.def("int8_matmul(Tensor x, Tensor q, Tensor scale, int isa=-1) -> Tensor", &int8_matmul);
  m.def("int4_matmul(Tensor x, Tensor q, Tensor scale, int group, int isa=-1) -> Tensor",
        &int4_matmul);
  m.def("cpu_isa() -> int", &pg_cpu_isa);
}

#else  // PG_ISA_BODY: the int4 loop for one instruction set (PG_ISA 2, 1 or 0)

#define PG_VEC_ISA PG_ISA
#include "f32_vec.h"  // W, vf and their float32 ops
#undef PG_VEC_ISA

#if PG_ISA == 2
inline vf load_s8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
// 16 bytes -> the 32 codes in xs order (16 low nibbles, then 16 high ones), as floats
inline void decode(const uint8_t* p, vf* w) {
  const __m128i b = _mm_loadu_si128((const __m128i*)p), mask = _mm_set1_epi8(15);
  w[0] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(b, mask)));
  w[1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), mask)));
}
#elif PG_ISA == 1
inline vf load_s8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
inline vf widen(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }
inline void decode(const uint8_t* p, vf* w) {
  const __m128i b = _mm_loadu_si128((const __m128i*)p), mask = _mm_set1_epi8(15);
  const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
  w[0] = widen(lo), w[1] = widen(_mm_srli_si128(lo, 8));
  w[2] = widen(hi), w[3] = widen(_mm_srli_si128(hi, 8));
}
#else  // portable scalar code
inline vf load_s8(const int8_t* p) { return float(*p); }
inline void decode(const uint8_t* p, vf* w) {
  for (int j = 0; j < 16; ++j) w[j] = float(p[j] & 15), w[16 + j] = float(p[j] >> 4);
}
#endif

// Rows [o0, o1) of the output for MB rows of x (MB <= kMaxRows, known at compile time). With
// few rows of x, U independent accumulators per row hide the latency of the FMA chain.
template <int MB>
void int8_block(const float* x, int64_t I, const int8_t* q, const float* scale, float* out,
                int64_t O, int64_t o0, int64_t o1) {
  constexpr int U = MB == 1 ? 4 : (MB == 2 ? 2 : 1);
  for (int64_t o = o0; o < o1; ++o) {
    const int8_t* row = q + o * I;
    vf acc[U][MB];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MB; ++m) acc[u][m] = vzero();
    int64_t i = 0;
    for (; i + U * W <= I; i += U * W) {
      __builtin_prefetch(row + i + kAhead);
      for (int u = 0; u < U; ++u) {
        vf w = load_s8(row + i + u * W);
        for (int m = 0; m < MB; ++m) acc[u][m] = vfma(w, vload(x + m * I + i + u * W), acc[u][m]);
      }
    }
    for (; i + W <= I; i += W) {
      vf w = load_s8(row + i);
      for (int m = 0; m < MB; ++m) acc[0][m] = vfma(w, vload(x + m * I + i), acc[0][m]);
    }
    for (int m = 0; m < MB; ++m) {
      for (int u = 1; u < U; ++u) acc[0][m] = vadd(acc[0][m], acc[u][m]);
      float s = vsum(acc[0][m]);
      for (int64_t j = i; j < I; ++j) s += float(row[j]) * x[m * I + j];
      out[m * O + o] = s * scale[o];
    }
  }
}

void int8_rows(int64_t mb, const float* x, int64_t I, const int8_t* q, const float* scale,
               float* out, int64_t O, int64_t o0, int64_t o1) {
  DISPATCH_MB(mb, int8_block<MB>(x, I, q, scale, out, O, o0, o1));
}

template <typename S>
inline float scale_at(const S* s, int64_t i);
template <>
inline float scale_at(const float* s, int64_t i) { return s[i]; }
template <>
inline float scale_at(const c10::BFloat16* s, int64_t i) { return float(s[i]); }

// Rows [o0, o1) of the output for MB rows of xs; weights in steps of NC chunks of 32 (16 bytes
// each), their float value (code - 8) * scale formed in registers. U accumulators per row of x
// hide the latency of the FMA chain.
template <int MB, int NC, typename S>
void int4_block(const float* x, int64_t I, const uint8_t* q, const S* scale, int64_t group,
                float* out, int64_t O, int64_t o0, int64_t o1) {
  constexpr int K = 32 * NC / W;  // vectors per step
  constexpr int U0 = MB == 1 ? 4 : (MB == 2 ? 2 : 1);
  constexpr int U = U0 < K ? U0 : K;
  const int64_t G = I / group;
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = q + o * (I / 2);
    vf acc[U][MB];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MB; ++m) acc[u][m] = vzero();
    int64_t i = 0;
    for (int64_t g = 0; g < G; ++g) {
      const float s = scale_at(scale, o * G + g);
      const vf vs = vset(s), vms = vset(-8.f * s);
      for (int64_t end = i + group; i < end; i += 32 * NC) {
        __builtin_prefetch(row + i / 2 + kAhead);
        vf w[K];
        for (int c = 0; c < NC; ++c) decode(row + i / 2 + 16 * c, w + c * (K / NC));
        for (int k = 0; k < K; ++k) {
          const vf wk = vfma(w[k], vs, vms);
          for (int m = 0; m < MB; ++m)
            acc[k % U][m] = vfma(wk, vload(x + m * I + i + k * W), acc[k % U][m]);
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      for (int u = 1; u < U; ++u) acc[0][m] = vadd(acc[0][m], acc[u][m]);
      out[m * O + o] = vsum(acc[0][m]);
    }
  }
}

template <int NC>
void int4_nc(int64_t mb, const float* x, int64_t I, const uint8_t* q, const void* scale,
             bool bf16, int64_t group, float* out, int64_t O, int64_t o0, int64_t o1) {
  if (bf16) {
    const auto* s = (const c10::BFloat16*)scale;
    DISPATCH_MB(mb, (int4_block<MB, NC>(x, I, q, s, group, out, O, o0, o1)));
  } else {
    const auto* s = (const float*)scale;
    DISPATCH_MB(mb, (int4_block<MB, NC>(x, I, q, s, group, out, O, o0, o1)));
  }
}

void int4_rows(int64_t mb, const float* x, int64_t I, const uint8_t* q, const void* scale,
               bool bf16, int64_t group, float* out, int64_t O, int64_t o0, int64_t o1) {
  if (group % 64 == 0) return int4_nc<2>(mb, x, I, q, scale, bf16, group, out, O, o0, o1);
  int4_nc<1>(mb, x, I, q, scale, bf16, group, out, O, o0, o1);
}

#endif  // PG_ISA_BODY
