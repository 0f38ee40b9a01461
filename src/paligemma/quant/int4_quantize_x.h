// The dot kernels' activation quantiser for one instruction set, included by int4_dot_body.h
// (its L, vi, vf, PG_V, PG_SI, cvt_scales; the scalar build's too). Defines quantize_groups, and
// store_bf16 for the products' bfloat16 output.
//
// Groups [g0, g1) of each row of x [M, I] (contiguous float32, or bfloat16 where bf16; group: a
// multiple of 32 dividing I; group t = m * G + g starts at value t * group): codes
// c = round_half_even(v / s) clamped to [-127, 127] with s = max |v| / 127 (a group holding a
// NaN: s NaN, so its products are NaN as a float product's would be; s = 0 or NaN: codes 0), in
// the same float steps on every path (IEEE division; the clamp as max_ps / min_ps take a NaN
// quotient, to -127; conversion in the default rounding mode): the same bits whatever the
// instruction set or the split over threads.
// The codes go to q in `order` (placed(), int4_dot_common.h): in x's layout (int8 [M, I]), or
// where `tiles` > 0 as AMX's B tiles of a pass of that many rows (dword w of row m at dword
// w * tiles + m); s to s[t], zero * sum(c) to off[t].
//
// The vector loop keeps a group in registers from load to store: one pass for the maximum, one
// for the codes, placed by permutes (and for AMX written straight into the B tiles). Measured
// against the loop before (codes placed one value at a time): int4_dot.cpp's quantize_x.

#if PG_ISA >= 1
PG_INLINE float max_lane(vf v) {
#if PG_ISA == 2
  return _mm512_reduce_max_ps(v);
#else
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
#endif
}

PG_INLINE int32_t sum_lanes(vi v) {
#if PG_ISA == 2
  return _mm512_reduce_add_epi32(v);
#else
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
#endif
}

// All bits set in the lanes that are not a number; whether any lane has a bit set.
PG_INLINE vf unordered(vf a) {
#if PG_ISA == 2
  return _mm512_castsi512_ps(_mm512_movm_epi32(_mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q)));
#else
  return _mm256_cmp_ps(a, a, _CMP_UNORD_Q);
#endif
}
PG_INLINE bool any_lane(vf m) {
#if PG_ISA == 2
  return _mm512_test_epi32_mask(_mm512_castps_si512(m), _mm512_castps_si512(m)) != 0;
#else
  return _mm256_movemask_ps(m) != 0;
#endif
}

// L codes (int32 in [-127, 127]) as L bytes at p.
PG_INLINE void store_codes(int8_t* p, vi c) {
#if PG_ISA == 2
  _mm_storeu_si128((__m128i*)p, _mm512_cvtepi32_epi8(c));
#else
  const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c, c), c);  // lane h: 4 codes x 4
  _mm_storel_epi64((__m128i*)p, _mm_unpacklo_epi32(_mm256_castsi256_si128(b),
                                                   _mm256_extracti128_si256(b, 1)));
#endif
}

// Within each 8 lanes, the even ones then the odd ones (placed's order 1).
PG_INLINE vi evens_first(vi c) {
#if PG_ISA == 2
  return _mm512_permutexvar_epi32(
      _mm512_set_epi32(15, 13, 11, 9, 14, 12, 10, 8, 7, 5, 3, 1, 6, 4, 2, 0), c);
#else
  return _mm256_permutevar8x32_epi32(c, _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0));
#endif
}

// The even lanes of a then b (e), and the odd ones (o).
PG_INLINE void split_pairs(vi a, vi b, vi* e, vi* o) {
#if PG_ISA == 2
  const vi even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  *e = _mm512_permutex2var_epi32(a, even, b);
  *o = _mm512_permutex2var_epi32(a, _mm512_add_epi32(even, _mm512_set1_epi32(1)), b);
#else
  a = evens_first(a), b = evens_first(b);
  *e = _mm256_permute2x128_si256(a, b, 0x20);
  *o = _mm256_permute2x128_si256(a, b, 0x31);
#endif
}

