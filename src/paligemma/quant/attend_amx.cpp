// Prefill attention on AMX-BF16 tiles (bfloat16 q, k, v; CPU inference), built into the same
// library as kernels.cpp (kernels.py compiles all); the op lives under torch.ops.paligemma_cpu.
//
//   attend_amx(q [B, N, T, H], k [B, K, S, H], v [B, K, S, H], mask bool [B, 1, T, S]?, scale)
//       -> out bfloat16 [B, N, T, H], a view of a [B, T, N, H] tensor (so the caller's
//       transpose(1, 2).reshape(B, T, N * H) is free). Query head n reads kv head n / (N / K).
//
// softmax(scale q k^T, masked) v, computed as PyTorch's CPU flash attention computes it for
// bfloat16: the scores' products in float32 (bfloat16 inputs), scaled and masked in float32, an
// online softmax per query row over blocks of 128 keys (each row's probabilities taken against a
// running reference m and summed in float32 as l; the earlier output sums rescaled when m moves),
// the probabilities rounded to bfloat16 for the second product, its sums in float32, each output
// divided by l and rounded to bfloat16 once. m moves only when a score passes it by 2^8 (in
// base 2: the softmax is the same for any reference; only roundings move), so the rescaling is
// rare; exp is 2^t by a degree-5 polynomial (relative error under 2.4e-7). A query row whose keys
// are all masked gets zeros. It differs from PyTorch's kernel in the sums' order and exp's last
// bits (tests/test_attend_amx.py holds both to a float64 softmax); a row's bits do not depend
// on the other rows of the call.
//
// Tiles: a unit is 16 query rows of one head. Scores, per 64 keys: 4 C tiles (16 rows x 16 keys,
// float32; tmm0..3) += A (16 rows x 32 dims of q, tmm4) x B (16 dim pairs x 16 keys, VNNI-2:
// dword [p][key] = dims 2p, 2p + 1 of that key; tmm5), over the head's dims padded to a multiple
// of 32 with zeros. Output: C (16 rows x 16 dims of the unit's float32 sums, loaded and stored
// around each block; tmm0) += A (16 rows x 32 keys of the probabilities; tmm2, 3, 4, 6) x B (16
// key pairs x 16 dims of v; tmm5, 7). k and v are re-laid out once per (b, kv head) into those
// B tiles (keys past S zero), so their tiles load with one stride. A thread takes runs of 8
// units of one kv head (a query block's heads of the group, then the next block's), each block
// of keys for all 8 in turn (k and v read from memory once per run), software-pipelined: a
// unit's softmax rows run between the next unit's score products, so the vector work overlaps
// the tile unit's.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define PG_ATT_X86 1
#endif

#include "amx_tile.h"

bool pg_amx_bf16_ready();  // dequant.cpp: AMX-BF16 and AVX512-BF16, the tiles granted

namespace {

constexpr int64_t kQ = 16;    // query rows a unit
constexpr int64_t kKB = 128;  // keys a block

// Sizes and pointers of one call.
struct Att {
  int64_t B, N, K, T, S, H, Hq, Ho, Sp;  // Hq: H up to a multiple of 32; Ho: of 16; Sp: S of kKB
  const uint16_t* q;                     // q bits; element (b, n, t, h) at b*qs[0] + ... + h
  int64_t qs[3];
  const uint32_t* kp;  // [B * K][Sp / 16][Hq / 2][16] dwords (pairs of dims of a key)
  const uint32_t* vp;  // [B * K][Sp / 2][Ho] dwords (pairs of keys of a dim)
  const bool* mask;    // element (b, t, s) at b*ms[0] + t*ms[1] + s, or nullptr
  int64_t ms[2];
  float scale;
  uint16_t* out;  // [B, T, N, H]
};

}  // namespace

