// dequant_mm's AMX-BF16 GEMM with the dequantisation fused in, for bfloat16 x (prefill): included
// once by dequant.cpp, in namespace pg_dq_amx, under AVX-512 + AVX512-BF16 + AMX-BF16 target
// options; it runs only where amx_bf16_ready() (dequant.cpp).
//
//   out[M, O] = x[M, I] @ W.T (+ bias), W = dequantize().to(bfloat16) (code * scale in float32,
//   rounded to nearest even: vcvtne2ps2bf16; the products are never denormal), or a plain
//   bfloat16 weight (bits 16: bf16_mm, its rows copied into the panels as they are), float32
//   sums (a float32 bias added to them), one rounding (to nearest even) of each output to bfloat16.
//
// One TDPBF16PS multiplies tile A, 16 weight rows x 32 inputs (bfloat16, row-major: the block
// dequantised as it comes, no re-layout), by tile B, 16 input pairs x 16 rows of x (VNNI-2: dword
// [p][m] = inputs 2p, 2p + 1 of row m; x re-laid out once per call into xv), into C, 16 output
// rows x 16 rows of x in float32. A thread takes `tile` output rows at a time (one span), and
// those per K block of kKB inputs and panel of 32 rows: the panel's products run 2 x 2 tiles
// (32 weight rows x 32 rows of x: 4 C tiles, tmm0..3; A in tmm4, 5; B in tmm6, 7) over every
// row of x, C accumulated across K blocks in the thread's scratch c [rows][Mp]; between them
// (after each 32 inputs) it dequantises a share of the NEXT panel into the other half of its
// buffer w [2][32][kKB + 32] (the padding keeps the rows off one cache set), so the vector units
// work while the tile unit multiplies (measured: dequantising a whole block first, then its
// products, cost ~15% more). Last, C is transposed 16 x 16 in registers and rounded into out.
// M is padded to Mp (a multiple of 16) with zero rows in xv; weight rows past the span are
// zeros in w; neither is stored. Shapes: I a multiple of 32 (int4: the group too), M <= kMaxRows
// per pass (amx_run runs larger x in passes).
//
// Defines, in dequant.cpp's anonymous namespace: amx_bf16_ready() (AMX-BF16 and AVX512-BF16 in
// CPUID, and the tiles granted: int4_dot.cpp's pg_amx_ready), amx_run (x times several weights
// in one call: bf16_mms) and amx_mm (one weight: dequant_mm's AMX path, bf16_mm, the GeGLU ops).

bool pg_amx_ready();  // int4_dot.cpp: AMX-TILE and AMX-INT8 in CPUID, the OS's leave granted

