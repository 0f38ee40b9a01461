// One row of x on AVX2 without VNNI (batch-1 decoding): int4_dot_body.h's dot_block<1, BITS>
// computed another way, to the same bits. Included by int4_dot_body.h inside pg_dot_avx2 only
// (PG_ISA 1, PG_VNNI 0), after its helpers. (No include guard: part of that one namespace.)
//
// dot_block reads L = 8 weight rows a dword at a time and transposes every 8 x 8 dwords, so that
// a broadcast word of x multiplies 8 rows at once. Here each weight row's group is read as it
// lies (32 bytes at a time, no transposition), x's group lies in vectors shared by the 8 rows,
// and only the 8 rows' int32 group sums are reduced across lanes (row_sums: lane l = row o + l).
// Integer sums are exact in any order, and the float step per group and row is dot_block's
// (group_sum, in group order), so every output equals dot_block's bit for bit (test_int4_dot's
// rows-alone test compares the two). Measured on a 2-core AMD EPYC, one thread from cache: int8
// 34.6 GB/s against dot_block's 13.7; int4 16.6 against 16.5 (its nibble unpacking and the lane
// reduction cost what the transposition did; from memory over the decoder's layer shapes it
// measured 1.02-1.22x, processes alternating on a noisy host).
// int8 multiplies |w| by x with w's sign (int4_dot_body.h's signed_pairs, as dot_block's dot8 on
// this instruction set): the exact product, so its group sum needs no offset (kOffset8).
// int4 splits x's words into the nibbles' halves once a call (not once a group and block of 8
// rows), and reduces two rows' 16-bit products with one hadd_epi16 + one madd (pair_sums) before
// the lanes' reduction (pair_rows), where one madd per row and row_sums' six hadd_epi32 were:
// fewer multiplies and shuffles per byte, the same int32 sums. Against the previous loop in one
// process, alternating (`benchmarks/ab_builds.py --base 2baf5d4 --in-process`, 2 threads, from
// memory, same bits): 1.04-1.10x over the decoder's shapes, 1.01x on the output head; one
// thread from cache (a standalone build of both): 1.26x.

// a[l]: 8 int32 partial sums of row l -> one vector, lane l: the sum of a[l]'s lanes.
PG_INLINE __m256i row_sums(const __m256i* a) {
  const __m256i t0 = _mm256_hadd_epi32(a[0], a[1]), t1 = _mm256_hadd_epi32(a[2], a[3]);
  const __m256i t2 = _mm256_hadd_epi32(a[4], a[5]), t3 = _mm256_hadd_epi32(a[6], a[7]);
  const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

// int4: x words 2b .. 2b + 15 (b: the group's first dword of 8) -> xl = the even words (each
// dword's low nibbles' inputs), xh = the odd ones, in dword order.
PG_INLINE void split_words(const int32_t* x, __m256i& xl, __m256i& xh) {
  const __m256i even_odd = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256i a = _mm256_permutevar8x32_epi32(iload((const uint8_t*)x), even_odd);
  const __m256i b = _mm256_permutevar8x32_epi32(iload((const uint8_t*)(x + 8)), even_odd);
  xl = _mm256_permute2x128_si256(a, b, 0x20);
  xh = _mm256_permute2x128_si256(a, b, 0x31);
}

// one_row for one row of x where a row's group is 1, 2 or 4 whole vectors (int4: group 64, 128,
// 256; int8: 32, 64, 128); false (nothing done) otherwise.
template <int BITS, int V> void one_row(const Dot& d, int64_t o0, int64_t o1);
inline bool one_row_call(int64_t mb, int bits, const Dot& d, int64_t o0, int64_t o1) {
  const int64_t bytes = d.group / (bits == 4 ? 2 : 1);  // per row and group
  if (mb != 1 || bytes % 32) return false;
  switch (bytes / 32 * (bits == 4 ? 1 : -1)) {
    case 1: one_row<4, 1>(d, o0, o1); return true;
    case 2: one_row<4, 2>(d, o0, o1); return true;
    case 4: one_row<4, 4>(d, o0, o1); return true;
    case -1: one_row<8, 1>(d, o0, o1); return true;
    case -2: one_row<8, 2>(d, o0, o1); return true;
    case -4: one_row<8, 4>(d, o0, o1); return true;
    default: return false;
  }
}

// int4: rows l and l + 1's group products p0, p1 (int16, each lane the sum of 4 products) ->
// int32 partial sums, lanes [l, l, l + 1, l + 1 | the same]: hadd_epi16 adds a row's lanes in
// pairs first (|8 products| <= 8 * 15 * 127 < 2^15), so one madd serves two rows.
PG_INLINE __m256i pair_sums(__m256i p0, __m256i p1) {
  return _mm256_madd_epi16(_mm256_hadd_epi16(p0, p1), _mm256_set1_epi16(1));
}

// q[k]: pair_sums of rows 2k, 2k + 1 -> one vector, lane l: row l's sum.
PG_INLINE __m256i pair_rows(const __m256i* q) {
  const __m256i u0 = _mm256_hadd_epi32(q[0], q[1]), u1 = _mm256_hadd_epi32(q[2], q[3]);
  return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                          _mm256_permute2x128_si256(u0, u1, 0x31));
}

