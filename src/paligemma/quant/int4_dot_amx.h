// int4_dot.cpp's AMX-INT8 loop, included in namespace pg_dot_avx512vnni after int4_dot_body.h
// (PG_ISA 2, PG_VNNI 1), under AVX-512 + AMX target options. Reads the body's vi / vf,
// group_scales and row_scales; defines amx_tiles.
//
// One TDPBUSD (int4: unsigned codes 0..15 x int8 activations) or TDPBSSD (int8: signed codes x
// int8) multiplies tile A, 16 output rows x KC input bytes (the weights, row-major: int8 codes
// straight from the saved layout with its row stride; int4 codes unpacked per call into a 16 x KC
// panel on the stack, the chunk's low nibbles then its high ones), by tile B, KC / 4 rows x NP
// dwords (the activations: 4 inputs a dword, column m from row m of x), into C, 16 x NP int32.
// KC (64, or 32 for groups of 32 * odd) divides the group, so a group's sums are whole in C
// after group / KC products. C is then stored and scaled with the VNNI loop's float operations
// on the same int32 sums (int4: minus 8 * sum xq; int8: TDPBSSD's sum is VNNI's sum of
// (code + 128) * xq minus 128 * sum xq), in the same order per element: bit-exact with it.
// A vector of C holds 16 / NP output rows x NP rows of x (lane l: output row l / NP, row of x
// l % NP), so the float step costs NP vectors per group, as in the VNNI loop.
//
// What the caller prepares (int4_dot.cpp, amx_x): Dot.x4 [I / KC][KC / 4][NP] dwords (B tiles,
// int4 inputs ordered as the panel: per chunk of KC, the even ones then the odd ones), Dot.xs
// and Dot.off [G][16] (lane l: row l % NP; int8: off 0).

#define PG_MEMORY() __asm__ volatile("" ::: "memory")  // tiles read / write memory unseen

// Four groups at a time, each in a C tile of its own (tmm0..3: [16][NP] int32) so that their
// products and stores overlap; A tiles ([16][KC] bytes) and B tiles ([KC / 4][NP] dwords)
// alternate between tmm4 / tmm6 and tmm5 / tmm7.
template <int NP, int KC>
void configure() {
  TileConfig c;
  for (int t = 0; t < 4; ++t) c.rows[t] = 16, c.colsb[t] = NP * 4;
  for (int t = 4; t < 6; ++t) c.rows[t] = 16, c.colsb[t] = KC;
  for (int t = 6; t < 8; ++t) c.rows[t] = KC / 4, c.colsb[t] = NP * 4;
  _tile_loadconfig(&c);
}

// The tile instructions name their registers in the instruction: one type per C tile T.
template <int T>
struct Tile;
#define PG_TILE(T, A, B)                                                               \
  template <>                                                                          \
  struct Tile<T> {                                                                     \
    static PG_INLINE void zero() { _tile_zero(T); }                                    \
    static PG_INLINE void load_a(const void* p, int64_t s) { _tile_loadd(A, p, s); }   \
    static PG_INLINE void load_b(const void* p, int64_t s) { _tile_loadd(B, p, s); }   \
    static PG_INLINE void dot_u8() { _tile_dpbusd(T, A, B); }                          \
    static PG_INLINE void dot_s8() { _tile_dpbssd(T, A, B); }                          \
    static PG_INLINE void store(void* p, int64_t s) { _tile_stored(T, p, s); }         \
  };
PG_TILE(0, 4, 6)
PG_TILE(1, 5, 7)
PG_TILE(2, 4, 6)
PG_TILE(3, 5, 7)
#undef PG_TILE

// The 16 rows' bytes [b, b + KC / BITS * 4) into panel [16][KC]: int4: the bytes' low nibbles
// (even inputs), then their high nibbles (odd inputs); int8: the codes as they are.
template <int BITS, int KC>
PG_INLINE void fill_panel(const uint8_t* const* row, int64_t b, uint8_t* panel) {
  for (int l = 0; l < 16; ++l) {
    const uint8_t* p = row[l] + b;
    if constexpr (BITS == 8) {
      std::memcpy(panel + l * KC, p, KC);
    } else if constexpr (KC == 64) {
      const __m256i v = _mm256_loadu_si256((const __m256i*)p);
      const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1);
      _mm512_store_si512(panel + l * 64, _mm512_and_si512(both, _mm512_set1_epi8(15)));
    } else {
      const __m128i v = _mm_loadu_si128((const __m128i*)p);
      const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
      _mm256_store_si256((__m256i*)(panel + l * 32), _mm256_and_si256(both, _mm256_set1_epi8(15)));
    }
  }
}

