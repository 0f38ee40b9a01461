// Weight-only int8 / int4 matrix products for a few activation rows (decoding), on the CPU.
//
// Decoding reads every weight once per token, so its speed is the memory bandwidth divided by
// the bytes per weight -- if the arithmetic keeps up. PyTorch's packed int8 / int4 kernels
// reach about half the bandwidth on a 2-core x86 machine; these loops stream each weight row
// once, widen the codes to float32 in registers and accumulate in float32 for all the rows of
// x at once. Built on first use by cpu_kernels.py with -O3 -march=native.
//
//   int8_matmul(x f32[M, I], q int8[O, I], scale f32[O])              -> f32[M, O]
//       out[m, o] = scale[o] * sum_i x[m, i] * q[o, i]
//   int4_matmul(x f32[M, I], q uint8[O, I/2], scale f32[O, I/g], g)   -> f32[M, O]
//       out[m, o] = sum_i x[m, i] * (code(o, i) - 8) * scale[o, i / g]
//       code(o, 2k) = q[o, k] & 15, code(o, 2k + 1) = q[o, k] >> 4

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int W = 16;  // floats per vector
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm512_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm512_mul_ps(a, b); }
inline vf vset(float s) { return _mm512_set1_ps(s); }
inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
inline vf load_s8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
inline void load_nibbles(const uint8_t* p, vf& lo, vf& hi) {
  __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
  lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(15)));
  hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
}
#elif defined(__AVX2__)
constexpr int W = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf vadd(vf a, vf b) { return _mm256_add_ps(a, b); }
inline vf vmul(vf a, vf b) { return _mm256_mul_ps(a, b); }
inline vf vset(float s) { return _mm256_set1_ps(s); }
inline float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline vf load_s8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
inline void load_nibbles(const uint8_t* p, vf& lo, vf& hi) {
  __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)p));
  lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
  hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
}
#else
constexpr int W = 1;  // portable scalar code
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vload(const float* p) { return *p; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline vf vadd(vf a, vf b) { return a + b; }
inline vf vmul(vf a, vf b) { return a * b; }
inline vf vset(float s) { return s; }
inline float vsum(vf a) { return a; }
inline vf load_s8(const int8_t* p) { return float(*p); }
inline void load_nibbles(const uint8_t* p, vf& lo, vf& hi) {
  lo = float(*p & 15);
  hi = float(*p >> 4);
}
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

// x here is rearranged per 2W-column chunk as [even columns (W), odd columns (W)], so a
// chunk's low nibbles meet the even columns and its high nibbles the odd ones; xsum[m, g] is
// the sum of x over group g (the -8 offset of the codes is applied once per group). The codes
// are scaled before the FMA, so one set of accumulators serves every group: P pairs of them
// (lo, hi) per row of x keep P * 2 FMA chains in flight.
template <int MB>
void int4_block(const float* x, const float* xsum, int64_t I, int64_t group, const uint8_t* q,
                const float* scale, float* out, int64_t O, int64_t o0, int64_t o1) {
  constexpr int P = MB <= 2 ? 2 : 1;
  const int64_t G = I / group;
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = q + o * (I / 2);
    const float* srow = scale + o * G;
    vf acc[2 * P][MB];
    float offset[MB];
    for (int u = 0; u < 2 * P; ++u)
      for (int m = 0; m < MB; ++m) acc[u][m] = vzero();
    for (int m = 0; m < MB; ++m) offset[m] = 0.f;
    for (int64_t g = 0; g < G; ++g) {
      const vf s = vset(srow[g]);
      const int64_t end = (g + 1) * group;
      int64_t i = g * group;
      prefetch(row + i / 2 + kAhead);
      for (; i + 2 * W * P <= end; i += 2 * W * P) {
        for (int u = 0; u < P; ++u) {
          vf lo, hi;
          load_nibbles(row + (i + 2 * W * u) / 2, lo, hi);
          lo = vmul(lo, s);
          hi = vmul(hi, s);
          for (int m = 0; m < MB; ++m) {
            const float* xm = x + m * I + i + 2 * W * u;
            acc[2 * u][m] = vfma(lo, vload(xm), acc[2 * u][m]);
            acc[2 * u + 1][m] = vfma(hi, vload(xm + W), acc[2 * u + 1][m]);
          }
        }
      }
      for (; i < end; i += 2 * W) {  // a group of 2W columns when P is 2
        vf lo, hi;
        load_nibbles(row + i / 2, lo, hi);
        lo = vmul(lo, s);
        hi = vmul(hi, s);
        for (int m = 0; m < MB; ++m) {
          acc[0][m] = vfma(lo, vload(x + m * I + i), acc[0][m]);
          acc[1][m] = vfma(hi, vload(x + m * I + i + W), acc[1][m]);
        }
      }
      for (int m = 0; m < MB; ++m) offset[m] += srow[g] * xsum[m * G + g];
    }
    for (int m = 0; m < MB; ++m) {
      for (int u = 1; u < 2 * P; ++u) acc[0][m] = vadd(acc[0][m], acc[u][m]);
      out[m * O + o] = vsum(acc[0][m]) - 8.f * offset[m];
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

at::Tensor int4_matmul(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& scale_,
                       int64_t group) {
  TORCH_CHECK(x_.dim() == 2 && q_.dim() == 2, "int4_matmul: x and q must be 2-D");
  const int64_t M = x_.size(0), I = x_.size(1), O = q_.size(0);
  TORCH_CHECK(q_.scalar_type() == at::kByte && q_.size(1) * 2 == I, "int4_matmul: q uint8[O, I/2]");
  TORCH_CHECK(group % (2 * W) == 0 && I % group == 0, "int4_matmul: group size");
  TORCH_CHECK(scale_.dim() == 2 && scale_.size(0) == O && scale_.size(1) == I / group,
              "int4_matmul: scale[O, I / group]");
  const int64_t G = I / group;
  const at::Tensor x = x_.to(at::kFloat).contiguous();
  // Even / odd columns of each 2W-column chunk, side by side.
  at::Tensor xr = x.view({M, I / (2 * W), W, 2}).transpose(2, 3).contiguous().view({M, I});
  at::Tensor xsum = x.view({M, G, group}).sum(-1).contiguous();
  const at::Tensor q = q_.contiguous();
  const at::Tensor scale = scale_.to(at::kFloat).contiguous();
  at::Tensor out = at::empty({M, O}, x.options());
  const float* xp = xr.data_ptr<float>();
  const float* xs = xsum.data_ptr<float>();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  float* op = out.data_ptr<float>();
  by_rows(M, [&](int64_t m0, int64_t mb) {
    at::parallel_for(0, O, 64, [&](int64_t o0, int64_t o1) {
      DISPATCH_MB(mb, int4_block<MB>(xp + m0 * I, xs + m0 * G, I, group, qp, sp, op + m0 * O,
                                     O, o0, o1));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(paligemma_cpu, m) {
  m.def("int8_matmul(Tensor x, Tensor q, Tensor scale) -> Tensor", &int8_matmul);
  m.def("int4_matmul(Tensor x, Tensor q, Tensor scale, int group) -> Tensor", &int4_matmul);
}
