// What an int4 one-row loop could stream from memory on this CPU, by weight layout (not a test;
// a standalone C program, AVX-512-VNNI hosts only):
//
//     gcc -O3 -march=native -o /tmp/int4_layout_bound benchmarks/int4_layout_bound.c
//     /tmp/int4_layout_bound            # one thread; GB/s from L2 (1 MB) and from memory (1 GB)
//
// The loops read int4 codes (two a byte) and do the products of quant/int4_dot_body.h's one-row
// loop (low and high nibbles, two VPDPBUSD a 64-byte vector against broadcast activation words),
// without the group scales, in three layouts:
//   plain read:  the bytes summed (what one core can read at all);
//   saved rows:  the layout on disk and in memory today, [O, I / 2]: 16 rows of 1 KB read in lock
//                step, 64 bytes of each in turn, every 16 x 16 dwords transposed (64 shuffles)
//                so that a vector holds one dword of 16 rows, as dot_block does;
//   interleaved: 16 rows' dword c stored together (64 contiguous bytes), so a vector is loaded
//                as it lies: no transposition, one sequential stream.
// Each with the next rows prefetched into L1 (T0) or L2 (T1). Session 35's three runs on a 2 vCPU
// Intel Xeon with AMX: benchmarks/results/amx-int4-layout-bound-s35.txt, quoted in benchmarks/RESULTS.md.
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROW 1024  // bytes per weight row (2,048 inputs)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline __m512i products(__m512i acc, __m512i v, const int32_t* x) {
  const __m512i m = _mm512_set1_epi8(15);
  const __m512i lo = _mm512_and_si512(v, m), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
  acc = _mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(x[0]));
  return _mm512_dpbusd_epi32(acc, hi, _mm512_set1_epi32(x[1]));
}

// r[l] = 16 dwords of row l -> r[j] = dword j of rows 0..15 (as int4_dot_body.h's transpose).
static inline void transpose(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
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

static __m512i plain(const uint8_t* q, size_t n, const int32_t* x, int hint) {
  (void)x, (void)hint;
  __m512i a[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                  _mm512_setzero_si512()};
  for (size_t i = 0; i < n; i += 256)
    for (int k = 0; k < 4; ++k) a[k] = _mm512_add_epi32(a[k], _mm512_loadu_si512(q + i + 64 * k));
  return _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
}

#define PREFETCH(p, hint)                                                 \
  for (int k = 0; k < 1024; k += 64)                                      \
    if (hint) _mm_prefetch((const char*)(p) + k, _MM_HINT_T1);            \
    else _mm_prefetch((const char*)(p) + k, _MM_HINT_T0);

static __m512i saved_rows(const uint8_t* q, size_t n, const int32_t* x, int hint) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
  for (size_t b = 0; b < n; b += 16 * ROW) {
    for (int c = 0; c < ROW; c += 64) {
      PREFETCH(q + b + 16 * ROW + 16 * c, hint);  // the next block, at the pace of this one
      __m512i v[16];
      for (int l = 0; l < 16; ++l) v[l] = _mm512_loadu_si512(q + b + l * ROW + c);
      transpose(v);
      for (int j = 0; j < 16; ++j) acc[j & 3] = products(acc[j & 3], v[j], x + 2 * (c / 4 + j));
    }
  }
  return _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
}

static __m512i interleaved(const uint8_t* q, size_t n, const int32_t* x, int hint) {
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
  for (size_t b = 0; b < n; b += 16 * ROW) {
    for (int c = 0; c < ROW; c += 64) {
      const uint8_t* p = q + b + 16 * c;  // dwords c / 4 .. c / 4 + 15 of the 16 rows
      PREFETCH(p + 8192, hint);
      for (int j = 0; j < 16; ++j)
        acc[j & 3] = products(acc[j & 3], _mm512_loadu_si512(p + 64 * j), x + 2 * (c / 4 + j));
    }
  }
  return _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
}

typedef __m512i (*loop)(const uint8_t*, size_t, const int32_t*, int);

int main(void) {
  const size_t big = (size_t)1 << 30, small = (size_t)1 << 20, pad = (size_t)64 << 20;
  uint8_t* buf = aligned_alloc(4096, big + pad);
  if (!buf) return 1;
  memset(buf, 0x5a, big + pad);
  int32_t x[ROW / 2];
  for (int i = 0; i < ROW / 2; ++i) x[i] = (int32_t)(i * 2654435761u);
  const loop loops[] = {plain, saved_rows, saved_rows, interleaved, interleaved};
  const int hints[] = {0, 0, 1, 0, 1};
  const char* names[] = {"plain read", "saved rows, T0", "saved rows, T1", "interleaved, T0",
                         "interleaved, T1"};
  volatile int sink = 0;
  printf("one thread, GB/s of codes read (best of 3)\n");
  for (int w = 0; w < 5; ++w) {
    double gbs[2];
    for (int s = 0; s < 2; ++s) {
      const size_t n = s ? big : small;
      const int calls = s ? 2 : 2000;
      double best = 1e30;
      for (int r = 0; r < 3; ++r) {
        const double t0 = now();
        for (int i = 0; i < calls; ++i) sink += _mm512_reduce_add_epi32(loops[w](buf, n, x, hints[w]));
        const double t = (now() - t0) / calls;
        if (t < best) best = t;
      }
      gbs[s] = n / best / 1e9;
    }
    printf("  %-18s from L2 %6.1f   from memory %5.1f\n", names[w], gbs[0], gbs[1]);
  }
  free(buf);
  return sink & 0;
}
