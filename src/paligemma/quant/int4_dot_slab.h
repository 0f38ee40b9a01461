// One row of x on AVX-512-VNNI for int4 (batch-1 decoding): int4_dot_body.h's dot_block<1, 4>
// with the weight read row after row, to the same bits. Included by int4_dot_body.h inside
// pg_dot_avx512vnni only (PG_ISA 2, PG_VNNI 1), after its helpers. (No include guard: part of
// that one namespace.)
//
// dot_block reads 16 weight rows in lock step, 64 bytes of each in turn, and transposes every
// 16 x 16 dwords so that a broadcast word of x multiplies 16 rows at once. Here each row's slab
// of kSlab 64-byte chunks (1 KB) is read as it lies, one row after the other, multiplied by x's
// words split into the nibbles' halves once a call, and the chunks' int32 partial sums (16 rows
// x 16 lanes) are reduced to the rows' group sums afterwards (half_sums: 30 shuffles a KB instead
// of the transposition's 64). Integer sums are exact in any order, and the float step per group
// and row is dot_block's (group_sum, in group order, the same group_scales), so every output
// equals dot_block's bit for bit (test_int4_dot compares every path with a float64 product and
// each row alone with it in a batch).
//
// Measured on a 2 vCPU AMX Xeon, in one process against dot_block (`benchmarks/ab_builds.py
// --base 24edaba --in-process`, from memory, 2 threads): 1.07-1.15x over the decoder's shapes
// and the output head. A first version that kept the 16 group-scale vectors in registers across
// the loop, held 16 row pointers and left whole slabs rolled measured 0.92-1.06x.
// The next slab in read order is prefetched into L2 (session 36, `ab_builds.py --in-process`,
// against no prefetch): rows of several slabs (down_proj's 2,048 x 16,384) 1.14x; rows of one,
// the next 16 rows' (I = 2,048: q/k/v, o, gate/up and the head) 1.10-1.17x.

constexpr int64_t kSlab = 16;  // 64-byte chunks of a row per pass over 16 rows

// v[r]: 16 int32 partial sums of row r -> a, b: lane r = the sum of v[r]'s lanes 0..7 (a) and
// 8..15 (b), i.e. of the chunk's first and second 32 bytes.
PG_INLINE void half_sums(const __m512i* v, __m512i& a, __m512i& b) {
  __m512i w[8], x[4], y[2];
  for (int p = 0; p < 8; ++p)  // 128-bit lane: [r0 0+2, r1 0+2, r0 1+3, r1 1+3], r = 2p, 2p+1
    w[p] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * p], v[2 * p + 1]),
                            _mm512_unpackhi_epi32(v[2 * p], v[2 * p + 1]));
  for (int p = 0; p < 4; ++p)  // 128-bit lane j: rows 4p..4p + 3, their lanes 4j..4j + 3
    x[p] = _mm512_add_epi32(_mm512_unpacklo_epi64(w[2 * p], w[2 * p + 1]),
                            _mm512_unpackhi_epi64(w[2 * p], w[2 * p + 1]));
  for (int p = 0; p < 2; ++p)  // [rows 8p..+3: a, b | rows 8p + 4..+7: a, b]
    y[p] = _mm512_add_epi32(_mm512_shuffle_i32x4(x[2 * p], x[2 * p + 1], 0x88),
                            _mm512_shuffle_i32x4(x[2 * p], x[2 * p + 1], 0xDD));
  a = _mm512_shuffle_i32x4(y[0], y[1], 0x88);
  b = _mm512_shuffle_i32x4(y[0], y[1], 0xDD);
}

// One 64-byte chunk of a weight row times x's split words (xv[0]: the low nibbles', xv[1]: the
// high nibbles'): 16 int32 partial sums, 8 per 32 bytes.
PG_INLINE __m512i chunk_sums(const uint8_t* w, const __m512i* xv) {
  const __m512i c = iload(w);
  return dpbusd(dpbusd(izero(), lo4(c), xv[0]), hi4(c), xv[1]);
}

// The products of one slab: sums[k][l] for rows l (row l at first + l * stride), chunks k < nk
// (NK, when nonzero, is nk known at compile time: the loop unrolled).
template <int NK>
PG_INLINE void slab_products(const uint8_t* first, int64_t stride, const __m512i* xv,
                             __m512i (*sums)[L], int64_t nk, int64_t ahead) {
  const int64_t n = NK ? NK : nk;
  for (int l = 0; l < L; ++l, first += stride) {
#pragma GCC unroll 16
    for (int64_t k = 0; k < n; ++k) {
      if (NK && ahead) __builtin_prefetch(first + 64 * k + ahead, 0, 2);  // into L2
      sums[k][l] = chunk_sums(first + 64 * k, xv + 2 * k);
    }
  }
}

