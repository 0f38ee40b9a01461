// dequant.cpp's row loops for one instruction set (PG_DQ_ISA 2, 1 or 0), included by its
// per-ISA sections inside that set's namespace, under its target options; with them our float32
// GEMM (f32_gemm.h) on the vector paths. Reads dequant.cpp's Job, put1 and scale_of.
// (No include guard: included on purpose several times.)
#include "dequant_isa.h"  // vf, W and the vector helpers of this path

// int8 row r: code * scale[r]
template <bool RD, bool B16>
inline void int8_row(const Job& j, int64_t r, void* dst) {
  const int8_t* q = static_cast<const int8_t*>(j.q) + r * j.I;
  const float s = scale_of(j.scale, j.scale_bf16, r);
  int64_t i = 0;
#if PG_DQ_ISA > 0
  const vf vs = vset(s);
#pragma GCC unroll 4
  for (; i + W <= j.I; i += W) put(dst, i, vmul(from_s8(q + i), vs), RD, B16);
#endif
  for (; i < j.I; ++i) put1(dst, i, float(q[i]) * s, RD, B16);
}

// int4 row r: (nibble - 8) * scale[r, i / group], 32 codes (16 bytes) at a time
template <bool RD, bool B16>
inline void int4_row(const Job& j, int64_t r, void* dst) {
  const uint8_t* q = static_cast<const uint8_t*>(j.q) + r * (j.I / 2);
  const int64_t G = j.I / j.group;
  for (int64_t g = 0; g < G; ++g) {
    const float s = scale_of(j.scale, j.scale_bf16, r * G + g);
    int64_t i = g * j.group;
    const int64_t end = i + j.group;
#if PG_DQ_ISA > 0
    const vf vs = vset(s);
    for (; j.group % 32 == 0 && i < end; i += 32) {
      const __m128i b = _mm_loadu_si128((const __m128i*)(q + i / 2)), mask = _mm_set1_epi8(15);
      const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
      const __m128i c[2] = {_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)};  // in order
      vf w[32 / W];
      widen32(c, w);
      for (int k = 0; k < 32 / W; ++k) put(dst, i + k * W, vmul(vsub8(w[k]), vs), RD, B16);
    }
#endif
    for (; i < end; ++i) {
      const int code = i % 2 ? q[i / 2] >> 4 : q[i / 2] & 15;
      put1(dst, i, float(code - 8) * s, RD, B16);
    }
  }
}

// bfloat16 row r as it is (bits 16: f32_mm's weight widened to float32)
template <bool B16>
inline void bf16_row(const Job& j, int64_t r, void* dst) {
  const c10::BFloat16* w = static_cast<const c10::BFloat16*>(j.q) + r * j.I;
  int64_t i = 0;
#if PG_DQ_ISA > 0
#pragma GCC unroll 4
  for (; i + W <= j.I; i += W) put(dst, i, vload(w + i), false, B16);
#endif
  for (; i < j.I; ++i) put1(dst, i, float(w[i]), false, B16);
}

// (RD: round to bfloat16; B16: bfloat16 out), known at compile time
template <bool RD, bool B16>
void rows_as(const Job& j, int64_t a, int64_t b) {
  for (int64_t r = a; r < b; ++r) {
    void* dst = static_cast<char*>(j.dst) + (r - j.r0) * j.I * (B16 ? 2 : 4);
    if (j.bits == 16) bf16_row<B16>(j, r, dst);
    else if (j.bits == 8) int8_row<RD, B16>(j, r, dst);
    else int4_row<RD, B16>(j, r, dst);
  }
}

void rows(const Job& j, int64_t a, int64_t b) {
  if (j.out_bf16) return j.round ? rows_as<true, true>(j, a, b) : rows_as<false, true>(j, a, b);
  j.round ? rows_as<true, false>(j, a, b) : rows_as<false, false>(j, a, b);
}

#if PG_DQ_ISA >= 1
#include "f32_gemm.h"  // our float32 GEMM (f32=1 and f32_mm on AVX2 / AVX-512 paths)
#endif

