// One row of x on AVX2 without VNNI (batch-1 decoding): int4_dot_body.h's dot_block<1, BITS>
// computed another way, to the same bits. Included by int4_dot_body.h inside pg_dot_avx2 only
// (PG_ISA 1, PG_VNNI 0), after its helpers. (No include guard: part of that one namespace.)
//
// dot_block reads L = 8 weight rows a dword at a time and transposes every 8 x 8 dwords, so that
// a broadcast word of x multiplies 8 rows at once. Here each weight row is read as it lies, 32
// bytes at a time with no transposition, in slabs of kRowSlab 32-byte chunks (512 bytes): a
// block of 8 rows takes each slab row after row (as int4_dot_slab.h does on AVX-512-VNNI), the
// chunks' products are kept, and afterwards only the 8 rows' int32 group sums are reduced across
// lanes (lane l = row o + l). Integer sums are exact in any order, and the float step per group
// and row is dot_block's (group_sum, in group order), so every output equals dot_block's bit for
// bit (test_int4_dot's rows-alone test compares the two). The next slab in read order is
// prefetched into L2 as a slab is read: the rows' next slab, else the next 8 rows' first.
// int8 multiplies |w| by x with w's sign (int4_dot_body.h's signed_pairs, as dot_block's dot8 on
// this instruction set): the exact product, so its group sum needs no offset (kOffset8).
// int4 splits x's words into the nibbles' halves once a call (not once a group and block of 8
// rows), and reduces two rows' 16-bit products with one hadd_epi16 + one madd (pair_sums) before
// the lanes' reduction (pair_rows), where one madd per row and row_sums' six hadd_epi32 were:
// fewer multiplies and shuffles per byte, the same int32 sums.
//
// History (each measured against the loop before it, the same bits): the first one-row loop
// (8 rows in lock step a group at a time) on a 2-core AMD EPYC, one thread from cache: int8 34.6
// GB/s against dot_block's 13.7, int4 16.6 against 16.5; from memory over the decoder's shapes
// 1.02-1.22x. int4's pair_sums (`ab_builds.py --base 2baf5d4 --in-process`, 2 threads, from
// memory): 1.04-1.10x over the decoder's shapes, 1.01x on the output head. The slabs with their
// L2 prefetch (session 38; no AVX2-only host lent, so measured on the AVX2 loop of a 2 vCPU AMX
// Xeon: `ab_builds.py --in-process --isa 1 --vnni 0`, 2 threads, from memory, bfloat16 output):
// int4 1.21-1.32x over the decoder's shapes and the head (without the prefetch the slabs
// measured 0.66-0.85x of the lock-step loop's speed; prefetching into L1 0.94-1.01x, slabs of 8
// or 32 chunks 0.88-1.00x of 16's); int8 in benchmarks/results/amx-avx2-row-slabs-ab-s38.json.

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

// One row of x where a row's group is 1, 2 or 4 whole vectors (int4: group 64, 128, 256; int8:
// 32, 64, 128); false (nothing done) otherwise.
template <int V> void slab_row4(const Dot& d, int64_t o0, int64_t o1);
template <int V> void slab_row8(const Dot& d, int64_t o0, int64_t o1);
inline bool one_row_call(int64_t mb, int bits, const Dot& d, int64_t o0, int64_t o1) {
  const int64_t bytes = d.group / (bits == 4 ? 2 : 1);  // per row and group
  if (mb != 1 || bytes % 32) return false;
  switch (bytes / 32 * (bits == 4 ? 1 : -1)) {
    case 1: slab_row4<1>(d, o0, o1); return true;
    case 2: slab_row4<2>(d, o0, o1); return true;
    case 4: slab_row4<4>(d, o0, o1); return true;
    case -1: slab_row8<1>(d, o0, o1); return true;
    case -2: slab_row8<2>(d, o0, o1); return true;
    case -4: slab_row8<4>(d, o0, o1); return true;
    default: return false;
  }
}

constexpr int64_t kRowSlab = 16;  // 32-byte chunks of a row per pass over 8 rows

// The slab's first chunk k0's prefetch distance: the rows' next slab, else the next 8 rows'
// first (rows past the weight's end are prefetches only).
inline int64_t slab_ahead(int64_t k0, int64_t K, int64_t stride) {
  return k0 + kRowSlab < K ? 32 * kRowSlab : L * stride - 32 * k0;
}