#ifdef PG_DQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")
namespace pg_dq_gelu {  // gelu_tanh_'s AVX-512 loop, for bf16_geglu's store
#define PG_GELU_ISA 2
#include "gelu_isa.h"
#undef PG_GELU_ISA
}  // namespace pg_dq_gelu
namespace pg_dq_amx {

// inputs per K block: 256 against 512 took a bfloat16 PaliGemma-3B-224 prefill to 0.90x (paired
// median, 6 rounds in one process, 2 threads of an AMX Xeon; int8 0.96x, int4 0.97x; 128: 0.91x)
constexpr int64_t kKB = 256;
constexpr int64_t kMaxRows = 1024;  // rows of x per pass (C scratch: tile x kMaxRows floats)
constexpr int64_t kAhead = 8;       // rows ahead whose codes a step prefetches (from memory)

struct Mm {
  const void* q;
  const void* scale;
  bool scale_bf16;
  int64_t bits, group, I, O, M, Mp;  // bits 16: q is a bfloat16 weight; Mp: M rounded up to 16
  const uint32_t* xv;                // [Mp / 16][I / 2][16] dwords (bfloat16 pairs)
  uint16_t* out;                     // [M, O] bfloat16 bits
  const float* bias;                 // [O] or nullptr
  bool gelu = false;                 // out = gelu_tanh of the product (store_gelu)
};

// One butterfly step of a 16 x 16 dword transpose: bit B of the row and column indices swapped.
template <int B>
inline void swap_bit(__m512i* r) {
  alignas(64) int32_t lo[16], hi[16];
  for (int j = 0; j < 16; ++j) lo[j] = j & B ? 16 + j - B : j, hi[j] = j & B ? 16 + j : j + B;
  const __m512i il = _mm512_load_si512(lo), ih = _mm512_load_si512(hi);
  for (int i = 0; i < 16; ++i) {
    if (i & B) continue;
    const __m512i a = r[i], b = r[i + B];
    r[i] = _mm512_permutex2var_epi32(a, il, b), r[i + B] = _mm512_permutex2var_epi32(a, ih, b);
  }
}

inline void transpose16(__m512i* r) {
  swap_bit<8>(r), swap_bit<4>(r), swap_bit<2>(r), swap_bit<1>(r);
}

// Rows [16 b, 16 b + 16) of x (bf16 [M, I], zeros past M) into xv block b, 16 pairs at a time.
inline void pack_x(const uint16_t* x, const Mm& d, int64_t b) {
  __m512i r[16];
  uint32_t* dst = const_cast<uint32_t*>(d.xv) + b * (d.I / 2) * 16;
  for (int64_t p = 0; p < d.I / 2; p += 16) {
    for (int l = 0; l < 16; ++l) {
      const int64_t m = b * 16 + l;
      r[l] = m < d.M ? _mm512_loadu_si512(x + m * d.I + 2 * p) : _mm512_setzero_si512();
    }
    transpose16(r);
    for (int j = 0; j < 16; ++j) _mm512_store_si512(dst + (p + j) * 16, r[j]);
  }
}

inline float scale_at(const Mm& d, int64_t i) {
  if (!d.scale_bf16) return static_cast<const float*>(d.scale)[i];
  return __builtin_bit_cast(float, uint32_t(static_cast<const uint16_t*>(d.scale)[i]) << 16);
}

// 32 floats (lo: the first 16) to 32 bfloat16 at dst, rounded to nearest even.
inline void store_bf16(uint16_t* dst, __m512 lo, __m512 hi) {
  _mm512_store_si512(dst, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

// 32 codes at q (int8, or int4 in 16 bytes) times s, to 32 bfloat16 at dst.
template <int BITS>
inline void dequant32(const uint8_t* q, float f, uint16_t* dst) {
  const __m512 s = _mm512_set1_ps(f);
  if constexpr (BITS == 8) {
    const __m256i c = _mm256_loadu_si256((const __m256i*)q);
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1)));
    store_bf16(dst, _mm512_mul_ps(lo, s), _mm512_mul_ps(hi, s));
  } else {
    const __m128i mask = _mm_set1_epi8(15), b = _mm_loadu_si128((const __m128i*)q);
    const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    const __m512 eight = _mm512_set1_ps(8.f);
    const __m512 c0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi)));
    const __m512 c1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi)));
    store_bf16(dst, _mm512_mul_ps(_mm512_sub_ps(c0, eight), s),
               _mm512_mul_ps(_mm512_sub_ps(c1, eight), s));
  }
}

template <int BITS>
inline void run(const uint8_t* q, float s, uint16_t* to, int64_t len) {
  for (int64_t j = 0; j < len; j += 32) dequant32<BITS>(q + j * BITS / 8, s, to + j);
}

// One panel's weights to dequantise: 32 rows from o (those from o + rows on: zeros) x inputs
// [k0, k0 + kb) into dst (row stride ld), 32 weights a step, a few steps at a time between tile
// products so that the vector units work while the tile unit multiplies.
struct Panel {
  int64_t o, rows, k0, kb, ld;
  uint16_t* dst;
  int64_t r = 0, i = 0, g = 0;  // the next step: row r, inputs k0 + i, g of them in its group
  float s = 0.f;                // row r's scale (int4: of its group)

