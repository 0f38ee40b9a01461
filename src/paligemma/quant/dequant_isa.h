// Vector helpers of dequant.cpp and quantize.cpp for one instruction set (PG_DQ_ISA 2 AVX-512,
// 1 AVX2, 0 none: W = 1, scalar code only); included by their per-ISA sections (dequant_rows.h,
// PG_QZ_BODY), inside the section's namespace.
#if PG_DQ_ISA >= 1
#define PG_BF16_ISA PG_DQ_ISA
#include "bf16_round.h"  // round_bf16: the float32 bits rounded at bit 16 (put's rounding)
#endif
#if PG_DQ_ISA == 2
constexpr int W = 16;  // floats per vector
using vf = __m512;
inline vf vset(float a) { return _mm512_set1_ps(a); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vsub8(vf a) { return _mm512_sub_ps(a, _mm512_set1_ps(8.f)); }
inline vf from_s8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
inline vf from_u8(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vload(const c10::BFloat16* p) {
  const __m256i h = _mm256_loadu_si256((const __m256i*)p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline vf vabs(vf a) { return _mm512_abs_ps(a); }
inline vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
inline float vhmax(vf a) { return _mm512_reduce_max_ps(a); }
inline vf vdiv(vf a, vf b) { return _mm512_div_ps(a, b); }
inline vf vround(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline void vstore_i32(int32_t* p, vf a) { _mm512_storeu_si512(p, _mm512_cvtps_epi32(a)); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm512_sub_ps(a, b); }
inline void vstore(float* p, vf a) { _mm512_storeu_ps(p, a); }
inline vf vclamp4(vf a) { return vmin(vmax(a, vset(-8.f)), vset(7.f)); }
inline float halves4(__m128 x) {  // x[0:2] + x[2:4], then the two lanes
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(x) + _mm_cvtss_f32(_mm_shuffle_ps(x, x, 1));
}
// the W lanes summed in halves: lanes [0, W/2) + [W/2, W), and so on down to one
inline float vhalves(vf a) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
  return halves4(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
// W int4 values (whole floats -8..7) -> W / 2 bytes, value + 8, low nibble first
inline void pack_nibbles(vf c, uint8_t* out) {
  const __m512i i = _mm512_add_epi32(_mm512_cvtps_epi32(c), _mm512_set1_epi32(8));
  const __m512i t = _mm512_or_si512(i, _mm512_srli_epi64(i, 28));  // byte 0 of each pair
  _mm_storel_epi64((__m128i*)out, _mm512_cvtepi64_epi8(t));
}
// 32 codes in order (two 16-byte halves) -> 32 / W float vectors
inline void widen32(const __m128i* c, vf* w) { w[0] = from_u8(c[0]), w[1] = from_u8(c[1]); }
inline void put(void* dst, int64_t i, vf f, bool round, bool out_bf16) {
  if (out_bf16) {
    const __m256i h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_bf16(f), 16));
    _mm256_storeu_si256((__m256i*)(static_cast<uint16_t*>(dst) + i), h);
  } else {
    if (round) f = _mm512_castsi512_ps(_mm512_and_si512(round_bf16(f), _mm512_set1_epi32(-65536)));
    _mm512_storeu_ps(static_cast<float*>(dst) + i, f);
  }
}
#elif PG_DQ_ISA == 1
constexpr int W = 8;
using vf = __m256;
inline vf vset(float a) { return _mm256_set1_ps(a); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vsub8(vf a) { return _mm256_sub_ps(a, _mm256_set1_ps(8.f)); }
inline vf from_s8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
inline vf from_u8(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vload(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128((const __m128i*)p);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline vf vabs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), a); }
inline vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
inline vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
inline float vhmax(vf a) {
  alignas(32) float t[8];
  _mm256_store_ps(t, a);
  return *std::max_element(t, t + 8);
}
inline vf vdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
inline vf vround(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline void vstore_i32(int32_t* p, vf a) { _mm256_storeu_si256((__m256i*)p, _mm256_cvtps_epi32(a)); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vsub(vf a, vf b) { return _mm256_sub_ps(a, b); }
inline void vstore(float* p, vf a) { _mm256_storeu_ps(p, a); }
inline vf vclamp4(vf a) { return vmin(vmax(a, vset(-8.f)), vset(7.f)); }
inline float halves4(__m128 x) {
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(x) + _mm_cvtss_f32(_mm_shuffle_ps(x, x, 1));
}
inline float vhalves(vf a) {
  return halves4(_mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)));
}
inline void pack_nibbles(vf c, uint8_t* out) {
  const __m256i i = _mm256_add_epi32(_mm256_cvtps_epi32(c), _mm256_set1_epi32(8));
  const __m256i t = _mm256_or_si256(i, _mm256_srli_epi64(i, 28));  // bytes 0, 8 of each half
  const __m128i lo = _mm256_castsi256_si128(t), hi = _mm256_extracti128_si256(t, 1);
  const __m128i pick = _mm_setr_epi8(0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const int32_t b = _mm_cvtsi128_si32(_mm_unpacklo_epi16(_mm_shuffle_epi8(lo, pick), _mm_shuffle_epi8(hi, pick)));
  std::memcpy(out, &b, 4);
}
inline void widen32(const __m128i* c, vf* w) {
  w[0] = from_u8(c[0]), w[1] = from_u8(_mm_srli_si128(c[0], 8));
  w[2] = from_u8(c[1]), w[3] = from_u8(_mm_srli_si128(c[1], 8));
}
inline void put(void* dst, int64_t i, vf f, bool round, bool out_bf16) {
  if (out_bf16) {
    const __m256i h = _mm256_srli_epi32(round_bf16(f), 16);  // 8 values < 2^16 in 32-bit lanes
    const __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    _mm_storeu_si128((__m128i*)(static_cast<uint16_t*>(dst) + i), p);
  } else {
    if (round) f = _mm256_castsi256_ps(_mm256_and_si256(round_bf16(f), _mm256_set1_epi32(-65536)));
    _mm256_storeu_ps(static_cast<float*>(dst) + i, f);
  }
}
#else
constexpr int W = 1;  // portable scalar code
#endif
