// int4 (and int8) weights times int8 activations with integer dot products, for 1..16 rows of x
// (decoding, beams, the serving engine's batches), on the CPU. Built with kernels.cpp into one
// library.
//
// kernels.cpp's int4 loop widens every code to float and is compute-bound (~14 GB/s on 2 cores
// where int8 streams ~50). Here the activations are quantised per (row, group) to int8 (symmetric,
// dynamic) and each weight code meets its activation in an integer dot product: AVX-512-VNNI
// vpdpbusd, AVX-VNNI on AVX2 hosts that have it, maddubs + madd on plain AVX2 / AVX-512, or a
// scalar loop. Sums stay int32 within a group; each group is then scaled in float32.
//
// The weights are read in linear.py's saved layout, never copied: int4 q uint8[O, I/2] (byte j of
// row o: code[o, 2j] low nibble, code[o, 2j + 1] high; codes 0..15 for -8..7), int8 q int8[O, I].
// A pass loads L rows x L dwords (L = 16 output lanes for AVX-512, 8 for AVX2) and transposes
// the dwords in registers, so vector j holds dword j of each row: 8 int4 inputs (4 int8) per
// lane, the shape of vpdpbusd (u8 x s8, 4 products per 32-bit lane). Its low nibbles are the
// even inputs of the 8, its high nibbles the odd ones; x is permuted within each group of 8 to
// [0, 2, 4, 6, 1, 3, 5, 7] when it is quantised, so the two x words of dword j meet them. int8
// codes are flipped to code + 128 (unsigned) in the register, the offset removed per group.
//
//   int4_dot(x f32|bf16[M, I], q uint8[O, I/2], scale f32|bf16|f16[O, G], group, isa=-1,
//            vnni=-1, dtype=None) -> [M, O] in dtype (None: f32)         (G = I / group)
//       out[m, o] = sum_g scale[o, g] * xs[m, g] * sum_{i in g} (code[o, i] - 8) * xq[m, i]
//       xs[m, g] = max_{i in g} |x[m, i]| / 127,  xq[m, i] = round_half_even(x[m, i] / xs[m, g])
//   int8_dot(x, q int8[O, I], scale f32|bf16|f16[O], group, isa=-1, vnni=-1) -> f32[M, O]
//       the same for int8 weights (one scale per output row; `group`: the activations' groups)
//   int4_dots / int8_dots(x, q[], scale[], ...) -> [M, O_j] per weight: as one call each, with
//       x quantised once and all the weights' output rows shared out in one parallel region
//       (the projections that read the same x: q, k, v; gate, up). dtype: the outputs' (float32,
//       bfloat16 or float16), each value rounded once from its float32 result.
//   cpu_vnni() -> int: 1 when this CPU has AVX-VNNI, 2 AVX-512-VNNI, 3 both, 0 neither
//   cpu_amx() -> int: 1 when this CPU has AMX-INT8 and the OS grants this process its tiles
// isa: as kernels.cpp (2 AVX-512, 1 AVX2, 0 scalar); vnni: 2 AMX (int4_dot_amx.h; an error
// where there is none), 1 VNNI, 0 neither (for tests and comparisons), -1 the CPU's best (AMX
// for kAmxRows rows and more, where cpu_amx()), -2 the CPU's without AMX. AMX gives the VNNI
// path's results bit for bit (the same int32 sums per group, the same float steps).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "int4_dot_common.h"
#ifdef PG_DOT_X86
#include <cpuid.h>
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

int64_t pg_cpu_isa();  // kernels.cpp: the best instruction set of kernels.cpp's three
namespace {

// The rows a pass computes: mb rounded up to an instantiated width (padded rows are zeros).
int64_t padded_rows(int64_t mb) {
  for (int64_t w : {1, 2, 3, 4, 6, 8, 12}) if (mb <= w) return w;
  return 16;
}

}  // namespace

namespace pg_dot_scalar {
#define PG_ISA 0
#define PG_VNNI 0
#include "int4_dot_body.h"
#undef PG_VNNI
#undef PG_ISA
}  // namespace pg_dot_scalar