#ifdef PG_ATT_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16")
namespace pg_att_amx {
namespace {

using vf = __m512;
constexpr float kLog2e = 1.4426950408889634f;
// Tile loads read memory the compiler does not see them read (GCC's tileloadd has no memory
// clobber): the vector stores before them must be done first.
#define PG_MEMORY() __asm__ volatile("" ::: "memory")

// 2^t (t <= 0 here), zero in the lanes off `keep`: t = n + f (n = round(t), |f| <= 1/2), 2^f
// by a degree-5 polynomial (minimax for the relative error: under 2.4e-7 evaluated in float32,
// far below the bfloat16 rounding the probabilities then take), times 2^n by vscalefps (0
// where 2^t underflows).
inline vf exp2_keep(__mmask16 keep, vf t) {
  const vf n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vf f = _mm512_sub_ps(t, n);
  vf p = _mm512_set1_ps(1.3276471e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6755419e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5507131e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022120e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314694e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

// 16 float32 -> 16 bfloat16 bits, nearest even.
inline __m256i to_bf16(vf f) { return (__m256i)_mm512_cvtneps_pbh(f); }

// The lanes of 16 (or 32) starting at c that fall below n.
inline __mmask16 below16(int64_t c, int64_t n) {
  const int64_t k = std::max<int64_t>(0, std::min<int64_t>(16, n - c));
  return __mmask16((1u << k) - 1);
}
inline __mmask32 below32(int64_t c, int64_t n) {
  const int64_t k = std::max<int64_t>(0, std::min<int64_t>(32, n - c));
  return k == 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << k) - 1);
}

// Keys [k0, k0 + 64) of (b, kv head) j into k's and v's B-tile layouts (the file's head): k's
// dim pairs gathered 16 keys at a time (dword p of a key: dims 2p, 2p + 1), v's rows interleaved
// in pairs of keys 32 dims at a time; dims past H and keys past S zero. (As element-by-element
// copies this took ~20% of SigLIP's attention at 448 px.)
void relayout(const Att& a, const at::Tensor& k, const at::Tensor& v, int64_t j, int64_t k0) {
  const int64_t b = j / a.K, g = j % a.K, end = std::min(a.S, k0 + 64);
  const auto* kb = reinterpret_cast<const uint16_t*>(k.data_ptr<c10::BFloat16>()) + b * k.stride(0) + g * k.stride(1);
  const auto* vb = reinterpret_cast<const uint16_t*>(v.data_ptr<c10::BFloat16>()) + b * v.stride(0) + g * v.stride(1);
  const int64_t ks = k.stride(2), vs = v.stride(2), whole = a.H / 2;
  uint32_t* kd = const_cast<uint32_t*>(a.kp) + j * a.Sp * a.Hq / 2;
  auto* vd = reinterpret_cast<uint16_t*>(const_cast<uint32_t*>(a.vp) + j * a.Sp / 2 * a.Ho);
  const __m512i keys = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(int32_t(ks)));  // u16 offsets of 16 keys
  for (int64_t s0 = k0; s0 < k0 + 64; s0 += 16) {
    uint32_t* d = kd + (s0 / 16) * (a.Hq / 2) * 16;  // [p][16 keys]
    const int64_t n = std::max<int64_t>(0, std::min<int64_t>(16, end - s0));
    const __mmask16 live = below16(s0, end);
    const uint16_t* base = kb + (n ? s0 * ks : 0);
    int64_t p = 0;
    for (; p < whole; ++p) {
      const __m512i at = _mm512_add_epi32(keys, _mm512_set1_epi32(int32_t(2 * p)));
      _mm512_store_si512(d + p * 16, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, at, base, 2));
    }
    for (; p < a.Hq / 2; ++p) {  // an odd H's last dim alone, then zeros
      for (int64_t x = 0; x < 16; ++x)
        d[p * 16 + x] = 2 * p < a.H && x < n ? uint32_t(base[x * ks + 2 * p]) : 0u;
    }
  }
  alignas(64) static const uint16_t order[64] = {
      0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39, 8,  40, 9,  41, 10, 42,
      11, 43, 12, 44, 13, 45, 14, 46, 15, 47, 16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53,
      22, 54, 23, 55, 24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo = _mm512_load_si512(order), hi = _mm512_load_si512(order + 32);
  for (int64_t s = k0; s < k0 + 64; s += 2) {
    uint16_t* e = vd + (s / 2) * a.Ho * 2;  // [h][2 keys]
    for (int64_t h0 = 0; h0 < a.Ho; h0 += 32) {
      const __mmask32 m = below32(h0, a.H);
      const __m512i x = s < end ? _mm512_maskz_loadu_epi16(m, vb + s * vs + h0) : _mm512_setzero_si512();
      const __m512i y = s + 1 < end ? _mm512_maskz_loadu_epi16(m, vb + (s + 1) * vs + h0) : _mm512_setzero_si512();
      _mm512_store_si512(e + 2 * h0, _mm512_permutex2var_epi16(x, lo, y));
      if (h0 + 16 < a.Ho) _mm512_store_si512(e + 2 * h0 + 32, _mm512_permutex2var_epi16(x, hi, y));
    }
  }
}

// One unit of work: 16 query rows of one head: its rows (bfloat16, dims padded to Hq), output
// sums [16][Ho], and per row the reference its probabilities are taken against (m, log2 units:
// p = 2^(scale log2(e) s - m)) and their running sum l.
struct Unit {
  int64_t b, n, t0, rows;
  uint16_t* q;
  float* o;
  float m[kQ], l[kQ];
};

// The scores of keys [k0, k0 + 64) of query rows q into s's columns [c0, c0 + 64) (s [16][kKB]),
// calling after() once the products of each 32 dims are issued (the vector work it does runs
// while the tile unit multiplies).
template <class After>
void scores64(const Att& a, const uint32_t* kp, int64_t k0, int64_t c0, const uint16_t* q, float* s,
              After&& after) {
  PG_MEMORY();
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t per = a.Hq / 2 * 16;  // dwords per 16 keys
  const uint32_t* base = kp + (k0 / 16) * per;
  for (int64_t c = 0; c < a.Hq / 32; ++c) {
    _tile_loadd(4, q + c * 32, a.Hq * 2);
    _tile_loadd(5, base + c * 256, 64);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(5, base + per + c * 256, 64);
    _tile_dpbf16ps(1, 4, 5);
    _tile_loadd(5, base + 2 * per + c * 256, 64);
    _tile_dpbf16ps(2, 4, 5);
    _tile_loadd(5, base + 3 * per + c * 256, 64);
    _tile_dpbf16ps(3, 4, 5);
    after();
  }
  _tile_stored(0, s + c0, kKB * 4);
  _tile_stored(1, s + c0 + 16, kKB * 4);
  _tile_stored(2, s + c0 + 32, kKB * 4);
  _tile_stored(3, s + c0 + 48, kKB * 4);
}

// The softmax step of keys [k0, k0 + kKB) for row r of unit u (scores s [kKB]): probabilities
// into p [kKB] (bfloat16), l updated; returns the factor for the row's earlier sums (1: none).
// The reference m moves only when a score passes it by more than kLazy (log2 units), so the
// probabilities stay under 2^kLazy and the earlier sums are rarely rescaled (the softmax is the
// same for any reference; only roundings move).
constexpr float kLazy = 8.f;
// tail: the block's keys below S, 16 a mask.
float softmax_row(const Att& a, Unit& u, int64_t k0, int64_t r, const float* s, uint16_t* p,
                  const __mmask16* tail) {
  constexpr int V = kKB / 16;
  __mmask16 keep[V];
  const int64_t tq = u.t0 + r;
  const bool* mrow = a.mask && tq < a.T ? a.mask + u.b * a.ms[0] + tq * a.ms[1] + k0 : nullptr;
  vf mx = _mm512_set1_ps(-INFINITY);
  for (int i = 0; i < V; ++i) {
    keep[i] = tail[i];
    if (mrow && keep[i]) {
      const __m128i bytes = _mm_maskz_loadu_epi8(keep[i], mrow + 16 * i);
      keep[i] &= _mm_test_epi8_mask(bytes, bytes);
    }
    mx = _mm512_mask_max_ps(mx, keep[i], mx, _mm512_load_ps(s + 16 * i));
  }
  const float c = a.scale * kLog2e, top = _mm512_reduce_max_ps(mx) * c;
  float alpha = 1.f;
  if (top > u.m[r] + kLazy) {  // (always, the first time a key is allowed)
    alpha = u.m[r] == -INFINITY ? 0.f : std::exp2(u.m[r] - top);
    u.m[r] = top;
  }
  if (u.m[r] == -INFINITY) {  // no key allowed yet: zeros
    std::memset(p, 0, kKB * 2);
    return 1.f;
  }
  const vf vc = _mm512_set1_ps(c), m = _mm512_set1_ps(u.m[r]);
  vf sum = _mm512_setzero_ps();
  for (int i = 0; i < V; ++i) {
    const vf e = exp2_keep(keep[i], _mm512_fmsub_ps(_mm512_load_ps(s + 16 * i), vc, m));
    sum = _mm512_add_ps(sum, e);
    _mm256_store_si256((__m256i*)(p + 16 * i), to_bf16(e));
  }
  u.l[r] = u.l[r] * alpha + _mm512_reduce_add_ps(sum);
  return alpha;
}

// o [16][Ho] += p [16][kKB] x v's keys [k0, k0 + kKB) (tile products over the dims, 16 at a time).
void add_values(const Att& a, const uint32_t* vp, int64_t k0, const uint16_t* p, float* o) {
  PG_MEMORY();
  _tile_loadd(2, p, kKB * 2);
  _tile_loadd(3, p + 32, kKB * 2);
  _tile_loadd(4, p + 64, kKB * 2);
  _tile_loadd(6, p + 96, kKB * 2);
  const uint32_t* v0 = vp + (k0 / 2) * a.Ho;  // keys k0 + 32 i on: v0 + 16 i Ho
  const int64_t vs = a.Ho * 4, q = 16 * a.Ho;
  for (int64_t c = 0; c < a.Ho; c += 16) {
    _tile_loadd(0, o + c, a.Ho * 4);
    _tile_loadd(5, v0 + c, vs);
    _tile_dpbf16ps(0, 2, 5);
    _tile_loadd(7, v0 + q + c, vs);
    _tile_dpbf16ps(0, 3, 7);
    _tile_loadd(5, v0 + 2 * q + c, vs);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(7, v0 + 3 * q + c, vs);
    _tile_dpbf16ps(0, 6, 7);
    _tile_stored(0, o + c, a.Ho * 4);
  }
  PG_MEMORY();  // (p's tile loads before the next item's stores into it)
}

// A unit's q rows into u.q (dims past H and rows past u.rows zero), its sums and softmax state
// cleared. (Vector copies: memcpy / memset calls of a row each took ~6% of SigLIP's time.)
void start(const Att& a, Unit& u) {
  for (int64_t r = 0; r < kQ; ++r) {
    const bool real = r < u.rows;  // rows past T: zeros (their address is not formed)
    const uint16_t* src = real ? a.q + u.b * a.qs[0] + u.n * a.qs[1] + (u.t0 + r) * a.qs[2] : a.q;
    for (int64_t h = 0; h < a.Hq; h += 32) {
      const __mmask32 m = real ? below32(h, a.H) : __mmask32(0);
      _mm512_store_si512(u.q + r * a.Hq + h, _mm512_maskz_loadu_epi16(m, src + h));
    }
  }
  for (int64_t i = 0; i < kQ * a.Ho; i += 16) _mm512_store_ps(u.o + i, _mm512_setzero_ps());
  for (int64_t r = 0; r < kQ; ++r) u.m[r] = -INFINITY, u.l[r] = 0.f;
}

// One (block of keys, unit) of a run: its softmax rows done so far (softmax_row in turn, the
// factors for the earlier sums kept), then the rescale and the second product.
struct Item {
  Unit* u;
  int64_t k0;
  float* s;     // its scores [16][kKB]
  uint16_t* p;  // its probabilities [16][kKB]
  int64_t done = 0;
  float alpha[kQ];
  __mmask16 tail[kKB / 16];