// Output rows [o0, o1) (o0 a multiple of 8) for one row of x, int4, V chunks a group: the
// chunks' int16 products [chunk][row] (4 KB), then per group and pair of rows pair_sums.
template <int V>
void slab_row4(const Dot& d, int64_t o0, int64_t o1) {
  const int64_t stride = d.I / 2, K = d.G * V;  // bytes per weight row, 32-byte chunks per row
  struct alignas(32) Vec { __m256i v; };
  std::vector<Vec> split(2 * K);  // chunk k: x's even words (2k), odd words (2k + 1)
  for (int64_t b = 0; b < K; ++b) split_words(d.x4 + 16 * b, split[2 * b].v, split[2 * b + 1].v);
  alignas(32) __m256i p[kRowSlab][L];
  for (int64_t o = o0; o < o1; o += L) {
    const uint8_t* row[L];  // rows past O read row O - 1 (not stored)
    for (int l = 0; l < L; ++l) row[l] = d.q + std::min(o + l, d.O - 1) * stride;
    vf f = fzero(), sc[L];
    int64_t g = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kRowSlab) {
      const int64_t nk = std::min(kRowSlab, K - k0);
      const int64_t ahead = slab_ahead(k0, K, stride);
      for (int l = 0; l < L; ++l) {
        const uint8_t* w = row[l] + 32 * k0;
        const Vec* xv = &split[2 * k0];
        for (int64_t k = 0; k < nk; ++k) {
          if (k % 2 == 0) __builtin_prefetch(w + 32 * k + ahead, 0, 2);  // into L2
          const __m256i c = iload(w + 32 * k);
          p[k][l] = _mm256_add_epi16(_mm256_maddubs_epi16(lo4(c), xv[2 * k].v),
                                     _mm256_maddubs_epi16(hi4(c), xv[2 * k + 1].v));
        }
      }
      for (int64_t k = 0; k < nk; k += V, ++g) {  // a group: V chunks
        __m256i q[L / 2];
        for (int l = 0; l < L; l += 2) {
          __m256i acc = izero();
          for (int v = 0; v < V; ++v) acc = iadd(acc, pair_sums(p[k + v][l], p[k + v][l + 1]));
          q[l / 2] = acc;
        }
        if (g % L == 0) group_scales(d, o, g, std::min<int64_t>(L, d.G - g), sc);
        f = group_sum(pair_rows(q), d.off[g], sc[g % L], d.xs[g], f);
      }
    }
    float buf[L];
    fstore(buf, f);
    std::memcpy(d.out + o, buf, std::min<int64_t>(L, d.O - o) * sizeof(float));
  }
}

// Output rows [o0, o1) (o0 a multiple of 8) for one row of x, int8, V chunks a group: each row's
// group sums over the slab ([group][row] int32 vectors), then per group row_sums.
template <int V>
void slab_row8(const Dot& d, int64_t o0, int64_t o1) {
  const int64_t stride = d.I, K = d.G * V;  // bytes per weight row, 32-byte chunks per row
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) __m256i a[kRowSlab / V][L];
  for (int64_t o = o0; o < o1; o += L) {
    const uint8_t* row[L];  // rows past O read row O - 1 (not stored)
    for (int l = 0; l < L; ++l) row[l] = d.q + std::min(o + l, d.O - 1) * stride;
    vf f = fzero();
    int64_t g = 0;
    for (int64_t k0 = 0; k0 < K; k0 += kRowSlab) {
      const int64_t nk = std::min(kRowSlab, K - k0), ahead = slab_ahead(k0, K, stride);
      const uint8_t* x = (const uint8_t*)(d.x4 + 8 * k0);
      for (int l = 0; l < L; ++l) {
        const uint8_t* w = row[l] + 32 * k0;
        for (int64_t k = 0; k < nk; k += V) {
          __m256i acc = izero();
          for (int v = 0; v < V; ++v) {
            if ((k + v) % 2 == 0) __builtin_prefetch(w + 32 * (k + v) + ahead, 0, 2);  // into L2
            const __m256i c = iload(w + 32 * (k + v));
            const __m256i p = signed_pairs(_mm256_abs_epi8(c), c, iload(x + 32 * (k + v)));
            acc = iadd(acc, _mm256_madd_epi16(p, ones));
          }
          a[k / V][l] = acc;
        }
      }
      for (int64_t k = 0; k < nk; k += V, ++g)
        f = group_sum(row_sums(a[k / V]), kOffset8 ? d.off[g] : 0, fload(kOnes), d.xs[g], f);
    }
    float buf[L];
    fstore(buf, fmul(f, row_scales(d, o)));
    std::memcpy(d.out + o, buf, std::min<int64_t>(L, d.O - o) * sizeof(float));
  }
}