namespace {

int64_t cpu_vnni() {
#ifdef PG_DOT_X86
  __builtin_cpu_init();
  return (__builtin_cpu_supports("avxvnni") ? 1 : 0) |
         (__builtin_cpu_supports("avx512vnni") ? 2 : 0);
#else
  return 0;
#endif
}

// AMX-TILE and AMX-INT8 in CPUID (leaf 7, EDX bits 24, 25), and Linux's leave to use the tile
// data (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, once per process: it holds for
// all its threads). Elsewhere, or refused: false, and the VNNI loop runs.
bool amx_ready() {
  static const bool ready = [] {
#if defined(PG_DOT_X86) && defined(__linux__) && defined(SYS_arch_prctl)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || ((d >> 24) & 3) != 3) return false;
    constexpr int kReqXcompPerm = 0x1023, kXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
    return false;
#endif
  }();
  return ready;
}

int64_t cpu_amx() { return amx_ready() ? 1 : 0; }

}  // namespace

bool pg_amx_ready() { return amx_ready(); }  // (dequant_amx.h: AMX-BF16 needs the same leave)

namespace {

// Activations a thread quantises at least: passes over the threads from there (8 rows of a
// 16,384-wide input: one call on 16 output rows 211 -> 180 us on 2 threads of an AMX Xeon).
constexpr int64_t kQuantizeValues = 8192;

// x [M, I] -> xq (as words), xs, off for rows [0, M) of a pass of `rows` (rows >= M: zeros).
// off = zero * sum(xq): the codes' offset (8 for int4, 128 for int8) times the activations;
// order: placed's (int4_dot_common.h); tiles: 0, or AMX's B tiles of that many rows. The groups
// go over the threads, each thread all rows of its groups (a group's codes are its own: the same
// bits in any split; fewer than kQuantizeValues values stay on this thread; AMX's tiles
// interleave the rows' words, so a thread's stores fill whole cache lines), quantised by the
// instruction set's loop (int4_quantize_x.h). Against the loop before (a vector function per
// group, the codes placed one at a time, AMX's tiles transposed after), in one process
// (`ab_builds.py --base d677e2f --in-process`, 2 threads of an AMX Xeon, from memory): int4 at 8
// rows 1.08-1.11x on q/k/v, o and down_proj, 1.00x on the wide ones; int8 at 8 rows
// 1.05-1.07x; one row 1.00-1.03x (amx-quantize-vector-ab-s37.json).
void quantize_x(const at::Tensor& x, int64_t rows, int64_t group, int32_t zero, int64_t order,
                int64_t tiles, int64_t isa, int8_t* qp, float* sp, int32_t* op) {
  const int64_t M = x.size(0), I = x.size(1), G = I / group;
  auto quantize = &pg_dot_scalar::quantize_groups;
#ifdef PG_DOT_X86
  if (isa == 2) quantize = &pg_dot_avx512::quantize_groups;
  if (isa == 1) quantize = &pg_dot_avx2::quantize_groups;
#endif
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const void* xp = x.data_ptr();
  if (tiles && M < rows) std::memset(qp, 0, rows * I);  // the padded rows' columns
  at::parallel_for(0, G, std::max<int64_t>(1, kQuantizeValues / (group * M)), [&](int64_t g0,
                                                                                  int64_t g1) {
    quantize(xp, bf16, I, group, zero, order, tiles, M, g0, g1, qp, sp, op);
  });
  if (!tiles) std::memset(qp + M * I, 0, (rows - M) * I);
  std::fill(sp + M * G, sp + rows * G, 0.f);
  std::fill(op + M * G, op + rows * G, 0);
}

// Which loop runs: the instruction set (2, 1, 0), whether its VNNI runs, and AMX for passes of
// amx_from rows or more (kDotRows + 1: never).
struct Path {
  int64_t isa;
  bool vnni;
  int64_t amx_from;
};

// The output rows [o0, o1) (o0, o1 multiples of the path's lanes, or o1 = O) for mb rows; kc:
// AMX's chunk (0: no AMX).
void dot_rows(const Path& p, int64_t kc, int64_t mb, int bits, const Dot& d, int64_t o0,
              int64_t o1) {
#ifdef PG_DOT_X86
  if (kc) return pg_dot_avx512vnni::amx_tiles(mb, bits, kc, d, o0, o1);
  if (p.isa == 2 && p.vnni) return pg_dot_avx512vnni::dot_tiles(mb, bits, d, o0, o1);
  if (p.isa == 2) return pg_dot_avx512::dot_tiles(mb, bits, d, o0, o1);
  if (p.isa == 1 && p.vnni) return pg_dot_avxvnni::dot_tiles(mb, bits, d, o0, o1);
  if (p.isa == 1) return pg_dot_avx2::dot_tiles(mb, bits, d, o0, o1);
#endif
  pg_dot_scalar::dot_tiles(mb, bits, d, o0, o1);
}

// The loop for the caller's isa and vnni (the header's meanings).
Path path(int64_t isa, int64_t vnni) {
  const int64_t best = pg_cpu_isa(), has = cpu_vnni();
  TORCH_CHECK(isa <= best, "paligemma_cpu: this CPU has no path ", isa, " (best: ", best, ")");
  isa = isa < 0 ? best : isa;
  const bool can = (isa == 2 && (has & 2)) || (isa == 1 && (has & 1));
  TORCH_CHECK(vnni != 1 || can, "paligemma_cpu: this CPU has no VNNI for path ", isa);
  TORCH_CHECK(vnni != 2 || (isa == 2 && amx_ready()), "paligemma_cpu: no AMX for path ", isa,
              " (AMX needs path 2, a CPU with AMX-INT8 and the OS's leave)");
  const bool amx = vnni == 2 || (vnni == -1 && isa == 2 && amx_ready());
  return {isa, vnni < 0 ? can : vnni >= 1, amx ? (vnni == 2 ? 1 : kAmxRows) : kDotRows + 1};
}

// AMX's rows for mb rows of x: the next of its widths 1, 2, 4, 8, 16 (padded rows are zeros).
int64_t amx_rows(int64_t mb) {
  int64_t np = 1;
  while (np < mb) np *= 2;
  return np;
}

// One pass's activations as its loop reads them (kept alive for the Dot's pointers): quantised;
// for AMX (kc > 0) straight into B tiles q [I / kc][kc / 4][rows] dwords, int4 inputs ordered per
// chunk of kc as the panel, with s and off [G][16] (lane l: row l % rows; int8: off 0, as TDPBSSD
// multiplies the signed codes).
struct Xq {
  at::Tensor q, s, off;
};
Xq pass_x(const at::Tensor& x, int64_t rows, int64_t group, int bits, int64_t kc, int64_t isa) {
  const int64_t I = x.size(1), G = I / group;
  const auto opts = x.options();
  const at::Tensor q = kc ? at::empty({I / 4, rows}, opts.dtype(at::kInt))
                          : at::empty({rows, I}, opts.dtype(at::kChar));
  Xq r{q, at::empty({rows, G}, opts.dtype(at::kFloat)), at::empty({rows, G}, opts.dtype(at::kInt))};
  const int64_t order = bits == 8 ? 0 : (kc ? kc : 1);
  quantize_x(x, rows, group, bits == 4 ? 8 : 128, order, kc ? rows : 0, isa,
             (int8_t*)r.q.data_ptr(), r.s.data_ptr<float>(), r.off.data_ptr<int32_t>());
  if (kc == 0) return r;
  // AMX's s and off: lane l of group g from row l % rows.
  Xq t{r.q, at::empty({G, 16}, opts.dtype(at::kFloat)), at::empty({G, 16}, opts.dtype(at::kInt))};
  const float* s = r.s.data_ptr<float>();
  const int32_t* off = r.off.data_ptr<int32_t>();
  float* ts = t.s.data_ptr<float>();
  int32_t* toff = t.off.data_ptr<int32_t>();
  for (int64_t g = 0; g < G; ++g)
    for (int64_t l = 0; l < 16; ++l) {
      ts[g * 16 + l] = s[(l % rows) * G + g];
      toff[g * 16 + l] = bits == 4 ? off[(l % rows) * G + g] : 0;  // int8: TDPBSSD, no offset
    }
  return t;
}

// x as the quantiser reads it: contiguous bfloat16, or float32 (any other dtype converted).
at::Tensor activations(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 ? x.contiguous() : x.to(at::kFloat).contiguous();
}

int scale_type(const at::Tensor& s) {
  const auto t = s.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
              "int4_dot / int8_dot: scale must be float32, bfloat16 or float16");
  return t == at::kBFloat16 ? 1 : (t == at::kHalf ? 2 : 0);
}

