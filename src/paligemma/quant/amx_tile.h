// The AMX tile configuration (palette 1) our tile kernels load, per thread and call: each tile's
// rows and bytes per row. int4_dot_amx.h sets its own tile shapes; dequant_amx.h and
// attend_amx.cpp take every tile as 16 rows of 64 bytes (configure_16x64). Included at file
// scope, before any target options.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Every tile (tmm0..7) 16 rows of 64 bytes: A, B and C alike.
__attribute__((target("amx-tile"))) inline void configure_16x64() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  _tile_loadconfig(&c);
}
#endif