  void start_row(const Mm& d) {
    if (r >= rows || d.bits == 16) return;
    const int64_t G = d.bits == 8 ? 1 : d.I / d.group, k = k0 + i;
    s = scale_at(d, (o + r) * G + (d.bits == 8 ? 0 : k / d.group));
    g = d.bits == 8 ? 0 : k % d.group;
  }
  bool step(const Mm& d, int64_t n) {  // n more steps; false when all are done
    if (r == 0 && i == 0) start_row(d);
    const int64_t bytes = d.I * d.bits / 8;
    for (n *= 32; n > 0 && r < 32;) {  // runs of weights within a row (int4: a group)
      const int64_t len = std::min({n, kb - i, d.bits == 4 ? d.group - g : kb});
      uint16_t* to = dst + r * ld + i;
      const uint8_t* q = static_cast<const uint8_t*>(d.q) + (o + r) * bytes + (k0 + i) * d.bits / 8;
      for (int64_t b = 0; o + r + kAhead < d.O && b < len * d.bits / 8; b += 64)
        _mm_prefetch((const char*)q + kAhead * bytes + b, _MM_HINT_T0);
      if (r >= rows) std::memset(to, 0, len * 2);
      else if (d.bits == 16) std::memcpy(to, q, len * 2);
      else if (d.bits == 8) run<8>(q, s, to, len);
      else run<4>(q, s, to, len);
      n -= len, i += len, g += len;
      if (i == kb) {
        i = 0, ++r, start_row(d);
      } else if (d.bits == 4 && g == d.group) {
        g = 0, s = scale_at(d, (o + r) * (d.I / d.group) + (k0 + i) / d.group);
      }
    }
    return r < 32;
  }
  void finish(const Mm& d) {
    while (step(d, 1 << 30)) {
    }
  }
};

// C += the products of NN x 16 weight rows (w, row stride ld) and MM x 16 rows of x (xv blocks
// mb, mb + 1) over inputs [k0, k0 + kb); C at c (row stride Mp floats), zeros first when `first`;
// `per` steps of `next` after each chunk of 32 inputs.
template <int NN, int MM>
void tiles(const Mm& d, const uint16_t* w, int64_t ld, int64_t k0, int64_t kb, int64_t mb,
           float* c, bool first, Panel& next, int64_t per) {
  const int64_t cs = d.Mp * 4, c1 = 16 * d.Mp;
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  } else {
    _tile_loadd(0, c, cs);
    if constexpr (MM == 2) _tile_loadd(1, c + 16, cs);
    if constexpr (NN == 2) _tile_loadd(2, c + c1, cs);
    if constexpr (NN == 2 && MM == 2) _tile_loadd(3, c + c1 + 16, cs);
  }
  const uint32_t* b0 = d.xv + (mb * (d.I / 2) + k0 / 2) * 16;
  const uint32_t* b1 = b0 + (d.I / 2) * 16;
  for (int64_t k = 0; k < kb; k += 32) {
    _tile_loadd(4, w + k, ld * 2);
    if constexpr (NN == 2) _tile_loadd(5, w + 16 * ld + k, ld * 2);
    _tile_loadd(6, b0 + k * 8, 64);
    if constexpr (MM == 2) _tile_loadd(7, b1 + k * 8, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (MM == 2) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NN == 2) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NN == 2 && MM == 2) _tile_dpbf16ps(3, 5, 7);
    next.step(d, per);
  }
  _tile_stored(0, c, cs);
  if constexpr (MM == 2) _tile_stored(1, c + 16, cs);
  if constexpr (NN == 2) _tile_stored(2, c + c1, cs);
  if constexpr (NN == 2 && MM == 2) _tile_stored(3, c + c1 + 16, cs);
}