void check(int bits, int64_t I, int64_t group, const at::Tensor& q, const at::Tensor& scale) {
  const int64_t O = q.size(0);
  TORCH_CHECK(q.dim() == 2 && q.size(1) * (bits == 4 ? 2 : 1) == I,
              "int", bits, "_dot: q must be ", bits == 4 ? "uint8[O, I/2]" : "int8[O, I]");
  TORCH_CHECK(q.scalar_type() == (bits == 4 ? at::kByte : at::kChar), "int", bits,
              "_dot: q must be ", bits == 4 ? "uint8" : "int8");
  TORCH_CHECK(group > 0 && group % 32 == 0 && I % group == 0,
              "int", bits, "_dot: the group size must be a multiple of 32 dividing in_features");
  TORCH_CHECK(bits == 8 || (scale.dim() == 2 && scale.size(0) == O &&
                            scale.size(1) == I / group),
              "int4_dot: scale must be [O, I/group]");
  TORCH_CHECK(bits == 4 || (scale.dim() == 1 && scale.size(0) == O),
              "int8_dot: scale must be [O]");
}

// Rows [m0, m0 + mb) of out (its dtype) from part's float rows, output columns [o0, o1);
// bfloat16 by the instruction set's loop (isa), with c10's rounding.
void store(const float* part, int64_t O, at::Tensor& out, int64_t m0, int64_t mb, int64_t o0,
           int64_t o1, int64_t isa) {
  if (out.scalar_type() == at::kBFloat16) {
    auto convert = &pg_dot_scalar::store_bf16;
#ifdef PG_DOT_X86
    if (isa == 2) convert = &pg_dot_avx512::store_bf16;
    if (isa == 1) convert = &pg_dot_avx2::store_bf16;
#endif
    uint16_t* to = (uint16_t*)out.data_ptr() + m0 * O;
    for (int64_t m = 0; m < mb; ++m) convert(part + m * O + o0, to + m * O + o0, o1 - o0);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kHalf, out.scalar_type(), "int4_dot", [&] {
    scalar_t* to = out.data_ptr<scalar_t>() + m0 * O;
    for (int64_t m = 0; m < mb; ++m)
      for (int64_t o = o0; o < o1; ++o) to[m * O + o] = scalar_t(part[m * O + o]);
  });
}