  void softmax_upto(const Att& a, int64_t rows) {
    if (done == 0 && rows > 0)
      for (int64_t i = 0; i < kKB / 16; ++i) tail[i] = below16(k0 + 16 * i, a.S);
    for (; done < rows; ++done)
      alpha[done] = softmax_row(a, *u, k0, done, s + done * kKB, p + done * kKB, tail);
  }
  void finish(const Att& a, const uint32_t* vp) {
    softmax_upto(a, kQ);
    for (int64_t r = 0; r < kQ; ++r) {
      if (alpha[r] == 1.f) continue;
      float* o = u->o + r * a.Ho;
      for (int64_t c = 0; c < a.Ho; c += 16)
        _mm512_store_ps(o + c, _mm512_mul_ps(_mm512_load_ps(o + c), _mm512_set1_ps(alpha[r])));
    }
    add_values(a, vp, k0, p, u->o);
  }
};

// Scores of the keys [k0, k0 + kKB) of unit u into s, the softmax rows of `prev` spread between
// their products (all of them by the end), when given.
void scores(const Att& a, const uint32_t* kp, int64_t k0, Unit& u, float* s, Item* prev) {
  const int64_t slots = a.Hq / 32 * 2;
  int64_t slot = 0;
  auto after = [&] {
    if (prev) prev->softmax_upto(a, ++slot * kQ / slots);
  };
  scores64(a, kp, k0, 0, u.q, s, after);
  scores64(a, kp, k0 + 64, 64, u.q, s, after);
}

// A run's (block of keys, unit) items in order, software-pipelined: item i + 1's scores are
// issued with item i's softmax rows between them, then item i's second product.
void run_items(const Att& a, const uint32_t* kp, const uint32_t* vp, Unit* run, int64_t n,
               float* const* s, uint16_t* const* p) {
  const int64_t items = (a.S + kKB - 1) / kKB * n;
  auto item = [&](int64_t i) { return Item{&run[i % n], i / n * kKB, s[i % 2], p[i % 2]}; };
  Item cur = item(0);
  scores(a, kp, cur.k0, *cur.u, cur.s, nullptr);
  for (int64_t i = 0; i < items; ++i) {
    if (i + 1 < items) {
      const Item next = item(i + 1);
      scores(a, kp, next.k0, *next.u, next.s, &cur);
      cur.finish(a, vp);
      cur = next;
    } else {
      cur.finish(a, vp);
    }
  }
}

// Unit u's outputs: the sums over l, rounded, into out [B, T, N, H].
void store_out(const Att& a, const Unit& u) {
  for (int64_t r = 0; r < u.rows; ++r) {
    const float inv = u.l[r] > 0.f ? 1.f / u.l[r] : 0.f;
    uint16_t* dst = a.out + ((u.b * a.T + u.t0 + r) * a.N + u.n) * a.H;
    const float* o = u.o + r * a.Ho;
    for (int64_t c = 0; c < a.Ho; c += 16) {
      const __m256i h = to_bf16(_mm512_mul_ps(_mm512_load_ps(o + c), _mm512_set1_ps(inv)));
      _mm256_mask_storeu_epi16(dst + c, below16(c, a.H), h);
    }
  }
}

constexpr int64_t kRun = 8;  // units that share one pass over a kv head's keys (in L2)

}  // namespace