// The C of NC products (c[k]: [n16][Mp]) of output rows [o0, o0 + n), 16 x 16 at a time,
// transposed, the bias added, rounded to bfloat16 (nearest even): 16 rows of x at a time, for
// each row and 16 outputs put(dst, keep, h), h[k] product k's values, dst their place in out,
// each row's n outputs written in order (one column of blocks at a time left each out row's
// lines to be fetched again: out's rows are O * 2 bytes apart, so they share few cache sets; 10%
// of a 266 x 2048 x 16384 GEMM, measured).
template <int NC, typename Put>
inline void store_rows(const Mm& d, const float* const* c, int64_t o0, int64_t n, Put put) {
  __asm__ volatile("" ::: "memory");  // (the tile stores wrote c)
  __m512i r[NC][16];
  for (int64_t mb = 0; mb < d.M; mb += 16) {
    for (int64_t nb = 0; nb < n; nb += 16) {
      const __mmask16 keep = n - nb >= 16 ? 0xffff : (1u << (n - nb)) - 1;
      const __m512 b = d.bias ? _mm512_maskz_loadu_ps(keep, d.bias + o0 + nb) : _mm512_setzero_ps();
      for (int k = 0; k < NC; ++k) {
        for (int l = 0; l < 16; ++l) r[k][l] = _mm512_load_si512(c[k] + (nb + l) * d.Mp + mb);
        transpose16(r[k]);
      }
      for (int64_t m = mb; m < std::min(mb + 16, d.M); ++m) {
        __m256i h[NC];
        for (int k = 0; k < NC; ++k)
          h[k] = (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_castsi512_ps(r[k][m - mb]), b));
        put(d.out + m * d.O + o0 + nb, keep, h);
      }
    }
  }
}

inline void store_out(const Mm& d, const float* c, int64_t o0, int64_t n) {
  store_rows<1>(d, &c, o0, n, [](uint16_t* dst, __mmask16 keep, const __m256i* h) {
    _mm256_mask_storeu_epi16(dst, keep, h[0]);
  });
}

// One panel's products over all rows of x (2 x 2 tiles, fewer at the tails), dequantising the
// next panel meanwhile.
inline void panel_products(const Mm& d, const Panel& p, int64_t n16, float* c, Panel& next) {
  const int64_t mblocks = d.Mp / 16, pairs = (mblocks + 1) / 2;
  const int64_t per = (32 + pairs - 1) / pairs;  // next's 32 * kb / 32 steps over pairs * kb / 32
  const bool two_n = n16 >= 32, first = p.k0 == 0;
  for (int64_t mb = 0; mb < mblocks; mb += 2) {
    float* cm = c + mb * 16;
    const bool two_m = mblocks - mb >= 2;
    if (two_n && two_m) tiles<2, 2>(d, p.dst, p.ld, p.k0, p.kb, mb, cm, first, next, per);
    else if (two_n) tiles<2, 1>(d, p.dst, p.ld, p.k0, p.kb, mb, cm, first, next, per);
    else if (two_m) tiles<1, 2>(d, p.dst, p.ld, p.k0, p.kb, mb, cm, first, next, per);
    else tiles<1, 1>(d, p.dst, p.ld, p.k0, p.kb, mb, cm, first, next, per);
  }
}

// Output rows [o0, o0 + n) on this thread, per K block of kKB inputs and panel of 32 rows: w holds
// two panels (32 x (kKB + 32) bfloat16 each: the one multiplied, the next one dequantised), c
// n16 x Mp floats.
inline void span_products(const Mm& d, int64_t o0, int64_t n, uint16_t* w, float* c) {
  const int64_t n16 = (n + 15) / 16 * 16, panels = (n16 + 31) / 32, ld = kKB + 32;
  const int64_t jobs = (d.I + kKB - 1) / kKB * panels;
  auto job = [&](int64_t j) {  // K block j / panels, panel j % panels
    const int64_t k0 = j / panels * kKB, o = o0 + j % panels * 32;
    return Panel{o, std::min<int64_t>(32, o0 + n - o), k0, std::min(kKB, d.I - k0), ld,
                 w + j % 2 * 32 * ld};
  };
  Panel p = job(0);
  p.finish(d);
  for (int64_t j = 0; j < jobs; ++j) {
    Panel next = job(j + 1 < jobs ? j + 1 : j);
    if (j + 1 == jobs) next.r = 32;  // nothing left to dequantise
    __asm__ volatile("" ::: "memory");  // (the tile loads read p.dst)
    panel_products(d, p, std::min<int64_t>(32, n16 - j % panels * 32), c + j % panels * 32 * d.Mp, next);
    next.finish(d);
    p = next;
  }
}