// x times each weight (qs[j], scales[j]): x quantised once per pass of up to kDotRows rows, the
// output rows of all weights shared out among the threads in one parallel region.
std::vector<at::Tensor> dot(const at::Tensor& x_, at::TensorList qs, at::TensorList scales,
                            int64_t group, int64_t isa_, int64_t vnni, int bits,
                            std::optional<at::ScalarType> dtype) {
  const int64_t I = x_.size(-1), n = int64_t(qs.size());
  TORCH_CHECK(x_.dim() == 2, "int", bits, "_dot: x must be [M, I]");
  TORCH_CHECK(n == int64_t(scales.size()), "int", bits, "_dot: one scale per weight");
  for (int64_t j = 0; j < n; ++j) check(bits, I, group, qs[j], scales[j]);
  const Path p = path(isa_, vnni);
  const at::Tensor x = activations(x_);
  const int64_t M = x.size(0), G = I / group, lanes = p.isa == 2 ? 16 : (p.isa == 1 ? 8 : 1);
  const auto out_type = dtype.value_or(at::kFloat);
  TORCH_CHECK(out_type == at::kFloat || out_type == at::kBFloat16 || out_type == at::kHalf,
              "int", bits, "_dot: dtype must be float32, bfloat16 or float16");
  std::vector<at::Tensor> q(n), scale(n), out(n);
  std::vector<int64_t> first(n + 1, 0);  // weight j: tiles [first[j], first[j + 1])
  for (int64_t j = 0; j < n; ++j) {
    q[j] = qs[j].contiguous(), scale[j] = scales[j].contiguous();
    out[j] = at::empty({M, q[j].size(0)}, x.options().dtype(out_type));
    first[j + 1] = first[j] + (q[j].size(0) + lanes - 1) / lanes;
  }
  for (int64_t m0 = 0; m0 < M && first[n] > 0; m0 += kDotRows) {
    const int64_t mb = std::min(kDotRows, M - m0), kc = mb < p.amx_from ? 0 : 64 - group % 64;
    const int64_t rows = kc ? amx_rows(mb) : padded_rows(mb);
    const Xq xq = pass_x(x.narrow(0, m0, mb), rows, group, bits, kc, p.isa);
    std::vector<at::Tensor> part(n);
    std::vector<Dot> d;
    const bool direct = rows == mb && out_type == at::kFloat;  // the float rows are the output
    for (int64_t j = 0; j < n; ++j) {
      const int64_t O = q[j].size(0);
      part[j] = direct ? out[j].narrow(0, m0, mb) : at::empty({rows, O}, x.options().dtype(at::kFloat));
      d.push_back({(const int32_t*)xq.q.data_ptr(), xq.s.data_ptr<float>(),
                   xq.off.data_ptr<int32_t>(), (const uint8_t*)q[j].data_ptr(),
                   scale[j].data_ptr(), scale_type(scale[j]), I, G, group, O,
                   part[j].data_ptr<float>()});
    }
    at::parallel_for(0, first[n], 64 / lanes, [&](int64_t t0, int64_t t1) {
      for (int64_t j = 0; j < n; ++j) {
        const int64_t lo = std::max(t0, first[j]), hi = std::min(t1, first[j + 1]);
        if (lo >= hi) continue;
        const int64_t o0 = (lo - first[j]) * lanes, o1 = std::min(d[j].O, (hi - first[j]) * lanes);
        dot_rows(p, kc, rows, bits, d[j], o0, o1);
        if (!direct) store(d[j].out, d[j].O, out[j], m0, mb, o0, o1, p.isa);
      }
    });
  }
  return out;
}