// f[v] += (C - off) * (scale * xs) for one group g, C in cbuf [16][NP]; sc: the group's scales
// over the 16 output rows (int4); lanes: idx[v] (output row of each lane).
template <int NP, int BITS>
PG_INLINE void scale_group(const Dot& d, int64_t g, const int32_t* cbuf, vf sc, const vi* idx,
                           vf* f) {
  const vi off = _mm512_loadu_si512(d.off + g * 16);
  const vf xs = _mm512_loadu_ps(d.xs + g * 16);
  for (int v = 0; v < NP; ++v) {
    const vf sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(cbuf + v * 16), off));
    const vf s = BITS == 4 ? _mm512_mul_ps(_mm512_permutexvar_ps(idx[v], sc), xs) : xs;
    f[v] = _mm512_fmadd_ps(sum, s, f[v]);
  }
}

// f (int8: times the row scales) to out [NP, O], output rows o..o + 16 (those below O).
template <int NP, int BITS>
PG_INLINE void store_rows(const Dot& d, int64_t o, const vi* idx, const vf* f) {
  alignas(64) float buf[16 * NP];  // [output row][row of x]
  const vf rs = BITS == 8 ? row_scales(d, o) : _mm512_set1_ps(1.f);
  for (int v = 0; v < NP; ++v)
    _mm512_store_ps(buf + v * 16, BITS == 8 ? _mm512_mul_ps(f[v], _mm512_permutexvar_ps(idx[v], rs)) : f[v]);
  const int64_t n = std::min<int64_t>(16, d.O - o);
  for (int m = 0; m < NP; ++m)
    for (int64_t l = 0; l < n; ++l) d.out[m * d.O + o + l] = buf[l * NP + m];
}

// Where a block's tile products read: its 16 weight rows (clamped to O - 1), their stride, and
// whether tile A loads them directly (int8 blocks of 16 whole rows) or through the panel.
struct Rows {
  const uint8_t* row[16];
  // The next 16 rows, prefetched into L2 at the pace these are read, where they lie within
  // 32 KB (I = 2,048): from memory, 8 rows, L2 rather than L1 int4 1.05-1.15x, int8 1.00-1.06x;
  // none at all 0.75-0.86x there but 1.14x for int4's 2,048 x 16,384 (whose 16 strided rows the
  // hardware follows), so wider rows (nullptr) take none (1.09x in a second run).
  const uint8_t* ahead;
  int64_t stride;
  bool direct;
};

// Chunk j of group g's sums into C tile T (zeroed first at j = 0), from panel slot T.
template <int T, int NP, int BITS, int KC>
PG_INLINE void chunk_sums(const Dot& d, const Rows& r, int64_t c, bool first, const uint8_t* panel) {
  constexpr int CB = BITS == 4 ? KC / 2 : KC;  // bytes of a weight row per chunk
  if (first) Tile<T>::zero();
  if (r.direct) {
    Tile<T>::load_a(r.row[0] + c * CB, r.stride);
  } else {
    Tile<T>::load_a(panel + T * 16 * KC, KC);
  }
  Tile<T>::load_b(d.x4 + c * (KC / 4) * NP, NP * 4);
  if constexpr (BITS == 4) {
    Tile<T>::dot_u8();
  } else {
    Tile<T>::dot_s8();
  }
}

// Chunk j of groups g..g + n - 1 (n <= 4) into panel slots 0..n - 1 (int4; int8 blocks of
// whole rows load tile A directly), prefetching the next 16 rows at the pace these are read.
template <int BITS, int KC>
PG_INLINE void fill_panels(const Dot& d, const Rows& r, int64_t g, int64_t j, int64_t n,
                           uint8_t* panel) {
  constexpr int CB = BITS == 4 ? KC / 2 : KC;
  const int64_t per = d.group / KC;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t c = (g + k) * per + j;
    if (r.ahead)
      for (int b = 0; b < 16 * CB; b += 64) __builtin_prefetch(r.ahead + c * 16 * CB + b, 0, 2);
    if (!r.direct) fill_panel<BITS, KC>(r.row, c * CB, panel + k * 16 * KC);
  }
}

// Chunk j of groups g..g + n - 1's products into C tiles 0..n - 1 (zeroed at j = 0), reading
// the panel that fill_panels wrote.
template <int NP, int BITS, int KC>
PG_INLINE void group_products(const Dot& d, const Rows& r, int64_t g, int64_t j, int64_t n,
                              const uint8_t* panel) {
  const int64_t per = d.group / KC;
  PG_MEMORY();
  chunk_sums<0, NP, BITS, KC>(d, r, g * per + j, j == 0, panel);
  if (n > 1) chunk_sums<1, NP, BITS, KC>(d, r, (g + 1) * per + j, j == 0, panel);
  if (n > 2) chunk_sums<2, NP, BITS, KC>(d, r, (g + 2) * per + j, j == 0, panel);
  if (n > 3) chunk_sums<3, NP, BITS, KC>(d, r, (g + 3) * per + j, j == 0, panel);
}

// The float steps of groups [k0, k1) (within one set of 4), in order, from their sums in cbuf;
// sc: the 16 group-scale vectors of the current 16 groups (int4), reloaded at each 16th.
template <int NP, int BITS>
PG_INLINE void scale_groups(const Dot& d, int64_t o, int64_t k0, int64_t k1,
                            int32_t (*cbuf)[4][16 * NP], vf* sc, const vi* idx, vf* f) {
  for (int64_t k = k0; k < k1; ++k) {
    if (BITS == 4 && k % 16 == 0) group_scales(d, o, k, std::min<int64_t>(16, d.G - k), sc);
    scale_group<NP, BITS>(d, k, cbuf[(k / 4) % 2][k % 4], sc[k % 16], idx, f);
  }
}

