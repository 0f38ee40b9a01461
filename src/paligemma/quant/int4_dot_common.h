// What int4_dot.cpp (the ops, the dispatch, the scalar loop) and int4_dot_isa.cpp (the vector
// loops, one instruction set per compilation) share: the call's Dot, the loops' helpers, and
// each instruction set's entry points. Included before any target options, so everything
// defined here is compiled for the baseline CPU.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define PG_DOT_X86 1
#endif

#include "amx_tile.h"  // (int4_dot_amx.h's TileConfig)

#define PG_INLINE inline __attribute__((always_inline))

constexpr int64_t kDotRows = 16;    // rows of x per pass over the weights
constexpr int64_t kAmxRows = 8;     // vnni -1: AMX from this many rows of a pass (measured;
                                    // kernels.py AMX_ROWS)

// What one call reads: x quantised (xq as 4-byte words), its scales and sums, the weights.
struct Dot {
  const int32_t* x4;   // [M, I / 4]: 4 int8 activations per word (int4: permuted in 8s)
  const float* xs;     // [M, G] activation scales
  const int32_t* off;  // [M, G]: 8 (int4) or 128 (int8) * sum of the group's xq
  const uint8_t* q;    // [O, I / 2] (int4) or [O, I] (int8)
  const void* s;       // int4: [O, G]; int8: [O]
  int stype;           // the scales' dtype: 0 float32, 1 bfloat16, 2 float16
  int64_t I, G, group, O;
  float* out;  // [M, O]
};

alignas(64) inline constexpr float kOnes[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

inline float scale_at(const Dot& d, int64_t i) {
  if (d.stype == 1) return float(static_cast<const c10::BFloat16*>(d.s)[i]);
  if (d.stype == 2) return float(static_cast<const c10::Half*>(d.s)[i]);
  return static_cast<const float*>(d.s)[i];
}

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

// Where input i of a group lands in xq. order 1 (int4, VNNI): 8k + p -> 8k + [0, 4, 1, 5, 2, 6,
// 3, 7][p], the nibbles' order; order kc (int4, AMX): per chunk of kc, the even inputs, then the
// odd ones, as the panel holds the codes; order 0: in place.
inline int64_t placed(int64_t i, int64_t order) {
  static constexpr int kPlace[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  if (order == 1) return (i & ~int64_t(7)) + kPlace[i & 7];
  if (order == 0) return i;
  const int64_t p = i % order;
  return i - p + (p & 1) * (order / 2) + p / 2;
}

// Each loop's entry points (int4_dot_body.h inside a namespace of its own; AMX's in
// int4_dot_amx.h): the output rows [o0, o1) for mb rows; the activation quantiser of a span of
// groups and the bfloat16 output's conversion (int4_quantize_x.h).
#define PG_DOT_ENTRY_POINTS                                                      \
  void dot_tiles(int64_t mb, int bits, const Dot& d, int64_t o0, int64_t o1);   \
  void quantize_groups(const void* x, bool bf16, int64_t I, int64_t group, int32_t zero,      \
                       int64_t order, int64_t tiles, int64_t M, int64_t g0, int64_t g1,      \
                       int8_t* q, float* s, int32_t* off);                                 \
  void store_bf16(const float* src, uint16_t* dst, int64_t n);
namespace pg_dot_avx512vnni {
PG_DOT_ENTRY_POINTS
void amx_tiles(int64_t np, int bits, int64_t kc, const Dot& d, int64_t o0, int64_t o1);
}  // namespace pg_dot_avx512vnni
namespace pg_dot_avx512 { PG_DOT_ENTRY_POINTS }
namespace pg_dot_avxvnni { PG_DOT_ENTRY_POINTS }
namespace pg_dot_avx2 { PG_DOT_ENTRY_POINTS }
namespace pg_dot_scalar { PG_DOT_ENTRY_POINTS }
#undef PG_DOT_ENTRY_POINTS
