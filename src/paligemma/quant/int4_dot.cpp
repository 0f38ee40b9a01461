// int4 (and int8) weights times int8 activations with integer dot products, for 1..16 rows of x
// (decoding, beams, the serving engine's batches), on the CPU. Built with kernels.cpp into one
// library.
//
// kernels.cpp's int4 loop widens every code to float and is compute-bound (~14 GB/s on 2 cores
// where int8 streams ~50). Here the activations are quantised per (row, group) to int8 (symmetric,
// dynamic) and each weight code meets its activation in an integer dot product: AVX-512-VNNI
// vpdpbusd, AVX-VNNI on AVX2 hosts that have it, maddubs + madd on plain AVX2 / AVX-512, or a
// scalar loop. Sums stay int32 within a group; each group is then scaled in float32.
//
// Layout ("tiles"; tiles.py packs it from linear.py's portable one): 16 output rows per tile, the
// tile's bytes in blocks of 64 = 16 outputs x 8 inputs. In block b of tile t, byte 4l + k holds
//     low nibble:  code[16t + l, 8b + k],    high nibble: code[16t + l, 8b + 4 + k]    (k < 4)
// (codes 0..15 for -8..7), so one 512-bit load is 16 output lanes of 4 + 4 inputs, the shape of
// vpdpbusd (u8 x s8, 4 products per 32-bit lane); AVX2 takes the block's two halves in turn.
//
//   int4_dot(x f32|bf16[M, I], tiles uint8[T, I/8, 64], scale bf16[T, G, 16], group, O,
//            isa=-1, vnni=-1) -> f32[M, O]          (T = ceil(O / 16), G = I / group)
//       out[m, o] = sum_g scale[o, g] * xs[m, g] * sum_{i in g} (code[o, i] - 8) * xq[m, i]
//       xs[m, g] = max_{i in g} |x[m, i]| / 127,  xq[m, i] = round_half_even(x[m, i] / xs[m, g])
//   int8_dot(x, tiles uint8[T, I/4, 64], scale f32[T, 16], group, O, isa=-1, vnni=-1) -> f32[M, O]
//       the same for int8 weights (one scale per output row; `group`: the activations' groups):
//       block b of tile t holds code[16t + l, 4b + k] + 128 at byte 4l + k
//   cpu_vnni() -> int: 1 when this CPU has AVX-VNNI, 2 AVX-512-VNNI, 3 both, 0 neither
// isa: as kernels.cpp (2 AVX-512, 1 AVX2, 0 scalar); vnni: 1 / 0 forces the dot product with /
// without VNNI (for tests and comparisons), -1 the CPU's.

#ifndef PG_DOT_BODY
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define PG_DOT_X86 1
#endif

int64_t pg_cpu_isa();  // kernels.cpp: the best instruction set of kernels.cpp's three

namespace {

constexpr int64_t kDotRows = 16;     // rows of x per pass over the weights
constexpr int64_t kDotAhead = 4096;  // bytes of weights requested ahead of use

// What one call reads: x quantised (xq as 4-byte words), its scales and sums, the weights.
struct Dot {
  const int32_t* x4;   // [M, I / 4]: 4 int8 activations per word
  const float* xs;     // [M, G] activation scales
  const int32_t* off;  // [M, G]: 8 * sum of the group's xq (the codes' offset of 8)
  const uint8_t* q;    // tiles [T, I / 8, 64]
  const c10::BFloat16* s;  // int4: [T, G, 16]
  const float* rs;         // int8: [T, 16], one scale per output row
  int64_t I, G, group, O;
  float* out;  // [M, O]
};

#define DOT_DISPATCH(mb, CALL)                                 \
  switch (mb) {                                                \
    case 1: { constexpr int MB = 1; CALL; } break;             \
    case 2: { constexpr int MB = 2; CALL; } break;             \
    case 3: { constexpr int MB = 3; CALL; } break;             \
    case 4: { constexpr int MB = 4; CALL; } break;             \
    case 6: { constexpr int MB = 6; CALL; } break;             \
    case 8: { constexpr int MB = 8; CALL; } break;             \
    case 12: { constexpr int MB = 12; CALL; } break;           \
    default: { constexpr int MB = 16; CALL; } break;           \
  }

// The rows a pass computes: mb rounded up to an instantiated width (padded rows are zeros).
int64_t padded_rows(int64_t mb) {
  for (int64_t w : {1, 2, 3, 4, 6, 8, 12}) if (mb <= w) return w;
  return 16;
}

}  // namespace