// Output rows [o0, o1) (o0 a multiple of 16) for one row of x: int4, a group of 64 inputs or a
// multiple of 128, rows of whole 64-byte chunks (I a multiple of 128).
inline void slab_rows(const Dot& d, int64_t o0, int64_t o1) {
  const int64_t K = d.I / 128, stride = d.I / 2;  // chunks, bytes per weight row
  const int64_t per_group = d.group / 128;        // chunks per group (0: two groups a chunk)
  struct alignas(64) Vec { __m512i v; };
  std::vector<Vec> xs(2 * K);  // chunk k: x's words 2b (lo nibbles) and 2b + 1, b = 16k + lane
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t k = 0; k < K; ++k) {
    const __m512i a = iload((const uint8_t*)(d.x4 + 32 * k));
    const __m512i b = iload((const uint8_t*)(d.x4 + 32 * k + 16));
    xs[2 * k].v = _mm512_permutex2var_epi32(a, even, b);
    xs[2 * k + 1].v = _mm512_permutex2var_epi32(a, odd, b);
  }
  const __m512i* xv = &xs[0].v;
  alignas(64) __m512i sums[kSlab][L];  // [chunk][row]
  alignas(64) float sc[L][L];          // the scales of groups g0..g0 + 15, one vector a group
  for (int64_t o = o0; o < o1; o += L) {
    // Rows are walked by stride; the last block's rows past O read row O - 1 (as dot_block).
    const bool full = o + L <= d.O;
    vf f = fzero();
    __m512i acc = izero();  // a group of several chunks: its sum so far
    int64_t g = 0;
    auto step = [&](__m512i s) __attribute__((always_inline)) {
      if (g % L == 0) {
        vf t[L];
        group_scales(d, o, g, std::min<int64_t>(L, d.G - g), t);
        for (int k = 0; k < L; ++k) fstore(sc[k], t[k]);
      }
      f = group_sum(s, d.off[g], fload(sc[g % L]), d.xs[g], f);
      ++g;
    };
    for (int64_t k0 = 0; k0 < K; k0 += kSlab) {
      const int64_t nk = std::min(kSlab, K - k0);
      // The same chunks of the next slab in read order prefetched into L2 as these are read:
      // the rows' next slab (rows of several: 16 strided streams), else the next 16 rows' first
      // (I = 2,048: 16 KB ahead; into L1 that measured 0.90-0.99x).
      const int64_t ahead = k0 + kSlab < K ? 64 * kSlab : L * stride - 64 * k0;
      if (full && nk == kSlab) {
        slab_products<kSlab>(d.q + o * stride + 64 * k0, stride, xv + 2 * k0, sums, nk, ahead);
      } else if (full) {
        slab_products<0>(d.q + o * stride + 64 * k0, stride, xv + 2 * k0, sums, nk, 0);
      } else {
        for (int l = 0; l < L; ++l) {
          const uint8_t* w = d.q + std::min(o + l, d.O - 1) * stride + 64 * k0;
          for (int64_t k = 0; k < nk; ++k) sums[k][l] = chunk_sums(w + 64 * k, xv + 2 * (k0 + k));
        }
      }
      for (int64_t k = 0; k < nk; ++k) {
        __m512i a, b;
        half_sums(sums[k], a, b);
        if (per_group == 0) {
          step(a), step(b);
        } else {
          acc = iadd(acc, iadd(a, b));
          if ((k0 + k + 1) % per_group == 0) step(acc), acc = izero();
        }
      }
    }
    float buf[L];
    fstore(buf, f);
    std::memcpy(d.out + o, buf, std::min<int64_t>(L, d.O - o) * sizeof(float));
  }
}

// slab_rows where it applies (one row of x, int4, its group and width); false otherwise.
inline bool slab_call(int64_t mb, int bits, const Dot& d, int64_t o0, int64_t o1) {
  if (mb != 1 || bits != 4 || d.I % 128 || (d.group != 64 && d.group % 128)) return false;
  slab_rows(d, o0, o1);
  return true;
}