void quantize_groups(const void* x, bool bf16, int64_t I, int64_t group, int32_t zero,
                     int64_t order, int64_t tiles, int64_t M, int64_t g0, int64_t g1, int8_t* q,
                     float* s, int32_t* off) {
  const int size = bf16 ? 2 : 4, stype = bf16 ? 1 : 0;
  const int64_t G = I / group;
  const vf sign = PG_V(set1_ps)(-0.f), lo = PG_V(set1_ps)(-127.f), hi = PG_V(set1_ps)(127.f);
  for (int64_t g = g0; g < g1; ++g)  // a group of all rows at a time: AMX's tiles
    for (int64_t m = 0; m < M; ++m) {  // interleave the rows' words
      const int64_t t = m * G + g, col = g * group;  // group t: row m's inputs [col, col + group)
      // L codes for placed inputs [pos, pos + L) of group t.
      auto put = [&](int64_t pos, vi c) {
        if (!tiles) return store_codes(q + t * group + pos, c);
        alignas(16) int8_t b[16];
        store_codes(b, c);
        int32_t* w = (int32_t*)q + (col + pos) / 4 * tiles + m;
        for (int k = 0; k < L / 4; ++k) std::memcpy(w + k * tiles, b + 4 * k, 4);
      };
      const uint8_t* v = (const uint8_t*)x + t * group * size;
      vf amax = PG_V(setzero_ps)(), nan = PG_V(setzero_ps)();
      for (int64_t i = 0; i < group; i += L) {
        const vf a = PG_V(andnot_ps)(sign, cvt_scales(v + i * size, stype));
        amax = PG_V(max_ps)(amax, a), nan = PG_V(or_ps)(nan, unordered(a));
      }
      const float st = any_lane(nan) ? NAN : max_lane(amax) / 127.f;
      s[t] = st;
      if (!(st > 0.f)) {
        for (int64_t i = 0; i < group; i += L) put(i, PG_SI(setzero)());
        off[t] = 0;
        continue;
      }
      const vf vs = PG_V(set1_ps)(st);
      auto codes = [&](int64_t i) {
        const vf vx = cvt_scales(v + i * size, stype);
        const vf r = PG_V(div_ps)(vx, vs);
        return PG_V(cvtps_epi32)(PG_V(min_ps)(PG_V(max_ps)(r, lo), hi));
      };
      vi total = PG_SI(setzero)();
      for (int64_t i = 0; i < group; i += 2 * L) {  // 2 L inputs: within one chunk of `order`
        vi a = codes(i), b = codes(i + L);
        total = PG_V(add_epi32)(total, PG_V(add_epi32)(a, b));
        if (order == 0 || order == 1) {
          if (order == 1) a = evens_first(a), b = evens_first(b);
          put(i, a);
          put(i + L, b);
        } else {  // order kc: within the chunk from c, evens from c, odds from c + kc / 2
          const int64_t c = i - i % order, p = i % order;
          vi e, o;
          split_pairs(a, b, &e, &o);
          put(c + p / 2, e);
          put(c + order / 2 + p / 2, o);
        }
      }
      off[t] = zero * sum_lanes(total);
    }
}
#define PG_BF16_ISA PG_ISA
#include "bf16_round.h"
// n floats to bfloat16 (c10's rounding: to nearest even, NaN -> 0x7fc0), for the dots' output.
void store_bf16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const vi r = bf16_lanes(PG_V(loadu_ps)(src + i));
#if PG_ISA == 2
    _mm256_storeu_si256((__m256i*)(dst + i), _mm512_cvtepi32_epi16(r));
#else
    _mm_storeu_si128((__m128i*)(dst + i),
                     _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
#endif
  }
  for (; i < n; ++i) dst[i] = c10::BFloat16(src[i]).x;
}
#else
void store_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::BFloat16(src[i]).x;
}

void quantize_groups(const void* x, bool bf16, int64_t I, int64_t group, int32_t zero,
                     int64_t order, int64_t tiles, int64_t M, int64_t g0, int64_t g1, int8_t* q,
                     float* s, int32_t* off) {
  std::vector<float> v(group);
  for (int64_t t0 = 0; t0 < M * (g1 - g0); ++t0) {
    const int64_t t = t0 / (g1 - g0) * (I / group) + g0 + t0 % (g1 - g0);
    for (int64_t i = 0; i < group; ++i)
      v[i] = bf16 ? float(static_cast<const c10::BFloat16*>(x)[t * group + i])
                  : static_cast<const float*>(x)[t * group + i];
    float amax = 0.f;
    bool nan = false;
    for (int64_t i = 0; i < group; ++i) amax = std::max(amax, std::abs(v[i])), nan |= v[i] != v[i];
    const float st = nan ? NAN : amax / 127.f;
    int32_t sum = 0;
    for (int64_t i = 0; i < group; ++i) {
      float r = v[i] / st;
      r = r > -127.f ? r : -127.f, r = r < 127.f ? r : 127.f;  // as the vector paths clamp
      const int32_t c = st > 0.f ? int32_t(std::nearbyint(r)) : 0;
      const int64_t at = t * group + placed(i, order), m = at / I, j = at % I;
      q[tiles ? (j / 4 * tiles + m) * 4 + j % 4 : at] = int8_t(c);
      sum += c;
    }
    s[t] = st;
    off[t] = zero * sum;
  }
}
#endif