// GeGLU's store: out = gelu_tanh(gate) * up from the C of both (cg, cu), gate and up rounded as
// store_out rounds them (the bias zero: bf16_mm's -0 + 0 = +0 included), then gelu_tanh_'s
// AVX-512 steps (pg_dq_gelu: the GELU rounded, times up, rounded): the same bits as the three
// ops in turn.
inline void store_geglu(const Mm& d, const float* cg, const float* cu, int64_t o0, int64_t n) {
  const float* c[2] = {cg, cu};
  store_rows<2>(d, c, o0, n, [](uint16_t* dst, __mmask16 keep, const __m256i* h) {
    namespace G = pg_dq_gelu;
    alignas(64) uint16_t g[16], u[16], x[16];
    _mm256_store_si256((__m256i*)g, h[0]);
    _mm256_store_si256((__m256i*)u, h[1]);
    G::store(x, G::gelu(G::load(g)));
    G::store(x, G::mul(G::load(x), G::load(u)));
    _mm256_mask_storeu_epi16(dst, keep, _mm256_load_si256((const __m256i*)x));
  });
}

// A GELU's store (bf16_mm gelu=True: SigLIP's fc1): out = gelu_tanh(x @ w.T + bias), the
// product rounded as store_out rounds it, then gelu_tanh_'s AVX-512 steps (the GELU rounded): the
// same bits as bf16_mm and gelu_tanh_ in turn.
inline void store_gelu(const Mm& d, const float* c, int64_t o0, int64_t n) {
  store_rows<1>(d, &c, o0, n, [](uint16_t* dst, __mmask16 keep, const __m256i* h) {
    namespace G = pg_dq_gelu;
    alignas(64) uint16_t x[16];
    _mm256_store_si256((__m256i*)x, h[0]);
    G::store(x, G::gelu(G::load(x)));
    _mm256_mask_storeu_epi16(dst, keep, _mm256_load_si256((const __m256i*)x));
  });
}

inline void span(const Mm& d, int64_t o0, int64_t n, uint16_t* w, float* c) {
  span_products(d, o0, n, w, c);
  if (d.gelu) store_gelu(d, c, o0, n);
  else store_out(d, c, o0, n);
}

// Spans of output rows, the next free one each time, on this thread (its tiles configured here
// and released after; its buffers kept for its next call), over `count` weights that read the
// same x (bf16_mms: q, k, v), weight j in spans of tiles[j] rows after those of the weights
// before it. With `up` (bf16_geglu / dequant_geglu: ds[0] the gate, *up the up projection, the
// same shapes and codes; count 1), each span's products of both, then store_geglu.
inline void spans(const Mm* ds, const int64_t* tiles, int64_t count, std::atomic<int64_t>& next,
                  const Mm* up = nullptr) {
  thread_local std::vector<uint16_t> wbuf;
  thread_local std::vector<float> cbuf;
  const int64_t rows = (*std::max_element(tiles, tiles + count) + 15) / 16 * 16;
  const int64_t cn = rows * ds[0].Mp + 16;
  wbuf.resize(std::max<size_t>(wbuf.size(), 64 * (kKB + 32) + 32));
  cbuf.resize(std::max<size_t>(cbuf.size(), up ? 2 * cn : cn));
  auto* w = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(wbuf.data()) + 63) & ~63ul);
  auto* c = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(cbuf.data()) + 63) & ~63ul);
  configure_16x64();  // (amx_tile.h)
  for (int64_t t = next++;; t = next++) {
    int64_t j = 0, first = 0;  // span t: weight j's span t - first
    for (; j < count && t - first >= (ds[j].O + tiles[j] - 1) / tiles[j]; ++j)
      first += (ds[j].O + tiles[j] - 1) / tiles[j];
    if (j == count) break;
    const Mm& d = ds[j];
    const int64_t o0 = (t - first) * tiles[j], n = std::min(tiles[j], d.O - o0);
    if (!up) {
      span(d, o0, n, w, c);
      continue;
    }
    float* cu = c + (cn - 16);  // (cn - 16: a multiple of 16 floats, so cu stays aligned)
    span_products(d, o0, n, w, c);
    span_products(*up, o0, n, w, cu);
    store_geglu(d, c, cu, o0, n);
  }
  _tile_release();
}

}  // namespace pg_dq_amx
#pragma GCC pop_options
#endif

