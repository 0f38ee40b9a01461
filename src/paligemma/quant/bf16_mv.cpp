// bfloat16 weights times a few bfloat16 rows (decoding's products: one row a token, 2-16 in a
// batch), on the CPU. Built into the same library as kernels.cpp (kernels.py compiles all).
//
//   bf16_mv(x bf16[M, I], w bf16[O, I] (rows contiguous, any row stride), isa=-1) -> bf16[M, O]
//       out[m, o] = round(sum_i x[m, i] * w[o, i]): float32 sums of the exact products,
//       rounded once to bfloat16 (nearest even), as a bfloat16 F.linear / torch.mv rounds.
//
// Decoding reads every weight once a token, so the product's speed is the memory bandwidth over
// 2 bytes a weight, if the loop keeps up. On a 2-core AMD EPYC (Zen 5), a 16,384 x 2,048 weight
// from memory, torch.mv reads 21.2 GB/s and F.linear 30.3, this loop 53.2 on AVX-512 and 47.7
// on AVX2 (benchmarks/RESULTS.md, session 42). A tile of OB weight rows is read side by side (each row a stream,
// prefetched kAhead weights ahead, past its end into the same row of the next tile), widened
// to float32 in registers (a bfloat16 is a float32's high half: zero-extend, shift) and run
// against MB rows of x at once: a weight vector serves MB rows, an x vector OB outputs.
//
// Each output's arithmetic is fixed, whatever M, OB or MB: x's row m against weight row o in one
// float32 accumulator of W lanes (the inputs W at a time, in order), its lanes summed, then the
// last I % W inputs one at a time (fma), the sum rounded once. So a row's result is the same
// bits alone or in any batch (the server's batched = alone). Paths: 2 AVX-512 (W 16), 1 AVX2 +
// FMA (W 8), 0 scalar (W 1); each path's bits differ from the others' (the lanes), never from
// itself.

#ifndef PG_MV_BODY
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define PG_MV_X86 1
#endif

int64_t pg_cpu_isa();  // kernels.cpp

namespace {
// weights (2 bytes each) a row requested ahead of use; past a row's end, the same row of the
// next tile (the next OB rows): a tile reads OB rows side by side, each one stream
constexpr int64_t kAhead = 512;
inline float from_bf16(uint16_t h) { return c10::detail::f32_from_bits(h); }
}  // namespace

#define PG_MV_BODY 1
#ifdef PG_MV_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
namespace pg_mv_avx512 {
#define PG_MV_ISA 2
#include __FILE__
#undef PG_MV_ISA
}  // namespace pg_mv_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace pg_mv_avx2 {
#define PG_MV_ISA 1
#include __FILE__
#undef PG_MV_ISA
}  // namespace pg_mv_avx2
#pragma GCC pop_options
#endif
namespace pg_mv_scalar {
#define PG_MV_ISA 0
#include __FILE__
#undef PG_MV_ISA
}  // namespace pg_mv_scalar
#undef PG_MV_BODY