// Output rows [o0, o1) (o0 a multiple of 8) for one row of x; V 32-byte vectors per row and
// group (int4: group / 64; int8: group / 32). int4 splits x's words into its nibbles' halves
// once a call (split_words; int8 reads x's vectors as they lie).
template <int BITS, int V>
void one_row(const Dot& d, int64_t o0, int64_t o1) {
  constexpr int IB = BITS == 4 ? 8 : 4;              // inputs per dword
  const int64_t stride = d.I / IB * 4;               // bytes per weight row
  const __m256i ones = _mm256_set1_epi16(1);
  struct alignas(32) Vec { __m256i v; };
  std::vector<Vec> split(BITS == 4 ? 2 * d.G * V : 0);  // int4: 2V vectors per group
  for (int64_t b = 0; BITS == 4 && b < d.G * V; ++b)
    split_words(d.x4 + 16 * b, split[2 * b].v, split[2 * b + 1].v);
  for (int64_t o = o0; o < o1; o += L) {
    const uint8_t* row[L];
    for (int l = 0; l < L; ++l) row[l] = d.q + std::min(o + l, d.O - 1) * stride;
    // The next 8 rows (contiguous), prefetched at the pace these are read: 8 strided row
    // streams are a poor pattern for the hardware prefetchers.
    const uint8_t* ahead = d.q + (o + L) * stride;
    vf f = fzero(), sc[L];
    for (int64_t g = 0; g < d.G; ++g) {
      for (int64_t k = 0; k < 32 * L * V; k += 64) __builtin_prefetch(ahead + g * 32 * L * V + k, 0, 3);
      __m256i sums;  // lane l: row o + l's group sum
      if constexpr (BITS == 4) {  // two rows at a time (pair_sums)
        const Vec* xv = &split[2 * g * V];
        __m256i q[L / 2];
        for (int l = 0; l < L; l += 2) {
          __m256i acc = izero();
          for (int v = 0; v < V; ++v) {
            __m256i p[2];
            for (int h = 0; h < 2; ++h) {
              const __m256i c = iload(row[l + h] + (g * V + v) * 32);
              p[h] = _mm256_add_epi16(_mm256_maddubs_epi16(lo4(c), xv[2 * v].v),
                                      _mm256_maddubs_epi16(hi4(c), xv[2 * v + 1].v));
            }
            acc = iadd(acc, pair_sums(p[0], p[1]));
          }
          q[l / 2] = acc;
        }
        sums = pair_rows(q);
      } else {  // a row's group at a time: one live accumulator
        __m256i xv[V], a[L];
        for (int v = 0; v < V; ++v) xv[v] = iload((const uint8_t*)(d.x4 + (g * V + v) * 8));
        for (int l = 0; l < L; ++l) {
          const uint8_t* w = row[l] + g * V * 32;
          __m256i acc = izero();
          for (int v = 0; v < V; ++v) {
            const __m256i c = iload(w + 32 * v);
            acc = iadd(acc, _mm256_madd_epi16(signed_pairs(_mm256_abs_epi8(c), c, xv[v]), ones));
          }
          a[l] = acc;
        }
        sums = row_sums(a);
      }
      if (BITS == 4 && g % L == 0) group_scales(d, o, g, std::min<int64_t>(L, d.G - g), sc);
      const vf s = BITS == 4 ? sc[g % L] : fload(kOnes);
      f = group_sum(sums, BITS == 4 || kOffset8 ? d.off[g] : 0, s, d.xs[g], f);
    }
    const vf rs = BITS == 8 ? row_scales(d, o) : fload(kOnes);
    float buf[L];
    fstore(buf, fmul(f, rs));
    std::memcpy(d.out + o, buf, std::min<int64_t>(L, d.O - o) * sizeof(float));
  }
}