#define PG_DOT_BODY 1
#ifdef PG_DOT_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
namespace pg_dot_avx512vnni {
#define PG_ISA 2
#define PG_VNNI 1
#include __FILE__
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avx512vnni
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
namespace pg_dot_avx512 {
#define PG_ISA 2
#define PG_VNNI 0
#include __FILE__
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avxvnni")
namespace pg_dot_avxvnni {
#define PG_ISA 1
#define PG_VNNI 1
#include __FILE__
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avxvnni
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace pg_dot_avx2 {
#define PG_ISA 1
#define PG_VNNI 0
#include __FILE__
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avx2
#pragma GCC pop_options
#endif
namespace pg_dot_scalar {
#define PG_ISA 0
#define PG_VNNI 0
#include __FILE__
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_scalar
#undef PG_DOT_BODY

namespace {

int64_t cpu_vnni() {
#ifdef PG_DOT_X86
  __builtin_cpu_init();
  return (__builtin_cpu_supports("avxvnni") ? 1 : 0) |
         (__builtin_cpu_supports("avx512vnni") ? 2 : 0);
#else
  return 0;
#endif
}

// x [M, I] -> xq (as words), xs, off for rows [0, M) of a pass of `rows` (rows >= M: zeros).
// off = zero * sum(xq): the codes' offset (8 for int4, 128 for int8) times the activations.
void quantize_x(const at::Tensor& x, int64_t rows, int64_t group, int32_t zero, at::Tensor& xq,
                at::Tensor& xs, at::Tensor& off) {
  const int64_t M = x.size(0), I = x.size(1), G = I / group;
  xq = at::zeros({rows, I}, x.options().dtype(at::kChar));
  xs = at::zeros({rows, G}, x.options().dtype(at::kFloat));
  off = at::zeros({rows, G}, x.options().dtype(at::kInt));
  const float* xp = x.data_ptr<float>();
  int8_t* qp = xq.data_ptr<int8_t>();
  float* sp = xs.data_ptr<float>();
  int32_t* op = off.data_ptr<int32_t>();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t g = 0; g < G; ++g) {
      const float* v = xp + m * I + g * group;
      float amax = 0.f;
      for (int64_t i = 0; i < group; ++i) amax = std::max(amax, std::abs(v[i]));
      const float s = amax / 127.f;
      int32_t sum = 0;
      for (int64_t i = 0; s > 0.f && i < group; ++i) {
        const float c = std::min(std::max(std::nearbyint(v[i] / s), -127.f), 127.f);
        qp[m * I + g * group + i] = int8_t(c), sum += int32_t(c);
      }
      sp[m * G + g] = s, op[m * G + g] = zero * sum;
    }
  }
}

void dot_rows(int64_t isa, bool vnni, int64_t mb, int bits, const Dot& d, int64_t t0,
              int64_t t1) {
#ifdef PG_DOT_X86
  if (isa == 2 && vnni) return pg_dot_avx512vnni::dot_tiles(mb, bits, d, t0, t1);
  if (isa == 2) return pg_dot_avx512::dot_tiles(mb, bits, d, t0, t1);
  if (isa == 1 && vnni) return pg_dot_avxvnni::dot_tiles(mb, bits, d, t0, t1);
  if (isa == 1) return pg_dot_avx2::dot_tiles(mb, bits, d, t0, t1);
#endif
  pg_dot_scalar::dot_tiles(mb, bits, d, t0, t1);
}

at::Tensor dot(const at::Tensor& x_, const at::Tensor& tiles_, const at::Tensor& scale_,
               int64_t group, int64_t O, int64_t isa, int64_t vnni, int bits) {
  const int64_t I = x_.size(-1), T = (O + 15) / 16, per_block = bits == 4 ? 8 : 4;
  TORCH_CHECK(x_.dim() == 2 && tiles_.dim() == 3 && tiles_.size(0) == T &&
                  tiles_.size(1) * per_block == I && tiles_.size(2) == 64,
              "int", bits, "_dot: tiles must be uint8[ceil(O/16), I/", per_block, ", 64]");
  TORCH_CHECK(tiles_.scalar_type() == at::kByte, "int", bits, "_dot: tiles must be uint8");
  TORCH_CHECK(group > 0 && group % 32 == 0 && I % group == 0,
              "int", bits, "_dot: the group size must be a multiple of 32 dividing in_features");
  TORCH_CHECK(bits == 8 || (scale_.dim() == 3 && scale_.size(0) == T &&
                            scale_.size(1) == I / group && scale_.size(2) == 16 &&
                            scale_.scalar_type() == at::kBFloat16),
              "int4_dot: scale must be bfloat16[ceil(O/16), I/group, 16]");
  TORCH_CHECK(bits == 4 || (scale_.dim() == 2 && scale_.size(0) == T && scale_.size(1) == 16 &&
                            scale_.scalar_type() == at::kFloat),
              "int8_dot: scale must be float32[ceil(O/16), 16]");
  const int64_t best = pg_cpu_isa(), has = cpu_vnni();
  TORCH_CHECK(isa <= best, "paligemma_cpu: this CPU has no path ", isa, " (best: ", best, ")");
  isa = isa < 0 ? best : isa;
  const bool can = (isa == 2 && (has & 2)) || (isa == 1 && (has & 1));
  TORCH_CHECK(vnni <= 0 || can, "paligemma_cpu: this CPU has no VNNI for path ", isa);
  const bool use_vnni = vnni < 0 ? can : vnni == 1;
  const at::Tensor x = x_.to(at::kFloat).contiguous();
  const at::Tensor tiles = tiles_.contiguous(), scale = scale_.contiguous();
  const int64_t M = x.size(0), G = I / group;
  at::Tensor out = at::empty({M, O}, x.options());
  for (int64_t m0 = 0; m0 < M; m0 += kDotRows) {
    const int64_t mb = std::min(kDotRows, M - m0), rows = padded_rows(mb);
    at::Tensor xq, xs, off, part = rows == mb ? out.narrow(0, m0, mb) : at::empty({rows, O}, x.options());
    quantize_x(x.narrow(0, m0, mb), rows, group, bits == 4 ? 8 : 128, xq, xs, off);
    const Dot d{(const int32_t*)xq.data_ptr<int8_t>(),
                xs.data_ptr<float>(),
                off.data_ptr<int32_t>(),
                tiles.data_ptr<uint8_t>(),
                bits == 4 ? scale.data_ptr<c10::BFloat16>() : nullptr,
                bits == 8 ? scale.data_ptr<float>() : nullptr,
                I, G, group, O, part.data_ptr<float>()};
    at::parallel_for(0, T, 4, [&](int64_t t0, int64_t t1) {
      dot_rows(isa, use_vnni, rows, bits, d, t0, t1);
    });
    if (rows != mb) out.narrow(0, m0, mb).copy_(part.narrow(0, 0, mb));
  }
  return out;
}

at::Tensor int4_dot(const at::Tensor& x, const at::Tensor& tiles, const at::Tensor& scale,
                    int64_t group, int64_t O, int64_t isa, int64_t vnni) {
  return dot(x, tiles, scale, group, O, isa, vnni, 4);
}

at::Tensor int8_dot(const at::Tensor& x, const at::Tensor& tiles, const at::Tensor& scale,
                    int64_t group, int64_t O, int64_t isa, int64_t vnni) {
  return dot(x, tiles, scale, group, O, isa, vnni, 8);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("int4_dot(Tensor x, Tensor tiles, Tensor scale, int group, int out_features, int isa=-1, "
        "int vnni=-1) -> Tensor",
        &int4_dot);
  m.def("int8_dot(Tensor x, Tensor tiles, Tensor scale, int group, int out_features, int isa=-1, "
        "int vnni=-1) -> Tensor",
        &int8_dot);
  m.def("cpu_vnni() -> int", &cpu_vnni);
}

#else  // PG_DOT_BODY: the loop for one instruction set (PG_ISA 2, 1 or 0; PG_VNNI 1 or 0)

#if PG_ISA == 2
constexpr int L = 16;  // output lanes per vector
using vi = __m512i;
using vf = __m512;
#define PG_V(op) _mm512_##op
#define PG_SI(op) _mm512_##op##_si512
inline vi dpbusd(vi acc, vi u8, vi s8) { return _mm512_dpbusd_epi32(acc, u8, s8); }
inline vf scales(const c10::BFloat16* s) {  // 16 bfloat16 -> float32
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)s));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#elif PG_ISA == 1
constexpr int L = 8;
using vi = __m256i;
using vf = __m256;
#define PG_V(op) _mm256_##op
#define PG_SI(op) _mm256_##op##_si256
#if PG_VNNI
inline vi dpbusd(vi acc, vi u8, vi s8) { return _mm256_dpbusd_avx_epi32(acc, u8, s8); }
#endif
inline vf scales(const c10::BFloat16* s) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)s));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
#endif
#if PG_ISA >= 1  // the vector code of both, in PG_V's / PG_SI's width
inline vi izero() { return PG_SI(setzero)(); }
inline vi iload(const uint8_t* p) { return PG_SI(loadu)((const vi*)p); }
inline vi lo4(vi v) { return PG_SI(and)(v, PG_V(set1_epi8)(15)); }
inline vi hi4(vi v) { return PG_SI(and)(PG_V(srli_epi16)(v, 4), PG_V(set1_epi8)(15)); }
inline vi iadd(vi a, vi b) { return PG_V(add_epi32)(a, b); }
#if PG_VNNI
inline vi dot2(vi acc, vi lo, vi hi, const int32_t* x) {
  return dpbusd(dpbusd(acc, lo, PG_V(set1_epi32)(x[0])), hi, PG_V(set1_epi32)(x[1]));
}
inline vi dot8(vi acc, vi u8, const int32_t* x) { return dpbusd(acc, u8, PG_V(set1_epi32)(x[0])); }
#else
inline vi dot8(vi acc, vi u8, const int32_t* x) {  // u8 = 16 hi + lo: two products in range
  const vi xb = PG_V(set1_epi32)(x[0]);
  const vi lo = PG_V(madd_epi16)(PG_V(maddubs_epi16)(lo4(u8), xb), PG_V(set1_epi16)(1));
  const vi hi = PG_V(madd_epi16)(PG_V(maddubs_epi16)(hi4(u8), xb), PG_V(set1_epi16)(16));
  return PG_V(add_epi32)(acc, PG_V(add_epi32)(lo, hi));
}
inline vi dot2(vi acc, vi lo, vi hi, const int32_t* x) {  // |pair sums| <= 2 * 15 * 127 < 2^15
  const vi p = PG_V(add_epi16)(PG_V(maddubs_epi16)(lo, PG_V(set1_epi32)(x[0])),
                               PG_V(maddubs_epi16)(hi, PG_V(set1_epi32)(x[1])));
  return PG_V(add_epi32)(acc, PG_V(madd_epi16)(p, PG_V(set1_epi16)(1)));
}
#endif
inline vf group_sum(vi acc, int32_t off, vf sc, float xs, vf f) {
  const vf v = PG_V(cvtepi32_ps)(PG_V(sub_epi32)(acc, PG_V(set1_epi32)(off)));
  return PG_V(fmadd_ps)(v, PG_V(mul_ps)(sc, PG_V(set1_ps)(xs)), f);
}
inline vf fzero() { return PG_V(setzero_ps)(); }
inline vf fone() { return PG_V(set1_ps)(1.f); }
inline vf fmul(vf a, const float* p) { return PG_V(mul_ps)(a, PG_V(loadu_ps)(p)); }
inline void fstore(float* p, vf v) { PG_V(storeu_ps)(p, v); }
#undef PG_V
#undef PG_SI
#else
constexpr int L = 1;  // portable scalar code: one output lane, its 4 bytes of a block
using vi = int32_t;
using vf = float;
inline vi izero() { return 0; }
inline vi iload(const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }
inline vi lo4(vi v) { return int32_t(uint32_t(v) & 0x0F0F0F0Fu); }
inline vi hi4(vi v) { return int32_t((uint32_t(v) >> 4) & 0x0F0F0F0Fu); }
inline vi iadd(vi a, vi b) { return a + b; }
inline vi dot1(vi acc, vi c, int32_t x) {
  for (int k = 0; k < 4; ++k) acc += int32_t((uint32_t(c) >> (8 * k)) & 255) * int8_t(x >> (8 * k));
  return acc;
}
inline vi dot2(vi acc, vi lo, vi hi, const int32_t* x) { return dot1(dot1(acc, lo, x[0]), hi, x[1]); }
inline vi dot8(vi acc, vi u8, const int32_t* x) { return dot1(acc, u8, x[0]); }
inline vf scales(const c10::BFloat16* s) { return float(s[0]); }
inline vf group_sum(vi acc, int32_t off, vf sc, float xs, vf f) { return float(acc - off) * (sc * xs) + f; }
inline vf fzero() { return 0.f; }
inline vf fone() { return 1.f; }
inline vf fmul(vf a, const float* p) { return a * *p; }
inline void fstore(float* p, vf v) { *p = v; }
#endif

