// decode_ops.cpp's one-query attention loops in AVX-512 (isa 2; heads of a multiple of 16
// values): the AVX2 loops' work in 16-float vectors. Included by decode_ops.cpp after its AVX2
// section, inside namespace pg_ops (no include guard: part of that file; its PG_OPS_BY_HEADS).
//
// The values keep the AVX2 loop's sums (each output value sums its keys in order with one FMA
// each), so they equal it bit for bit given the same probabilities; the scores sum a key's 16
// lanes in another order than the AVX2 loop's 8 (float32 sums either way, bounded against
// float64 in tests/test_decode_ops.py). PaliGemma-3B's shapes (8 heads of 256, one kv head, 280
// keys, 18 layers from memory, 2 threads of an AMX Xeon; benchmarks/bench_attend.py): batch 8
// 4.77 ms a step against the AVX2 loops' 5.52 ms, batch 1 0.64 against 0.72 ms; the rest is
// reading the cache.

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#define PG_OPS_INLINE inline __attribute__((always_inline))
namespace {

inline __m512 load16(const uint16_t* p) {  // 16 bfloat16 -> float32
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}

// Scores of C keys from idx[i] on (independent FMA chains; q's vectors read once for all C).
template <int J, int C>
PG_OPS_INLINE void keys_avx512(const Heads& a, int64_t i, float* out) {
  const int64_t h = a.h, n = a.n;
  const uint16_t* k[C];
  __m512 acc[C][J];
  for (int c = 0; c < C; ++c) {
    k[c] = a.k + a.idx[i + c] * a.stride;
    for (int j = 0; j < J; ++j) acc[c][j] = _mm512_setzero_ps();
  }
  for (int64_t d = 0; d < h; d += 16) {
    __m512 kv[C];
    for (int c = 0; c < C; ++c) kv[c] = load16(k[c] + d);
    for (int j = 0; j < J; ++j) {
      const __m512 qv = _mm512_loadu_ps(a.q + j * h + d);
      for (int c = 0; c < C; ++c) acc[c][j] = _mm512_fmadd_ps(qv, kv[c], acc[c][j]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) out[j * n + i + c] = _mm512_reduce_add_ps(acc[c][j]);
}

template <int J>
void scores_avx512(const Heads& a, float* out) {
  int64_t i = 0;
  for (; i + 2 <= a.n; i += 2) keys_avx512<J, 2>(a, i, out);
  if (i < a.n) keys_avx512<J, 1>(a, i, out);
}

// Values' C vectors from d on: each key's row read once for C x 16 values of J heads.
template <int J, int C>
PG_OPS_INLINE void columns_avx512(const Heads& a, const float* p, const float* inv, int64_t d,
                                  uint16_t* out) {
  const int64_t n = a.n, stride = a.stride;
  __m512 acc[C][J];
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) acc[c][j] = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* vr = a.v + a.idx[i] * stride + d;
    __m512 pv[J];
    for (int j = 0; j < J; ++j) pv[j] = _mm512_set1_ps(p[j * n + i]);
    for (int c = 0; c < C; ++c) {
      const __m512 vv = load16(vr + 16 * c);
      for (int j = 0; j < J; ++j) acc[c][j] = _mm512_fmadd_ps(pv[j], vv, acc[c][j]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < J; ++j) {
      alignas(64) float f[16];
      _mm512_store_ps(f, _mm512_mul_ps(acc[c][j], _mm512_set1_ps(inv[j])));
      for (int e = 0; e < 16; ++e) out[j * a.h + d + 16 * c + e] = to_bf(f[e]);
    }
}

template <int J>
void values_avx512(const Heads& a, const float* p, const float* inv, uint16_t* out) {
  constexpr int C = 4;  // 4 J accumulators, J probabilities and 4 values in 32 registers
  int64_t d = 0;
  for (; d + 16 * C <= a.h; d += 16 * C) columns_avx512<J, C>(a, p, inv, d, out);
  for (; d < a.h; d += 16) columns_avx512<J, 1>(a, p, inv, d, out);
}

void scores_avx512(const Heads& a, float* s) { PG_OPS_BY_HEADS(a.j, scores_avx512<J>(a, s)); }

void values_avx512(const Heads& a, const float* p, const float* inv, uint16_t* out) {
  PG_OPS_BY_HEADS(a.j, values_avx512<J>(a, p, inv, out));
}

}  // namespace
#undef PG_OPS_INLINE
#pragma GCC pop_options
