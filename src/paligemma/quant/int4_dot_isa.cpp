// int4_dot.cpp's vector loops, one instruction set per compilation: kernels.py compiles this
// file once for each PG_DOT_PART (1..4), in parallel, and links the objects with the rest.
// Each part is int4_dot_body.h (and, for AVX-512-VNNI, AMX's int4_dot_amx.h) inside that set's
// namespace, under its target options.
#include "int4_dot_common.h"

#ifdef PG_DOT_X86
#if PG_DOT_PART == 1
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")
namespace pg_dot_avx512vnni {  // AMX's loop too: it runs only where amx_ready()
#define PG_ISA 2
#define PG_VNNI 1
#include "int4_dot_body.h"
#include "int4_dot_amx.h"
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avx512vnni
#elif PG_DOT_PART == 2
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
namespace pg_dot_avx512 {
#define PG_ISA 2
#define PG_VNNI 0
#include "int4_dot_body.h"
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avx512
#elif PG_DOT_PART == 3
#pragma GCC target("avx2,fma,f16c,avxvnni")
namespace pg_dot_avxvnni {
#define PG_ISA 1
#define PG_VNNI 1
#include "int4_dot_body.h"
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avxvnni
#elif PG_DOT_PART == 4
#pragma GCC target("avx2,fma,f16c")
namespace pg_dot_avx2 {
#define PG_ISA 1
#define PG_VNNI 0
#include "int4_dot_body.h"
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_avx2
#endif
#endif
