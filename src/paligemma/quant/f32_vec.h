// float32 vectors of one instruction set, for the float loops of kernels.cpp and bf16_mv.cpp:
// W lanes, the type vf and vzero, vset, vload, vfma (a * b + c), vadd, vsum (the lanes' sum).
// Included inside a namespace of its own under that set's target options, after defining
// PG_VEC_ISA: 2 AVX-512, 1 AVX2 + FMA, 0 portable scalar code (one lane). (No include guard:
// once per namespace.)

#if PG_VEC_ISA == 2
constexpr int W = 16;
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vset(float a) { return _mm512_set1_ps(a); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
#elif PG_VEC_ISA == 1
constexpr int W = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vset(float a) { return _mm256_set1_ps(a); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
constexpr int W = 1;
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vset(float a) { return a; }
inline vf vload(const float* p) { return *p; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
inline float vsum(vf a) { return a; }
#endif
