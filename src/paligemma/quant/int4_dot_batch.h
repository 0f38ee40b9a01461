// int4 for 2 to 16 rows of x on AVX2 without VNNI (batched decoding): int4_dot_body.h's
// dot_block<MB, 4> with the same arithmetic, laid out for the 16 vector registers. Included by
// int4_dot_body.h inside pg_dot_avx2 only (PG_ISA 1, PG_VNNI 0), after its helpers. (No include
// guard: part of that one namespace.)
//
// As dot_block, 8 weight rows are read a dword at a time and every 8 x 8 dwords transposed, so
// that one broadcast word of x multiplies 8 output rows (lane l: row o + l). What differs:
//   - x is re-laid out once a call, each dword's two words for all MB rows side by side
//     ([I / 8][MB][2]), so a step's broadcasts read one base address at fixed offsets (in
//     dot_block each row's address was worked out with scalar adds, one a row and step);
//   - a group (a multiple of 64 inputs: 8 dwords) is a fixed sequence: 4 steps of pair16 sums
//     in int16 lanes (s16, one register a row of x, at most 8 rows at once), widened into int32
//     (acc, in memory), 4 more, widened, then per row the float step. dot_block's generic step
//     (counters for the widening and the group's end, tested each step) kept the loop from
//     being unrolled and its registers from holding the 8 rows' sums.
// The integer sums are exact and the float step per group and row is dot_block's group_sum in
// group order, so each output equals dot_block's (and the one-row loop's) bit for bit
// (test_int4_dot's rows-alone and bounds tests run both). Against dot_block, 8 rows, in one
// process (`ab_builds.py --base 2b01adf --in-process --rows 8 --isa 1 --vnni 0`, the AVX2 loop of
// a 2 vCPU AMX Xeon, weights from memory; results/amx-avx2-batch-ab-s41.json): 1.04-1.10x over
// the decoder's shapes and the head. Where GCC was left to schedule the unrolled steps it
// reassociated their adds and spilled most products (slower than dot_block): each step's sums
// are pinned in registers by an empty asm.

constexpr int kBatchRows = 8;  // rows of x whose int16 sums stay in registers at once

// One 8-dword chunk (64 inputs) of rows [m0, m0 + R): vt the chunk's 8 transposed dwords, xi the
// interleaved words of its first dword ([8][MB][2]), acc [MB] int32 vectors.
template <int MB, int R>
PG_INLINE void chunk_rows(const vi* vt, const int32_t* xi, int m0, vi* acc) {
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {  // 4 steps, then widen: 4 * 7680 < 2^15 (kSum16)
    vi s16[R];
    for (int r = 0; r < R; ++r) s16[r] = izero();
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const vi* w = vt + 4 * half + j;
      const int32_t* x = xi + ((4 * half + j) * MB + m0) * 2;
      const vi v = _mm256_load_si256(w), lo = lo4(v), hi = hi4(v);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        s16[r] = add16(s16[r], pair16(lo, hi, x + 2 * r));
        // each step's sum made then and there: GCC otherwise reassociates the 4 steps' adds
        // and keeps all their products live, spilling most of them (16 vector registers)
        __asm__("" : "+x"(s16[r]));
      }
    }
    for (int r = 0; r < R; ++r) acc[m0 + r] = widen(acc[m0 + r], s16[r]);
  }
}

template <int MB>
void dot_batch4(const Dot& d, int64_t o0, int64_t o1) {
  const int64_t nd = d.I / 8, stride = nd * 4, words = d.I / 4, chunks = d.group / 64;
  thread_local std::vector<int64_t> buf;  // x interleaved: [nd][MB] pairs of words
  buf.resize(nd * MB);
  for (int64_t b = 0; b < nd; ++b)
    for (int m = 0; m < MB; ++m) std::memcpy(&buf[b * MB + m], d.x4 + m * words + 2 * b, 8);
  const int32_t* xi = reinterpret_cast<const int32_t*>(buf.data());
  for (int64_t o = o0; o < o1; o += L) {
    const uint8_t* row[L];
    for (int l = 0; l < L; ++l) row[l] = d.q + std::min(o + l, d.O - 1) * stride;
    alignas(32) vi acc[MB];
    alignas(32) vf f[MB];
    vf sc[L];
    for (int m = 0; m < MB; ++m) f[m] = fzero();
    for (int64_t g = 0; g < d.G; ++g) {
      for (int m = 0; m < MB; ++m) acc[m] = izero();
      for (int64_t k = 0; k < chunks; ++k) {
        const int64_t c = (g * chunks + k) * L;  // the chunk's first dword
        alignas(32) vi vt[L];
        load_rows<kHint<4>>(row, c * 4, L, vt, d.q + (o + L) * stride + c * 4 * L);
        const int32_t* x = xi + c * MB * 2;
        constexpr int R = MB <= kBatchRows ? MB : MB / 2;  // (12, 16 rows: two halves)
        for (int m0 = 0; m0 < MB; m0 += R) chunk_rows<MB, R>(vt, x, m0, acc);
      }
      if (g % L == 0) group_scales(d, o, g, std::min<int64_t>(L, d.G - g), sc);
      for (int m = 0; m < MB; ++m)
        f[m] = group_sum(acc[m], d.off[m * d.G + g], sc[g % L], d.xs[m * d.G + g], f[m]);
    }
    const int64_t n = std::min<int64_t>(L, d.O - o);
    for (int m = 0; m < MB; ++m) {
      float out[L];
      fstore(out, f[m]);
      std::memcpy(d.out + m * d.O + o, out, n * sizeof(float));
    }
  }
}

// int4 on 2 to 16 rows with groups of whole 64-input chunks; false (nothing done) otherwise.
inline bool batch_call(int64_t mb, int bits, const Dot& d, int64_t o0, int64_t o1) {
  if (bits != 4 || mb < 2 || d.group % 64) return false;
  DOT_DISPATCH(mb, (dot_batch4<MB>(d, o0, o1)));
  return true;
}