// Units of (b, kv head j) ordered (query block, head of the group); a run: kRun of them in turn
// per block of keys, so each block of k and v is read from memory once per run.
void attend(const Att& a, const at::Tensor& k, const at::Tensor& v) {
  const int64_t chunks = a.Sp / 64;
  at::parallel_for(0, a.B * a.K * chunks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) relayout(a, k, v, i / chunks, i % chunks * 64);
  });
  const int64_t G = a.N / a.K, units = (a.T + kQ - 1) / kQ * G, runs = (units + kRun - 1) / kRun;
  at::parallel_for(0, a.B * a.K * runs, 1, [&](int64_t i0, int64_t i1) {
    configure_16x64();  // (amx_tile.h)
    std::vector<uint16_t> q(kRun * kQ * a.Hq + 32), pb(2 * kQ * kKB + 32);
    std::vector<float> o(kRun * kQ * a.Ho + 16), sb(2 * kQ * kKB + 16);
    auto align = [](auto* ptr) { return (decltype(ptr))((uintptr_t(ptr) + 63) & ~uintptr_t(63)); };
    Unit run[kRun];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t j = i / runs, u0 = i % runs * kRun, n = std::min(kRun, units - u0);
      const int64_t b = j / a.K;
      for (int64_t x = 0; x < n; ++x) {
        Unit& u = run[x];
        const int64_t unit = u0 + x;
        u.b = b, u.n = j % a.K * G + unit % G, u.t0 = unit / G * kQ;
        u.rows = std::min(kQ, a.T - u.t0);
        u.q = align(q.data()) + x * kQ * a.Hq;
        u.o = align(o.data()) + x * kQ * a.Ho;
        start(a, u);
      }
      const uint32_t* kp = a.kp + j * a.Sp * a.Hq / 2;
      const uint32_t* vp = a.vp + j * a.Sp / 2 * a.Ho;
      float* s[2] = {align(sb.data()), align(sb.data()) + kQ * kKB};
      uint16_t* p[2] = {align(pb.data()), align(pb.data()) + kQ * kKB};
      run_items(a, kp, vp, run, n, s, p);
      for (int64_t x = 0; x < n; ++x) store_out(a, run[x]);
    }
    _tile_release();
  });
}

}  // namespace pg_att_amx
#undef PG_MEMORY
#pragma GCC pop_options
#endif