namespace {

// AMX-BF16 (CPUID leaf 7: EDX bit 22), AVX512-BF16 (leaf 7.1: EAX bit 5), the tiles granted.
bool amx_bf16_ready() {
  static const bool ready = [] {
#ifdef PG_DQ_X86
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 22) & 1)) return false;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !((a >> 5) & 1)) return false;
    return pg_amx_ready();
#else
    return false;
#endif
  }();
  return ready;
}

// One weight of an AMX call: its codes (or bfloat16 rows) [O, ...], scales (or the rows again),
// bias float32 [O] or nullptr, and output bfloat16 [M, O].
struct AmxWeight {
  const at::Tensor& q;
  const at::Tensor& scale;
  const float* bias;
  at::Tensor& out;
};

// x bfloat16 [M, I] (contiguous; the shapes above) times each of `count` weights, kMaxRows rows
// of x a pass: x re-laid out once (all threads), then each thread takes spans of every weight's
// output rows (`tile` at most, fewer where a weight is small: every thread gets a span of it).
// up / up_scale / gelu: one weight, as spans() and Mm say.
void amx_run(const at::Tensor& x, const AmxWeight* ws, int64_t count, int64_t bits,
             int64_t group, int64_t tile, const at::Tensor* up = nullptr,
             const at::Tensor* up_scale = nullptr, bool gelu = false) {
#ifdef PG_DQ_X86
  const int64_t M = x.size(0), I = x.size(1), threads = at::get_num_threads();
  std::vector<int64_t> tiles(count);
  int64_t spans = 0;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t O = ws[j].q.size(0), share = (O + threads - 1) / threads;
    tiles[j] = std::min(tile, (share + 15) / 16 * 16);
    spans += (O + tiles[j] - 1) / tiles[j];
  }
  std::vector<pg_dq_amx::Mm> ds(count);
  for (int64_t m0 = 0; m0 < M; m0 += pg_dq_amx::kMaxRows) {
    const int64_t rows = std::min(pg_dq_amx::kMaxRows, M - m0), Mp = (rows + 15) / 16 * 16;
    at::Tensor xv = at::empty({Mp / 16, I / 2, 16}, x.options().dtype(at::kInt));
    for (int64_t j = 0; j < count; ++j) {
      const AmxWeight& wj = ws[j];
      const int64_t O = wj.q.size(0);
      ds[j] = pg_dq_amx::Mm{wj.q.data_ptr(), wj.scale.data_ptr(),
                            wj.scale.scalar_type() == at::kBFloat16, bits, group, I, O, rows, Mp,
                            reinterpret_cast<const uint32_t*>(xv.data_ptr()),
                            static_cast<uint16_t*>(wj.out.data_ptr()) + m0 * O, wj.bias, gelu};
    }
    const auto* xp = static_cast<const uint16_t*>(x.data_ptr()) + m0 * I;
    at::parallel_for(0, Mp / 16, 1, [&](int64_t a, int64_t b) {
      for (; a < b; ++a) pg_dq_amx::pack_x(xp, ds[0], a);
    });
    pg_dq_amx::Mm du = ds[0];  // GeGLU: the up projection's weight and scales (no bias)
    if (up) du.q = up->data_ptr(), du.scale = (up_scale ? up_scale : up)->data_ptr();
    std::atomic<int64_t> next{0};
    at::parallel_for(0, std::min(spans, threads), 1, [&](int64_t, int64_t) {
      pg_dq_amx::spans(ds.data(), tiles.data(), count, next, up ? &du : nullptr);
    });
  }
#else
  TORCH_CHECK(false, "paligemma_cpu: AMX products on x86 only");  // (callers check first)
#endif
}

// dequant_mm / bf16_mm / the GeGLU ops on AMX-BF16: amx_run for one weight.
at::Tensor amx_mm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                  int64_t bits, int64_t group, int64_t tile, const float* bias = nullptr,
                  const at::Tensor* up = nullptr, const at::Tensor* up_scale = nullptr,
                  bool gelu = false) {
  at::Tensor out = at::empty({x.size(0), q.size(0)}, x.options());
  const AmxWeight w{q, scale, bias, out};
  amx_run(x, &w, 1, bits, group, tile, up, up_scale, gelu);
  return out;
}

}  // namespace