// Tiles [t0, t1) for MB rows of x: per tile, 16 / L passes of L output lanes (one for AVX-512;
// the second pass of AVX2 re-reads the tile from cache). Per group, U int32 accumulators per
// row (independent dot-product chains for few rows), then one float32 step per group and row.
// BITS 4: a block holds 8 inputs (x words 2b, 2b + 1); BITS 8: 4 inputs (x word b).
template <int MB, int BITS>
void dot_block(const Dot& d, int64_t t0, int64_t t1) {
  constexpr int U = MB == 1 ? 4 : (MB == 2 ? 2 : 1);
  constexpr int NV = 16 / L, IB = BITS == 4 ? 8 : 4;  // passes per tile; inputs per block
  const int64_t B = d.group / IB, words = d.I / 4;    // blocks per group; x words per row
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = d.q + t * (d.I / IB) * 64;
    for (int h = 0; h < NV; ++h) {
      vf f[MB];
      for (int m = 0; m < MB; ++m) f[m] = fzero();
      for (int64_t g = 0; g < d.G; ++g) {
        vi acc[U][MB];
        for (int u = 0; u < U; ++u)
          for (int m = 0; m < MB; ++m) acc[u][m] = izero();
        for (int64_t b = g * B; b < (g + 1) * B; b += U) {
          if (h == 0) __builtin_prefetch(tile + b * 64 + kDotAhead);
          for (int u = 0; u < U; ++u) {
            const vi v = iload(tile + (b + u) * 64 + h * (64 / NV));
            if constexpr (BITS == 8) {
              for (int m = 0; m < MB; ++m)
                acc[u][m] = dot8(acc[u][m], v, d.x4 + m * words + b + u);
            } else {
              const vi lo = lo4(v), hi = hi4(v);
              for (int m = 0; m < MB; ++m)
                acc[u][m] = dot2(acc[u][m], lo, hi, d.x4 + m * words + 2 * (b + u));
            }
          }
        }
        const vf sc = BITS == 4 ? scales(d.s + (t * d.G + g) * 16 + h * L) : fone();
        for (int m = 0; m < MB; ++m) {
          for (int u = 1; u < U; ++u) acc[0][m] = iadd(acc[0][m], acc[u][m]);
          f[m] = group_sum(acc[0][m], d.off[m * d.G + g], sc, d.xs[m * d.G + g], f[m]);
        }
      }
      const int64_t o = t * 16 + h * L, n = std::min<int64_t>(L, d.O - o);
      for (int m = 0; m < MB && n > 0; ++m) {
        float buf[L];
        fstore(buf, BITS == 8 ? fmul(f[m], d.rs + o) : f[m]);
        std::memcpy(d.out + m * d.O + o, buf, n * sizeof(float));
      }
    }
  }
}

void dot_tiles(int64_t mb, int bits, const Dot& d, int64_t t0, int64_t t1) {
  if (bits == 8) {
    DOT_DISPATCH(mb, (dot_block<MB, 8>(d, t0, t1)));
  } else {
    DOT_DISPATCH(mb, (dot_block<MB, 4>(d, t0, t1)));
  }
}

#endif  // PG_DOT_BODY
