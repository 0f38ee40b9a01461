// The dot kernels' loop for one instruction set, included by int4_dot.cpp once per (PG_ISA 2,
// 1 or 0; PG_VNNI 1 or 0) inside a namespace of its own, under that set's target options. Reads
// int4_dot.cpp's Dot, kOnes, scale_at, PG_INLINE and DOT_DISPATCH; defines dot_tiles.
// (No include guard: included on purpose several times.)

#if PG_ISA == 2
constexpr int L = 16;  // output lanes per vector
using vi = __m512i;
using vf = __m512;
#define PG_V(op) _mm512_##op
#define PG_SI(op) _mm512_##op##_si512
inline vi dpbusd(vi acc, vi u8, vi s8) { return _mm512_dpbusd_epi32(acc, u8, s8); }
inline vi as_int(vf v) { return _mm512_castps_si512(v); }
inline vf as_float(vi v) { return _mm512_castsi512_ps(v); }
inline vf cvt_scales(const void* p, int stype) {  // 16 float32 / bfloat16 / float16
  if (stype == 0) return _mm512_loadu_ps(p);
  const __m256i h = _mm256_loadu_si256((const __m256i*)p);
  if (stype == 1) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return _mm512_cvtph_ps(h);
}
// transpose's 128-bit stage: r[4q + c] lane k (column 4k + c of rows 4q..4q + 3) -> r[j] =
// column j of rows 0..15.
PG_INLINE void transpose_lanes(vi* r) {
  vi t[16];
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44);
    t[4 + c] = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
    t[8 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44);
    t[12 + c] = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
  }
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xDD);
  }
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
inline vi as_int(vf v) { return _mm256_castps_si256(v); }
inline vf as_float(vi v) { return _mm256_castsi256_ps(v); }
inline vf cvt_scales(const void* p, int stype) {  // 8 float32 / bfloat16 / float16
  if (stype == 0) return _mm256_loadu_ps((const float*)p);
  const __m128i h = _mm_loadu_si128((const __m128i*)p);
  if (stype == 1) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  return _mm256_cvtph_ps(h);
}
PG_INLINE void transpose_lanes(vi* r) {  // as the AVX-512 one, for 8 x 8
  vi t[8];
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm256_permute2x128_si256(r[c], r[4 + c], 0x20);
    t[4 + c] = _mm256_permute2x128_si256(r[c], r[4 + c], 0x31);
  }
  for (int j = 0; j < 8; ++j) r[j] = t[j];
}
#endif
#if PG_ISA >= 1  // the vector code of both, in PG_V's / PG_SI's width
// r[l] = L dwords of row l -> r[j] = dword j of rows 0..L - 1: in-lane unpacks (r[4q + c] lane
// k = column 4k + c of rows 4q..4q + 3), then transpose_lanes.
PG_INLINE void transpose(vi* r) {
  vi t[L];
  for (int i = 0; i < L; i += 2) {
    t[i] = PG_V(unpacklo_epi32)(r[i], r[i + 1]);
    t[i + 1] = PG_V(unpackhi_epi32)(r[i], r[i + 1]);
  }
  for (int i = 0; i < L; i += 4) {
    r[i] = PG_V(unpacklo_epi64)(t[i], t[i + 2]);
    r[i + 1] = PG_V(unpackhi_epi64)(t[i], t[i + 2]);
    r[i + 2] = PG_V(unpacklo_epi64)(t[i + 1], t[i + 3]);
    r[i + 3] = PG_V(unpackhi_epi64)(t[i + 1], t[i + 3]);
  }
  transpose_lanes(r);
}
inline vi izero() { return PG_SI(setzero)(); }
inline vi iload(const uint8_t* p) { return PG_SI(loadu)((const vi*)p); }
inline vi flip(vi v) { return PG_SI(xor)(v, PG_V(set1_epi8)(-128)); }  // int8 -> code + 128
inline vi lo4(vi v) { return PG_SI(and)(v, PG_V(set1_epi8)(15)); }
inline vi hi4(vi v) { return PG_SI(and)(PG_V(srli_epi16)(v, 4), PG_V(set1_epi8)(15)); }
inline vi iadd(vi a, vi b) { return PG_V(add_epi32)(a, b); }
#if PG_VNNI
inline vi dot2(vi acc, vi lo, vi hi, const int32_t* x) {
  return dpbusd(dpbusd(acc, lo, PG_V(set1_epi32)(x[0])), hi, PG_V(set1_epi32)(x[1]));
}
struct W8 { vi u; };  // int8 codes as dot8 reads them: flipped to code + 128
inline W8 prep8(vi v) { return {flip(v)}; }
constexpr bool kOffset8 = true;  // dot8's sums carry 128 * sum xq (int4_dot.cpp's `off`)
inline vi dot8(vi acc, W8 w, const int32_t* x) { return dpbusd(acc, w.u, PG_V(set1_epi32)(x[0])); }
#else
// int16 lanes: a dword's 8 products in pairs (|pair sums| <= 2 * 15 * 128 < 2^15, the dword's
// two halves <= 7680).
inline vi pair16(vi lo, vi hi, const int32_t* x) {
  return PG_V(add_epi16)(PG_V(maddubs_epi16)(lo, PG_V(set1_epi32)(x[0])),
                         PG_V(maddubs_epi16)(hi, PG_V(set1_epi32)(x[1])));
}
inline vi widen(vi acc, vi p16) { return PG_V(add_epi32)(acc, PG_V(madd_epi16)(p16, PG_V(set1_epi16)(1))); }
inline vi add16(vi a, vi b) { return PG_V(add_epi16)(a, b); }
constexpr int kSum16 = 4;  // dwords whose pair16 sums int16 lanes hold: 4 * 7680 < 2^15
inline vi dot2(vi acc, vi lo, vi hi, const int32_t* x) { return widen(acc, pair16(lo, hi, x)); }
#if PG_ISA == 1
// AVX2 without VNNI: |w| times x with w's sign, the exact product (|pair sums| <= 2 * 128 * 127
// < 2^15), so no offset: one maddubs and one madd per row of x where the flipped codes' two
// nibbles took two of each (here and in int4_dot_row.h's one-row loop). Measured on a 2-core AMD
// EPYC, benchmarks/ab_builds.py (16384 x 2048 weights from memory, 4 process pairs): 2 rows
// 1.39x, 4 rows 1.20x, 8 rows 1.29x, 16 rows 1.42x. (AVX-512 has no sign_epi8: its non-VNNI
// loop keeps the nibbles.)
inline vi signed_pairs(vi abs_w, vi w, vi x) {  // int16 pair sums of w * x
  return _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
}
struct W8 { vi a, w; };
inline W8 prep8(vi v) { return {_mm256_abs_epi8(v), v}; }
constexpr bool kOffset8 = false;
inline vi dot8(vi acc, W8 w, const int32_t* x) {
  const vi p = signed_pairs(w.a, w.w, _mm256_set1_epi32(x[0]));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
#else
struct W8 { vi u; };
inline W8 prep8(vi v) { return {flip(v)}; }
constexpr bool kOffset8 = true;
inline vi dot8(vi acc, W8 w, const int32_t* x) {  // u = 16 hi + lo: two products in range
  const vi xb = PG_V(set1_epi32)(x[0]);
  const vi lo = PG_V(madd_epi16)(PG_V(maddubs_epi16)(lo4(w.u), xb), PG_V(set1_epi16)(1));
  const vi hi = PG_V(madd_epi16)(PG_V(maddubs_epi16)(hi4(w.u), xb), PG_V(set1_epi16)(16));
  return PG_V(add_epi32)(acc, PG_V(add_epi32)(lo, hi));
}
#endif
#endif
inline vf group_sum(vi acc, int32_t off, vf sc, float xs, vf f) {
  const vf v = PG_V(cvtepi32_ps)(PG_V(sub_epi32)(acc, PG_V(set1_epi32)(off)));
  return PG_V(fmadd_ps)(v, PG_V(mul_ps)(sc, PG_V(set1_ps)(xs)), f);
}
inline vf fzero() { return PG_V(setzero_ps)(); }
inline vf fload(const float* p) { return PG_V(loadu_ps)(p); }
inline vf fmul(vf a, vf b) { return PG_V(mul_ps)(a, b); }
inline void fstore(float* p, vf v) { PG_V(storeu_ps)(p, v); }
#else
constexpr int L = 1;  // portable scalar code: one output lane, a dword of one row
using vi = int32_t;
using vf = float;
inline void transpose(vi*) {}
inline vf cvt_scales(const void* p, int stype) {
  return stype == 0 ? *(const float*)p
                    : (stype == 1 ? float(*(const c10::BFloat16*)p) : float(*(const c10::Half*)p));
}
inline vi as_int(vf v) { vi i; std::memcpy(&i, &v, 4); return i; }
inline vf as_float(vi i) { vf v; std::memcpy(&v, &i, 4); return v; }
inline vi izero() { return 0; }
inline vi iload(const uint8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }
inline vi flip(vi v) { return int32_t(uint32_t(v) ^ 0x80808080u); }
inline vi lo4(vi v) { return int32_t(uint32_t(v) & 0x0F0F0F0Fu); }
inline vi hi4(vi v) { return int32_t((uint32_t(v) >> 4) & 0x0F0F0F0Fu); }
inline vi iadd(vi a, vi b) { return a + b; }
inline vi dot1(vi acc, vi c, int32_t x) {
  for (int k = 0; k < 4; ++k) acc += int32_t((uint32_t(c) >> (8 * k)) & 255) * int8_t(x >> (8 * k));
  return acc;
}
inline vi dot2(vi acc, vi lo, vi hi, const int32_t* x) { return dot1(dot1(acc, lo, x[0]), hi, x[1]); }
struct W8 { vi u; };
inline W8 prep8(vi v) { return {flip(v)}; }
constexpr bool kOffset8 = true;
inline vi dot8(vi acc, W8 w, const int32_t* x) { return dot1(acc, w.u, x[0]); }
inline vf group_sum(vi acc, int32_t off, vf sc, float xs, vf f) { return float(acc - off) * (sc * xs) + f; }
inline vf fzero() { return 0.f; }
inline vf fload(const float* p) { return *p; }
inline vf fmul(vf a, vf b) { return a * b; }
inline void fstore(float* p, vf v) { *p = v; }
#endif
#include "int4_quantize_x.h"
#if PG_ISA >= 1
#undef PG_V
#undef PG_SI
#endif

// n dwords from `off` of each of the L rows (n <= L; past n: zeros), transposed: v[j] = dword j
// of every row, lane l from row l.
// `ahead`: L * L * 4 bytes of the next L rows (contiguous), prefetched at the pace they are
// read (the rows' L strided streams are a poor pattern for the hardware prefetchers), with
// locality HINT: kHint, int8 on AVX-512 into L2 only (_MM_HINT_T1), the rest into L1 too (T0). In one process, this build against the one before (T0 for all; `ab_builds.py --base
// 93fcfce --in-process --rounds 20`, 2 threads of an AMX Xeon, from memory, one row): int8
// 1.05-1.14x over the decoder's shapes and the head, int4 (the same code) 0.99-1.01x; int4 with
// T1 too measured 0.96-1.01x.
template <int BITS>
constexpr int kHint = BITS == 8 && PG_ISA == 2 ? 2 : 3;

template <int HINT>
PG_INLINE void load_rows(const uint8_t* const* row, int64_t off, int64_t n, vi* v,
                      const uint8_t* ahead) {
  for (int k = 0; k < 4 * L * L; k += 64) __builtin_prefetch(ahead + k, 0, HINT);
  if (n == L) {
    for (int l = 0; l < L; ++l) v[l] = iload(row[l] + off);
  } else {
    alignas(64) uint8_t buf[L][4 * L] = {};
    for (int l = 0; l < L; ++l) std::memcpy(buf[l], row[l] + off, n * 4);
    for (int l = 0; l < L; ++l) v[l] = iload(buf[l]);
  }
  transpose(v);
}

// int4: the scales of groups g0 + k (k < n <= L) of rows o..o + L (clamped to O - 1), one
// vector per group (sc[k], lane l: row o + l), converted and transposed as the weights are.
PG_INLINE void group_scales(const Dot& d, int64_t o, int64_t g0, int64_t n, vf* sc) {
  const int64_t size = d.stype == 0 ? 4 : 2;
  vi r[L];
  for (int l = 0; l < L; ++l) {
    const uint8_t* p = (const uint8_t*)d.s + (std::min(o + l, d.O - 1) * d.G + g0) * size;
    alignas(64) uint8_t buf[4 * L] = {};
    if (n < L) p = (const uint8_t*)std::memcpy(buf, p, n * size);
    r[l] = as_int(cvt_scales(p, d.stype));
  }
  transpose(r);
  for (int k = 0; k < L; ++k) sc[k] = as_float(r[k]);
}

// int8: the scales of rows o..o + L (clamped to O - 1).
inline vf row_scales(const Dot& d, int64_t o) {
  float buf[L];
  for (int l = 0; l < L; ++l) buf[l] = scale_at(d, std::min(o + l, d.O - 1));
  return fload(buf);
}

// Output rows [o0, o1) (o0 a multiple of L) for MB rows of x, L rows at a time: per L dwords
// of the rows, one transposition; per group, U int32 accumulators per row of x (independent
// dot-product chains for few rows), then one float32 step per group and row. Rows past O read
// row O - 1 and are not stored. BITS 4: a dword holds 8 inputs (x words 2b, 2b + 1, permuted);
// BITS 8: 4 inputs (x word b).
template <int MB, int BITS>
void dot_block(const Dot& d, int64_t o0, int64_t o1) {
  constexpr int U = L == 1 ? 1 : (MB == 1 ? 4 : (MB == 2 ? 2 : 1));
  constexpr int IB = BITS == 4 ? 8 : 4;                // inputs per dword
  const int64_t B = d.group / IB, words = d.I / 4;      // dwords per group; x words per row
  const int64_t nd = d.I / IB, stride = nd * 4;         // dwords, bytes per weight row
  for (int64_t o = o0; o < o1; o += L) {
    const uint8_t* row[L];
    for (int l = 0; l < L; ++l) row[l] = d.q + std::min(o + l, d.O - 1) * stride;
    vf f[MB], sc[L];
    vi acc[U][MB];
    for (int m = 0; m < MB; ++m) f[m] = fzero();
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MB; ++m) acc[u][m] = izero();
#if PG_ISA >= 1 && !PG_VNNI
    // int4 without VNNI: up to kSum16 steps' pair16 sums added in int16 lanes, widened to
    // int32 by one madd (exact: the same int32 sums), where each dword took a madd and an add.
    vi s16[U][MB];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < MB; ++m) s16[u][m] = izero();
    int held = 0;  // steps in s16
#endif
    int64_t g = 0, left = B;  // the group; its dwords still to come
    for (int64_t c = 0; c < nd; c += L) {
      vi v[L];
      const int64_t n = std::min<int64_t>(L, nd - c);
      load_rows<kHint<BITS>>(row, c * 4, n, v, d.q + (o + L) * stride + c * 4 * L);
      auto step = [&](int64_t j) __attribute__((always_inline)) {
        for (int u = 0; u < U; ++u) {
          const int64_t b = c + j + u;
          if constexpr (BITS == 8) {
            const W8 w = prep8(v[j + u]);
            for (int m = 0; m < MB; ++m) acc[u][m] = dot8(acc[u][m], w, d.x4 + m * words + b);
          } else {
            const vi lo = lo4(v[j + u]), hi = hi4(v[j + u]);
#if PG_ISA >= 1 && !PG_VNNI
            for (int m = 0; m < MB; ++m)
              s16[u][m] = add16(s16[u][m], pair16(lo, hi, d.x4 + m * words + 2 * b));
#else
            for (int m = 0; m < MB; ++m)
              acc[u][m] = dot2(acc[u][m], lo, hi, d.x4 + m * words + 2 * b);
#endif
          }
        }
#if PG_ISA >= 1 && !PG_VNNI
        if (BITS == 4 && (++held == kSum16 || left - U <= 0)) {
          for (int u = 0; u < U; ++u)
            for (int m = 0; m < MB; ++m) acc[u][m] = widen(acc[u][m], s16[u][m]), s16[u][m] = izero();
          held = 0;
        }
#endif
        if ((left -= U) > 0) return;
        if (BITS == 4 && g % L == 0) group_scales(d, o, g, std::min<int64_t>(L, d.G - g), sc);
        const vf s = BITS == 4 ? sc[g % L] : fload(kOnes);
        for (int m = 0; m < MB; ++m) {
          for (int u = 1; u < U; ++u) acc[0][m] = iadd(acc[0][m], acc[u][m]);
          const int32_t off = BITS == 4 || kOffset8 ? d.off[m * d.G + g] : 0;
          f[m] = group_sum(acc[0][m], off, s, d.xs[m * d.G + g], f[m]);
          for (int u = 0; u < U; ++u) acc[u][m] = izero();
        }
        ++g, left = B;
      };
      if (n == L) {  // unrolled: v stays in registers
#pragma GCC unroll 16
        for (int j = 0; j < L; j += U) step(j);
      } else {
        for (int64_t j = 0; j < n; j += U) step(j);
      }
    }
    const vf rs = BITS == 8 ? row_scales(d, o) : fload(kOnes);
    const int64_t n = std::min<int64_t>(L, d.O - o);
    for (int m = 0; m < MB; ++m) {
      float buf[L];
      fstore(buf, fmul(f[m], rs));
      std::memcpy(d.out + m * d.O + o, buf, n * sizeof(float));
    }
  }
}

#if PG_ISA == 1 && !PG_VNNI
#include "int4_dot_row.h"
#include "int4_dot_batch.h"
#elif PG_ISA == 2 && PG_VNNI
#include "int4_dot_slab.h"
#endif

void dot_tiles(int64_t mb, int bits, const Dot& d, int64_t o0, int64_t o1) {
#if PG_ISA == 1 && !PG_VNNI
  if (one_row_call(mb, bits, d, o0, o1) || batch_call(mb, bits, d, o0, o1)) return;
#elif PG_ISA == 2 && PG_VNNI
  if (slab_call(mb, bits, d, o0, o1)) return;
#endif
  if (bits == 8) {
    DOT_DISPATCH(mb, (dot_block<MB, 8>(d, o0, o1)));
  } else {
    DOT_DISPATCH(mb, (dot_block<MB, 4>(d, o0, o1)));
  }
}