namespace {

at::Tensor attend_amx(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const std::optional<at::Tensor>& mask_, double scale) {
  TORCH_CHECK(pg_amx_bf16_ready(), "attend_amx: no AMX-BF16 here (CPU or OS)");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attend_amx: q, k, v [B, heads, T, H]");
  for (const at::Tensor* t : {&q, &k, &v})
    TORCH_CHECK(t->scalar_type() == at::kBFloat16 && t->device().is_cpu() && t->stride(3) == 1,
                "attend_amx: bfloat16 CPU tensors, the head dim contiguous");
  const int64_t B = q.size(0), N = q.size(1), T = q.size(2), H = q.size(3);
  const int64_t K = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == K && v.size(2) == S &&
                  k.size(3) == H && v.size(3) == H && K > 0 && N % K == 0,
              "attend_amx: k, v [B, K, S, H] with K dividing q's heads");
  TORCH_CHECK(H > 0 && H <= 512 && S > 0, "attend_amx: head dim 1..512 and keys");
  Att a{};
  a.B = B, a.N = N, a.K = K, a.T = T, a.S = S, a.H = H;
  a.Hq = (H + 31) / 32 * 32, a.Ho = (H + 15) / 16 * 16, a.Sp = (S + kKB - 1) / kKB * kKB;
  TORCH_CHECK(scale > 0, "attend_amx: scale > 0");
  a.q = reinterpret_cast<const uint16_t*>(q.data_ptr<c10::BFloat16>());
  a.qs[0] = q.stride(0), a.qs[1] = q.stride(1), a.qs[2] = q.stride(2);
  at::Tensor mask;
  if (mask_ && mask_->defined()) {
    mask = *mask_;
    TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 4 && mask.size(1) == 1 &&
                    (mask.size(0) == B || mask.size(0) == 1) && mask.size(2) == T && mask.size(3) == S,
                "attend_amx: mask bool [B, 1, T, S]");
    if (mask.stride(3) != 1) mask = mask.contiguous();
    a.mask = mask.data_ptr<bool>();
    a.ms[0] = mask.size(0) == 1 ? 0 : mask.stride(0), a.ms[1] = mask.stride(2);
  }
  a.scale = float(scale);
  at::Tensor kp = at::empty({B * K * a.Sp * a.Hq / 2}, q.options().dtype(at::kInt));
  at::Tensor vp = at::empty({B * K * a.Sp / 2 * a.Ho}, q.options().dtype(at::kInt));
  a.kp = reinterpret_cast<const uint32_t*>(kp.data_ptr<int32_t>());
  a.vp = reinterpret_cast<const uint32_t*>(vp.data_ptr<int32_t>());
  at::Tensor out = at::empty({B, T, N, H}, q.options());
  a.out = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
#ifdef PG_ATT_X86
  pg_att_amx::attend(a, k, v);
#else
  TORCH_CHECK(false, "attend_amx: x86 only");
#endif
  return out.transpose(1, 2);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("attend_amx(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor", &attend_amx);
}