namespace {

at::Tensor bf16_mv(const at::Tensor& x_, const at::Tensor& w, int64_t isa) {
  TORCH_CHECK(x_.device().is_cpu() && w.device().is_cpu(), "bf16_mv: x and w must be on the CPU");
  TORCH_CHECK(x_.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16,
              "bf16_mv: x and w must be bfloat16");
  TORCH_CHECK(x_.dim() == 2 && w.dim() == 2 && x_.size(1) == w.size(1),
              "bf16_mv: x [M, I] and w [O, I] (got ", x_.sizes(), " and ", w.sizes(), ")");
  TORCH_CHECK(w.stride(1) == 1 || w.size(1) <= 1, "bf16_mv: w's rows must be contiguous");
  const int64_t best = pg_cpu_isa();
  TORCH_CHECK(isa <= best, "bf16_mv: this CPU has no path ", isa, " (best: ", best, ")");
  isa = isa < 0 ? best : isa;
  const int64_t M = x_.size(0), I = x_.size(1), O = w.size(0), ldw = w.stride(0);
  const at::Tensor x = x_.to(at::kFloat).contiguous();  // exact
  at::Tensor out = at::empty({M, O}, x_.options());
  if (M == 0 || O == 0) return out;
  const float* xp = x.data_ptr<float>();
  const auto* wp = static_cast<const uint16_t*>(w.data_ptr());
  auto* op = reinterpret_cast<c10::BFloat16*>(out.data_ptr());
  at::parallel_for(0, O, 16, [&](int64_t o0, int64_t o1) {
#ifdef PG_MV_X86
    if (isa == 2) return pg_mv_avx512::rows(M, xp, I, wp, ldw, op, O, o0, o1);
    if (isa == 1) return pg_mv_avx2::rows(M, xp, I, wp, ldw, op, O, o0, o1);
#endif
    pg_mv_scalar::rows(M, xp, I, wp, ldw, op, O, o0, o1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("bf16_mv(Tensor x, Tensor w, int isa=-1) -> Tensor", &bf16_mv);
}

#else  // PG_MV_BODY: the loop for one instruction set (PG_MV_ISA 2, 1 or 0)

#define PG_VEC_ISA PG_MV_ISA
#include "f32_vec.h"  // W, vf and their float32 ops
#undef PG_VEC_ISA

#if PG_MV_ISA == 2
constexpr int MG = 4;  // rows of x a pass
// outputs a tile by rows of x (accumulators OB * MB, plus OB weight vectors and one of x)
constexpr int OB1 = 4, OB2 = 6, OB4 = 6;
inline vf load_w(const uint16_t* p) {  // 16 bfloat16 -> float32: zero-extend, shift
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}
#elif PG_MV_ISA == 1
// 4 rows of x a pass in tiles of 3 outputs (12 accumulators of the 16 registers): 8 rows read
// at 0.83x F.linear's GB/s, against 0.59x with 2 rows a pass (a Zen 5's AVX2 path, session 42)
constexpr int MG = 4;
constexpr int OB1 = 4, OB2 = 4, OB4 = 3;
inline vf load_w(const uint16_t* p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
#else  // portable scalar code
constexpr int MG = 4;
constexpr int OB1 = 4, OB2 = 4, OB4 = 2;
inline vf load_w(const uint16_t* p) { return from_bf16(*p); }
#endif

// Outputs [o, o + OB) for rows [0, MB) of x (OB, MB known at compile time): the arithmetic of
// the file's head for each, whatever OB and MB (they only share loads: a weight vector serves
// MB rows, an x vector OB outputs).
template <int OB, int MB>
void tile(const float* x, int64_t I, const uint16_t* w, int64_t ldw, c10::BFloat16* out,
          int64_t O, int64_t o) {
  constexpr int kStep = W < 32 ? 32 : W;  // weights a step: one 64-byte line a row
  const uint16_t* r[OB];
  for (int b = 0; b < OB; ++b) r[b] = w + (o + b) * ldw;
  vf acc[OB][MB];
  for (int b = 0; b < OB; ++b)
    for (int m = 0; m < MB; ++m) acc[b][m] = vzero();
  int64_t i = 0;
  for (; i + kStep <= I; i += kStep) {
    const int64_t j = i + kAhead;
    for (int b = 0; b < OB; ++b) __builtin_prefetch(j < I ? r[b] + j : r[b] + OB * ldw + (j - I));
    for (int k = 0; k < kStep; k += W) {
      vf wv[OB];
      for (int b = 0; b < OB; ++b) wv[b] = load_w(r[b] + i + k);
      for (int m = 0; m < MB; ++m) {
        const vf xv = vload(x + m * I + i + k);
        for (int b = 0; b < OB; ++b) acc[b][m] = vfma(wv[b], xv, acc[b][m]);
      }
    }
  }
  for (; i + W <= I; i += W)
    for (int b = 0; b < OB; ++b) {
      const vf wv = load_w(r[b] + i);
      for (int m = 0; m < MB; ++m) acc[b][m] = vfma(wv, vload(x + m * I + i), acc[b][m]);
    }
  for (int b = 0; b < OB; ++b)
    for (int m = 0; m < MB; ++m) {
      float s = vsum(acc[b][m]);
      for (int64_t j = i; j < I; ++j) s = std::fma(from_bf16(r[b][j]), x[m * I + j], s);
      out[m * O + o + b] = c10::BFloat16(s);  // round to nearest even
    }
}

// Outputs [o0, o1) for MB rows of x: OB outputs at a time while they last, then one at a time.
template <int MB>
void outputs(const float* x, int64_t I, const uint16_t* w, int64_t ldw, c10::BFloat16* out,
             int64_t O, int64_t o0, int64_t o1) {
  constexpr int OB = MB == 1 ? OB1 : (MB == 2 ? OB2 : OB4);
  int64_t o = o0;
  for (; o + OB <= o1; o += OB) tile<OB, MB>(x, I, w, ldw, out, O, o);
  for (; o < o1; ++o) tile<1, MB>(x, I, w, ldw, out, O, o);
}

void rows(int64_t M, const float* x, int64_t I, const uint16_t* w, int64_t ldw,
          c10::BFloat16* out, int64_t O, int64_t o0, int64_t o1) {
  constexpr int64_t kBlock = 64;  // outputs a block: each row group reads them from cache
  for (int64_t b0 = o0; b0 < o1; b0 += kBlock) {
    const int64_t b1 = std::min(o1, b0 + kBlock);
    for (int64_t m0 = 0; m0 < M; m0 += MG) {
      const float* xm = x + m0 * I;
      c10::BFloat16* om = out + m0 * O;
      const int64_t mb = std::min<int64_t>(MG, M - m0);
      if (mb == 1) outputs<1>(xm, I, w, ldw, om, O, b0, b1);
      else if (mb == 2) outputs<2>(xm, I, w, ldw, om, O, b0, b1);
      else if (mb == 3) outputs<3>(xm, I, w, ldw, om, O, b0, b1);
      else outputs<4>(xm, I, w, ldw, om, O, b0, b1);
    }
  }
}

#endif  // PG_MV_BODY
