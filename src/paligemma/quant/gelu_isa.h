// The tanh GELU's float32 steps (gelu.cpp's head says how, and why they give the correctly
// rounded GELU), shared by gelu.cpp's op and dequant.cpp's fused GeGLU (bf16_geglu).
// Without PG_GELU_ISA: the common part, once (namespace pg_gelu: the constants, the scalar
// gelu1 and run1). With PG_GELU_ISA 2 (AVX-512) or 1 (AVX2 + FMA): one instruction set's vector
// loop (gelu, load, store, run), included inside a namespace of its own under that set's
// target options. (Only the common part has an include guard.)

#ifndef PG_GELU_ISA
#ifndef PG_GELU_COMMON
#define PG_GELU_COMMON
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace pg_gelu {
constexpr float kC0 = -1.5957691216057308f;  // -2 sqrt(2 / pi): t = -2 u = x (c0 + c1 x^2)
constexpr float kC1 = -0.07135481627159894f;  // -2 sqrt(2 / pi) 0.044715
constexpr float kLog2e = 1.4426950408889634f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kLo = -87.f, kHi = 88.f, kOver = 88.72283935546875f;
constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// PyTorch's own conversions: round to nearest even, NaN -> quiet NaN 0x7fc0.
inline uint16_t to_bf16(float f) { return c10::detail::round_to_nearest_even(f); }
inline float from_bf16(uint16_t h) { return c10::detail::f32_from_bits(h); }

// gelu of one float32 value: the vector paths' steps (gelu in the body below), one at a time.
inline float gelu1(float x) {
  const float t = x * std::fma(kC1, x * x, kC0);  // -2 u
  const float tc = std::min(std::max(t, kLo), kHi);
  const float n = std::nearbyint(tc * kLog2e);
  float r = std::fma(n, -kLn2Hi, tc);
  r = std::fma(n, -kLn2Lo, r);
  float p = kP[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, kP[i]);
  p = std::fma(p, r * r, r + 1.f);  // exp(r)
  const uint32_t b = uint32_t(int32_t(n) + 127) << 23;
  float s;
  std::memcpy(&s, &b, 4);
  const float e = t > kOver ? INFINITY : p * s;  // exp(t)
  return x / (1.f + e);
}

// n values at x in place, one at a time (gelu, rounded; given up, times up, rounded again).
inline void run1(uint16_t* x, const uint16_t* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gelu1(from_bf16(x[i]));
    x[i] = to_bf16(up ? from_bf16(to_bf16(g)) * from_bf16(up[i]) : g);
  }
}
}  // namespace pg_gelu
#endif  // PG_GELU_COMMON

#else  // PG_GELU_ISA: one instruction set's loop (2 or 1; the scalar one is run1)

using namespace pg_gelu;

#if PG_GELU_ISA == 2
constexpr int W = 16;
using vf = __m512;
using vi = __m512i;
#define PG_V(op) _mm512_##op
#define PG_AS_PS _mm512_castsi512_ps
inline vf rint(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf where_gt(vf a, float b, vf then, vf other) {  // then where a > b (ordered), else other
  return _mm512_mask_mov_ps(other, _mm512_cmp_ps_mask(a, _mm512_set1_ps(b), _CMP_GT_OQ), then);
}
inline vi load_u16(const uint16_t* p) { return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)); }
inline void store_u16(uint16_t* p, vi r) { _mm256_storeu_si256((__m256i*)p, _mm512_cvtepi32_epi16(r)); }
#elif PG_GELU_ISA == 1
constexpr int W = 8;
using vf = __m256;
using vi = __m256i;
#define PG_V(op) _mm256_##op
#define PG_AS_PS _mm256_castsi256_ps
inline vf rint(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline vf where_gt(vf a, float b, vf then, vf other) {
  return _mm256_blendv_ps(other, then, _mm256_cmp_ps(a, _mm256_set1_ps(b), _CMP_GT_OQ));
}
inline vi load_u16(const uint16_t* p) { return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)); }
inline void store_u16(uint16_t* p, vi r) {  // 8 dwords (each < 65536) to 8 words
  const __m256i w = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // pack per lane, join
  _mm_storeu_si128((__m128i*)p, _mm256_castsi256_si128(w));
}
#endif
#define PG_BF16_ISA PG_GELU_ISA
#include "bf16_round.h"

inline vf set(float a) { return PG_V(set1_ps)(a); }
inline vi seti(int32_t a) { return PG_V(set1_epi32)(a); }
inline vf fma(vf a, vf b, vf c) { return PG_V(fmadd_ps)(a, b, c); }
inline vf mul(vf a, vf b) { return PG_V(mul_ps)(a, b); }
inline vf add(vf a, vf b) { return PG_V(add_ps)(a, b); }
inline vf div(vf a, vf b) { return PG_V(div_ps)(a, b); }
inline vf clamp(vf a, float lo, float hi) { return PG_V(min_ps)(PG_V(max_ps)(a, set(lo)), set(hi)); }
inline vf pow2(vf n) {  // 2^n for integral n in [-126, 127]
  return PG_AS_PS(PG_V(slli_epi32)(PG_V(add_epi32)(PG_V(cvtps_epi32)(n), seti(127)), 23));
}
inline vf over(vf t, vf e) { return where_gt(t, kOver, set(INFINITY), e); }  // +inf past kOver
inline vf load(const uint16_t* p) { return PG_AS_PS(PG_V(slli_epi32)(load_u16(p), 16)); }
inline void store(uint16_t* p, vf f) { store_u16(p, bf16_lanes(f)); }  // nearest even, NaN 0x7fc0

// gelu of W values (float32), as the file's head says.
inline vf gelu(vf x) {
  const vf t = mul(x, fma(set(kC1), mul(x, x), set(kC0)));  // -2 u
  const vf tc = clamp(t, kLo, kHi);
  const vf n = rint(mul(tc, set(kLog2e)));
  vf r = fma(n, set(-kLn2Hi), tc);
  r = fma(n, set(-kLn2Lo), r);
  vf p = set(kP[0]);
  for (int i = 1; i < 6; ++i) p = fma(p, r, set(kP[i]));
  p = fma(p, mul(r, r), add(r, set(1.f)));  // exp(r)
  const vf e = over(t, mul(p, pow2(n)));     // exp(t)
  return div(x, add(set(1.f), e));
}

// n values at x in place (gelu, rounded; given up, times up, rounded again).
inline void run(uint16_t* x, const uint16_t* up, int64_t n) {
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    vf g = gelu(load(x + i));
    if (up) {
      store(x + i, g);
      g = mul(load(x + i), load(up + i));
    }
    store(x + i, g);
  }
  pg_gelu::run1(x + i, up ? up + i : nullptr, n - i);  // the tail
}

#undef PG_V
#undef PG_AS_PS

#endif  // PG_GELU_ISA