at::Tensor int4_dot(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                    int64_t group, int64_t isa, int64_t vnni, std::optional<at::ScalarType> dtype) {
  return dot(x, {q}, {scale}, group, isa, vnni, 4, dtype)[0];
}

at::Tensor int8_dot(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                    int64_t group, int64_t isa, int64_t vnni, std::optional<at::ScalarType> dtype) {
  return dot(x, {q}, {scale}, group, isa, vnni, 8, dtype)[0];
}

std::vector<at::Tensor> int4_dots(const at::Tensor& x, at::TensorList q, at::TensorList scale,
                                  int64_t group, int64_t isa, int64_t vnni,
                                  std::optional<at::ScalarType> dtype) {
  return dot(x, q, scale, group, isa, vnni, 4, dtype);
}

std::vector<at::Tensor> int8_dots(const at::Tensor& x, at::TensorList q, at::TensorList scale,
                                  int64_t group, int64_t isa, int64_t vnni,
                                  std::optional<at::ScalarType> dtype) {
  return dot(x, q, scale, group, isa, vnni, 8, dtype);
}

// The dot kernels' activation codes and scales for x [M, I] (float32 or bfloat16) on path isa
// (-1: the CPU's best), in x's order: for tests (every path the same bits as the scalar one).
std::tuple<at::Tensor, at::Tensor> quantize_activations(const at::Tensor& x_, int64_t group,
                                                        int64_t isa) {
  TORCH_CHECK(x_.dim() == 2, "quantize_activations: x must be [M, I]");
  const int64_t I = x_.size(1), G = I / std::max<int64_t>(group, 1);
  TORCH_CHECK(group > 0 && group % 32 == 0 && I % group == 0,
              "quantize_activations: the group size must be a multiple of 32 dividing I");
  const Path p = path(isa, -1);
  const at::Tensor x = activations(x_);
  const auto opts = x.options();
  at::Tensor q = at::empty({x.size(0), I}, opts.dtype(at::kChar));
  at::Tensor s = at::empty({x.size(0), G}, opts.dtype(at::kFloat));
  at::Tensor off = at::empty({x.size(0), G}, opts.dtype(at::kInt));
  quantize_x(x, x.size(0), group, 0, 0, 0, p.isa, q.data_ptr<int8_t>(), s.data_ptr<float>(),
             off.data_ptr<int32_t>());
  return {q, s};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
#define PG_DOT_ARGS "int group, int isa=-1, int vnni=-1, ScalarType? dtype=None)"
  m.def("int4_dot(Tensor x, Tensor q, Tensor scale, " PG_DOT_ARGS " -> Tensor", &int4_dot);
  m.def("int8_dot(Tensor x, Tensor q, Tensor scale, " PG_DOT_ARGS " -> Tensor", &int8_dot);
  m.def("int4_dots(Tensor x, Tensor[] q, Tensor[] scale, " PG_DOT_ARGS " -> Tensor[]", &int4_dots);
  m.def("int8_dots(Tensor x, Tensor[] q, Tensor[] scale, " PG_DOT_ARGS " -> Tensor[]", &int8_dots);
#undef PG_DOT_ARGS
  m.def("quantize_activations(Tensor x, int group, int isa=-1) -> (Tensor, Tensor)",
        &quantize_activations);
  m.def("cpu_vnni() -> int", &cpu_vnni);
  m.def("cpu_amx() -> int", &cpu_amx);
}
