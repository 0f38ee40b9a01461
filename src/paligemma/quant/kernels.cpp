// Weight-only int8 matrix product for a few activation rows (decoding), on the CPU.
//
// Decoding reads every weight once per token, so its speed is the memory bandwidth divided by
// the bytes per weight -- if the arithmetic keeps up. PyTorch's packed int8 / int4 kernels
// reach about half the bandwidth on a 2-core x86 machine; this loop streams each weight row
// once (prefetching ahead), widens the codes to float32 in registers and accumulates in float32
// for all the rows of x at once. Built on first use by cpu_kernels.py with -O3 -march=native.
// (An int4 version of the same loop, float or bfloat16 dot products, was slower than PyTorch's
// packed int4 kernel on our machine -- 6.5-7.9 vs 9.5 GB/s -- so int4 uses PyTorch's.)
//
//   int8_matmul(x f32[M, I], q int8[O, I], scale f32[O])   -> f32[M, O]
//       out[m, o] = scale[o] * sum_i x[m, i] * q[o, i]

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

// AVX-512, else AVX2, else scalar code; the fallbacks were checked against float64 on an
// AVX-512 machine by building with -mno-avx512f, and with -mno-avx512f -mno-avx2 -mno-fma.
#if defined(__AVX512F__)
constexpr int W = 16;  // floats per vector
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
inline vf load_s8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
#elif defined(__AVX2__)
constexpr int W = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf load_s8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
#else
constexpr int W = 1;  // portable scalar code
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vload(const float* p) { return *p; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
inline float vsum(vf a) { return a; }
inline vf load_s8(const int8_t* p) { return float(*p); }
#endif

constexpr int64_t kMaxRows = 8;  // rows of x per pass over the weights
#ifndef PG_AHEAD
#define PG_AHEAD 8192
#endif
constexpr int64_t kAhead = PG_AHEAD;  // bytes of weights requested ahead of use

inline void prefetch(const void* p) {
#if defined(__AVX2__) || defined(__AVX512F__)
  _mm_prefetch((const char*)p, _MM_HINT_T0);
#else
  (void)p;
#endif
}

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
      prefetch(row + i + kAhead);
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

at::Tensor int8_matmul(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& scale_) {
  TORCH_CHECK(x_.dim() == 2 && q_.dim() == 2 && x_.size(1) == q_.size(1), "int8_matmul: shapes");
  TORCH_CHECK(q_.scalar_type() == at::kChar, "int8_matmul: q must be int8");
  TORCH_CHECK(scale_.numel() == q_.size(0), "int8_matmul: one scale per output row");
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
    at::parallel_for(0, O, 64, [&](int64_t o0, int64_t o1) {
      DISPATCH_MB(mb, int8_block<MB>(xp + m0 * I, I, qp, sp, op + m0 * O, O, o0, o1));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(paligemma_cpu, m) {
  m.def("int8_matmul(Tensor x, Tensor q, Tensor scale) -> Tensor", &int8_matmul);
}