// C tiles 0..n - 1 to cbuf.
template <int NP>
PG_INLINE void store_sums(int64_t n, int32_t (*cbuf)[16 * NP]) {
  Tile<0>::store(cbuf[0], NP * 4);
  if (n > 1) Tile<1>::store(cbuf[1], NP * 4);
  if (n > 2) Tile<2>::store(cbuf[2], NP * 4);
  if (n > 3) Tile<3>::store(cbuf[3], NP * 4);
  PG_MEMORY();
}

// Output rows [o0, o1) (o0 a multiple of 16) for NP rows of x, 16 at a time, 4 groups (and one
// chunk of them) a step: the step's tile products from the panel filled during the step before
// (a double buffer: the tile loads read stores that have had the time to reach the cache, while
// the next panel is filled), then the float steps of the 4 groups before them, whose sums have
// had the time to reach memory. In one process against the single buffer (`ab_builds.py --base
// fb24114 --in-process --rows 1 8`, from memory): int8 8 rows 1.03-1.11x, int4 0.97-1.03x.
// Rows past O read row O - 1 (through the panel) and are not stored.
template <int NP, int BITS, int KC>
void amx_block(const Dot& d, int64_t o0, int64_t o1) {
  configure<NP, KC>();
  alignas(64) uint8_t panel[2][4 * 16 * KC];
  alignas(64) int32_t cbuf[2][4][16 * NP];
  vi idx[NP];
  const vi iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int v = 0; v < NP; ++v)
    idx[v] = _mm512_add_epi32(_mm512_set1_epi32(v * 16 / NP), _mm512_srli_epi32(iota, __builtin_ctz(NP)));
  Rows r;
  r.stride = d.I * BITS / 8;
  for (int64_t o = o0; o < o1; o += 16) {
    for (int l = 0; l < 16; ++l) r.row[l] = d.q + std::min(o + l, d.O - 1) * r.stride;
    r.ahead = 16 * r.stride <= 32768 ? d.q + (o + 16) * r.stride : nullptr;
    r.direct = BITS == 8 && o + 16 <= d.O;
    vf f[NP], sc[16];
    for (int v = 0; v < NP; ++v) f[v] = _mm512_setzero_ps();
    // Steps s = (4 groups from g, chunk j): the products of step s read the panel filled
    // during step s - 1 (the other half of `panel`), whose stores have had the time to reach
    // the cache; then step s + 1's panel is filled while the tiles multiply.
    const int64_t per = d.group / KC, steps = (d.G + 3) / 4 * per;
    fill_panels<BITS, KC>(d, r, 0, 0, std::min<int64_t>(4, d.G), panel[0]);
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t g = s / per * 4, j = s % per, n = std::min<int64_t>(4, d.G - g);
      group_products<NP, BITS, KC>(d, r, g, j, n, panel[s % 2]);
      if (s + 1 < steps) {
        const int64_t g1 = (s + 1) / per * 4;
        fill_panels<BITS, KC>(d, r, g1, (s + 1) % per, std::min<int64_t>(4, d.G - g1),
                              panel[(s + 1) % 2]);
      }
      if (j + 1 < per) continue;
      store_sums<NP>(n, cbuf[(g / 4) % 2]);
      if (g >= 4) scale_groups<NP, BITS>(d, o, g - 4, g, cbuf, sc, idx, f);  // the 4 before
    }
    scale_groups<NP, BITS>(d, o, (d.G - 1) / 4 * 4, d.G, cbuf, sc, idx, f);  // the last (<= 4)
    store_rows<NP, BITS>(d, o, idx, f);
  }
  _tile_release();
}

template <int BITS, int KC>
void amx_rows(int64_t np, const Dot& d, int64_t o0, int64_t o1) {
  switch (np) {
    case 1: return amx_block<1, BITS, KC>(d, o0, o1);
    case 2: return amx_block<2, BITS, KC>(d, o0, o1);
    case 4: return amx_block<4, BITS, KC>(d, o0, o1);
    case 8: return amx_block<8, BITS, KC>(d, o0, o1);
    default: return amx_block<16, BITS, KC>(d, o0, o1);
  }
}

// np: the rows of x (1, 2, 4, 8 or 16); kc: 64 or 32, dividing d.group.
void amx_tiles(int64_t np, int bits, int64_t kc, const Dot& d, int64_t o0, int64_t o1) {
  if (bits == 4) return kc == 64 ? amx_rows<4, 64>(np, d, o0, o1) : amx_rows<4, 32>(np, d, o0, o1);
  return kc == 64 ? amx_rows<8, 64>(np, d, o0, o1) : amx_rows<8, 32>(np, d, o0, o1);
}

#undef PG_MEMORY
