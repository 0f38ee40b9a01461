// Quantised prefill without an expanded weight: int8 / int4 codes dequantised a tile of output
// rows at a time into a reused scratch buffer that feeds PyTorch's GEMM (bfloat16 on AMX goes
// through oneDNN), so a prefill never allocates or writes the whole float matrix. Built into
// the same library as kernels.cpp (kernels.py compiles both); ops under torch.ops.paligemma_cpu.
//
//   dequantize_rows(q, scale, bits, group, out f32|bf16[R, I], start, isa=-1) -> ()
//       out[r] = weight row start + r, exactly as linear.py's dequantize(start, start + R)
//       .to(out.dtype): code (int8; int4: nibble - 8) * scale in float32, rounded (to nearest
//       even) to the scale's dtype, then to out's
//   dequant_mm(x f32|bf16[M, I], q, scale, bits, group, tile, isa=-1, amx=-1, f32=0)
//           -> x.dtype[M, O]
//       x @ W.T with W dequantised `tile` output rows at a time into a [tile, I] buffer per
//       thread, each thread running the GEMMs of its own tiles; tile < 0: |tile| rows at a time
//       by all threads, then one GEMM on all threads (an A/B alternative: bench_quant_prefill).
//       bfloat16 x on AMX-BF16 (dequant_amx.h; isa 2, I and the int4 group multiples of 32, tile
//       > 0): the codes dequantised straight into the tiles' GEMM instead; amx 0 never, 1 where
//       the shapes allow (an error without AMX-BF16), -1 where the CPU has it. f32 1 (bfloat16
//       x, for CPUs without a fast bfloat16 GEMM): the codes dequantised to float32 holding the
//       bfloat16 path's values, |tile| rows at a time, into our float32 GEMM's panels
//       (f32_gemm.h; isa 1, 2; isa 0: PyTorch's float32 GEMM per tile), rounded to bfloat16 once
//   bf16_mm(x bf16[M, I], w bf16[O, I], bias f32[O]?, tile, gelu=False) -> bf16[M, O]
//       x @ w.T (+ bias) on the same AMX-BF16 GEMM, w's rows copied into its panels (no
//       dequantisation): float32 sums, the bias added in float32, one rounding; I a multiple
//       of 32, an error without AMX-BF16 (the plain bfloat16 prefill: matvec.py); gelu=True:
//       gelu_tanh of it, bit for bit as gelu_tanh_ after bf16_mm, applied to each span's
//       rounded outputs before they leave the thread (SigLIP's fc1 prefill: gelu.py)
//   bf16_mms(x bf16[M, I], ws bf16[O_j, I] list, biases (f32[O_j] or None) list, tile)
//       -> [bf16[M, O_j]]: bf16_mm for each weight, bit for bit, in one call: x re-laid out
//       once, the threads taking spans of all the weights' outputs (gemma.project's q, k, v)
//   dequant_mms(x bf16[M, I], qs, scales, bits, group, tile) -> [bf16[M, O_j]]: dequant_mm's
//       AMX path (amx=1) for each int8 / int4 weight, bit for bit, in one call as bf16_mms
//   bf16_geglu(x bf16[M, I], w_gate bf16[O, I], w_up bf16[O, I], tile) -> bf16[M, O]
//       gelu_tanh(x @ w_gate.T) * (x @ w_up.T), GeGLU's hidden layer, bit for bit as bf16_mm
//       twice and gelu_tanh_(gate, up) round it, with the GELU and the product applied to each
//       span's float32 sums before they leave the thread (no gate / up tensors written and
//       read back); the same shapes and errors as bf16_mm (Gemma's MLP prefill: gelu.py)
//   dequant_geglu(x bf16[M, I], q_gate, scale_gate, q_up, scale_up, bits, group, tile)
//       -> bf16[M, O]: the same from int8 / int4 codes, bit for bit as dequant_mm's AMX path
//       twice (amx=1) and gelu_tanh_ round it
//   f32_mm(x bf16[M, I], w bf16[O, I], bias?, tile, isa=-1) -> bf16[M, O]
//       x @ w.T (+ bias) in float32 products: w's rows widened into our float32 GEMM's panels,
//       `tile` output columns per block (f32_gemm.h; isa 0: widened `tile` rows at a time for
//       PyTorch's float32 GEMM), the bias added in float32, one rounding (the plain bfloat16
//       prefill where the CPU has no fast bfloat16 GEMM: matvec.py). On isa 1 and 2 each
//       element's sum is one FMA chain in k's order: the same bits for any row count or tile
//       (f32=1 too)
//   cpu_amx_bf16() -> int: 1 when dequant_mm and bf16_mm can take AMX-BF16 tiles (CPU and OS)
//
//   (quantize.cpp, in the same library, has the quantiser that loading runs: quantize_isa)
//
//   q: int8[O, I] (bits 8, scale f32|bf16[O]) or uint8[O, I/2] (bits 4, two codes per byte,
//   low nibble first, scale f32|bf16[O, I/group]); isa: 2 AVX-512, 1 AVX2, 0 scalar, -1 best.
//
// The row loops live in dequant_rows.h, included three times under GCC target pragmas
// (dequant_isa.h has each path's vector helpers); int4 groups that are not a multiple of 32 take
// the element loop on every path.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <memory>
#include <tuple>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <cpuid.h>
#include <immintrin.h>
#define PG_DQ_X86 1
#endif

#include "amx_tile.h"  // (dequant_amx.h's tile configuration)

namespace {

// float -> bfloat16 bits: PyTorch's own conversion (round to nearest even; NaN -> 0x7fc0)
inline uint16_t bf16_bits(float f) { return c10::detail::round_to_nearest_even(f); }

// One weight value to dst[i]: rounded to bfloat16 first when `round` (a bfloat16 scale).
inline void put1(void* dst, int64_t i, float f, bool round, bool out_bf16) {
  if (out_bf16) {
    static_cast<uint16_t*>(dst)[i] = bf16_bits(f);
    return;
  }
  if (round) {
    const uint32_t b = uint32_t(bf16_bits(f)) << 16;
    std::memcpy(&f, &b, 4);
  }
  static_cast<float*>(dst)[i] = f;
}

inline float scale_of(const void* s, bool bf16, int64_t i) {
  if (!bf16) return static_cast<const float*>(s)[i];
  const uint32_t b = uint32_t(static_cast<const uint16_t*>(s)[i]) << 16;
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// What every path needs to know about one call: where the codes, scales and output live.
struct Job {
  const void* q;
  const void* scale;
  bool scale_bf16, out_bf16, round;  // round: float32 out holds bfloat16 values
  int64_t bits, group, I;
  void* dst;  // row r of the weight goes to dst + (r - r0) * I elements
  int64_t r0;
};

}  // namespace

#ifdef PG_DQ_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
namespace pg_dq_avx512 {
#define PG_DQ_ISA 2
#include "dequant_rows.h"
#undef PG_DQ_ISA
}  // namespace pg_dq_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace pg_dq_avx2 {
#define PG_DQ_ISA 1
#include "dequant_rows.h"
#undef PG_DQ_ISA
}  // namespace pg_dq_avx2
#pragma GCC pop_options
#endif
namespace pg_dq_scalar {
#define PG_DQ_ISA 0
#include "dequant_rows.h"
#undef PG_DQ_ISA
}  // namespace pg_dq_scalar
#include "gelu_isa.h"  // (its common part, for dequant_amx.h's GeGLU store)
#include "dequant_amx.h"

namespace {

int64_t resolved_isa(int64_t isa) {
  int64_t best = 0;
#ifdef PG_DQ_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) best = 2;
#endif
  TORCH_CHECK(isa <= best, "paligemma_cpu: this CPU has no path ", isa, " (best: ", best, ")");
  return isa < 0 ? best : isa;
}

void check_codes(const at::Tensor& q, const at::Tensor& scale, int64_t bits, int64_t group,
                 int64_t I) {
  const int64_t O = q.size(0);
  TORCH_CHECK(q.dim() == 2, "dequant: q [O, I] or [O, I/2]");
  TORCH_CHECK(scale.scalar_type() == at::kFloat || scale.scalar_type() == at::kBFloat16,
              "dequant: the scale must be float32 or bfloat16");
  if (bits == 16) {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16 && q.size(1) == I, "dequant: w bfloat16 [O, I]");
  } else if (bits == 8) {
    TORCH_CHECK(q.scalar_type() == at::kChar && q.size(1) == I && scale.numel() == O,
                "dequant: int8 codes [O, I] and one scale per output row");
  } else {
    TORCH_CHECK(bits == 4 && group > 0 && group % 2 == 0 && I % group == 0, "dequant: group");
    TORCH_CHECK(q.scalar_type() == at::kByte && q.size(1) * 2 == I &&
                    scale.numel() == O * (I / group),
                "dequant: int4 codes [O, I/2] and one scale per output row and group");
  }
}

// Rows [r0, r1) of the weight into dst, in parallel over rows.
void run_rows(Job job, int64_t r1, int64_t isa) {
  at::parallel_for(job.r0, r1, 4, [&](int64_t a, int64_t b) {
#ifdef PG_DQ_X86
    if (isa == 2) return pg_dq_avx512::rows(job, a, b);
    if (isa == 1) return pg_dq_avx2::rows(job, a, b);
#endif
    pg_dq_scalar::rows(job, a, b);
  });
}

// round: a float32 out gets the values rounded to bfloat16 (as a bfloat16 scale implies)
Job job_for(const at::Tensor& q, const at::Tensor& scale, int64_t bits, int64_t group,
            int64_t I, const at::Tensor& out, int64_t start, bool round = false) {
  const bool out_bf16 = out.scalar_type() == at::kBFloat16;
  TORCH_CHECK(out_bf16 || out.scalar_type() == at::kFloat, "dequant: out float32 or bfloat16");
  const bool scale_bf16 = scale.scalar_type() == at::kBFloat16;
  return Job{q.data_ptr(), scale.data_ptr(), scale_bf16, out_bf16, round || scale_bf16,
             bits, group, I, out.data_ptr(), start};
}

void dequantize_rows(const at::Tensor& q_, const at::Tensor& scale_, int64_t bits,
                     int64_t group, at::Tensor out, int64_t start, int64_t isa) {
  const at::Tensor q = q_.contiguous(), scale = scale_.contiguous();
  const int64_t I = out.size(1);
  check_codes(q, scale, bits, group, I);
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), "dequantize_rows: out [R, I], contiguous");
  TORCH_CHECK(start >= 0 && start + out.size(0) <= q.size(0), "dequantize_rows: rows");
  run_rows(job_for(q, scale, bits, group, I, out, start), start + out.size(0),
           resolved_isa(isa));
}

// Rows [r0, r1) of the weight into dst on the calling thread.
void rows_here(const Job& job, int64_t r1, int64_t isa) {
#ifdef PG_DQ_X86
  if (isa == 2) return pg_dq_avx512::rows(job, job.r0, r1);
  if (isa == 1) return pg_dq_avx2::rows(job, job.r0, r1);
#endif
  pg_dq_scalar::rows(job, job.r0, r1);
}

// One parallel region: each thread takes whole tiles, the next free one each time (dequantise
// into its own buffer, then a GEMM on that thread), so nothing waits on a barrier between the
// two steps.
// x @ W.T in x's dtype, W (q, scale) made `tile` output rows at a time (rounded to bfloat16
// values with `round`) into a reused buffer per thread, each thread running the GEMMs of its own
// tiles; tile < 0: |tile| rows at a time by all threads, then one GEMM on all threads.
at::Tensor tiled_mm(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                    int64_t bits, int64_t group, int64_t tile, int64_t isa, bool round) {
  const bool team = tile < 0;
  tile = std::abs(tile);
  const int64_t M = x.size(0), I = x.size(1), O = q.size(0);
  at::Tensor out = at::empty({M, O}, x.options());
  if (team) {  // all threads dequantise a tile, then all run its GEMM (a barrier per step)
    at::Tensor buf = at::empty({std::min(tile, O), I}, x.options());
    for (int64_t s = 0; s < O; s += tile) {
      const int64_t n = std::min(tile, O - s);
      at::Tensor w = buf.narrow(0, 0, n);
      run_rows(job_for(q, scale, bits, group, I, w, s, round), s + n, isa);
      at::Tensor o = out.narrow(1, s, n);
      at::mm_out(o, x, w.t());
    }
    return out;
  }
  const int64_t share = (O + at::get_num_threads() - 1) / at::get_num_threads();
  tile = std::min(tile, (share + 15) / 16 * 16);  // every thread gets a tile when O is small
  const at::ThreadLocalState caller;  // (inference mode, grad mode: the GEMMs run as called)
  const int64_t tiles = (O + tile - 1) / tile;
  std::atomic<int64_t> next{0};  // tiles taken as threads come free (a busy host stalls one)
  at::parallel_for(0, std::min(tiles, int64_t(at::get_num_threads())), 1, [&](int64_t, int64_t) {
    const at::ThreadLocalStateGuard as_caller(caller);
    at::Tensor buf = at::empty({tile, I}, x.options());  // reused for this thread's tiles
    for (int64_t t = next++; t < tiles; t = next++) {
      const int64_t s = t * tile, n = std::min(tile, O - s);
      at::Tensor w = buf.narrow(0, 0, n);
      rows_here(job_for(q, scale, bits, group, I, w, s, round), s + n, isa);
      at::Tensor o = out.narrow(1, s, n);  // strided (leading dimension O): the GEMM writes it
      at::mm_out(o, x, w.t());
    }
  });
  return out;
}

// x bf16[M, K] @ B.T (+ bias f32[O]) -> bf16[M, O] on our float32 GEMM (f32_gemm.h; isa 1 or
// 2): B = w's rows, or job's dequantised, in blocks of at most |tile| output columns.
at::Tensor own_mm(const at::Tensor& x, const Job* job, const c10::BFloat16* w, int64_t O,
                  const float* bias, int64_t tile, int64_t isa) {
#ifdef PG_DQ_X86
  constexpr int64_t MR = pg_dq_avx2::kMR;  // x rows per panel
  const int64_t M = x.size(0), K = x.size(1), panels = (M + MR - 1) / MR;
  // |tile| columns per block at most, fewer where O is small: 8 blocks a thread or more
  const int64_t share = (O + 8 * at::get_num_threads() - 1) / (8 * at::get_num_threads());
  const int64_t nc = (std::min(std::abs(tile), std::max<int64_t>(share, 16)) + 15) / 16 * 16;
  at::Tensor ap = at::empty({panels * MR * K}, x.options().dtype(at::kFloat));
  at::Tensor out = at::empty({M, O}, x.options().dtype(at::kBFloat16));
  const auto* xp = x.data_ptr<c10::BFloat16>();
  float* a = ap.data_ptr<float>();
  auto* o = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
#define PG_GEMM(CALL) (isa == 2 ? pg_dq_avx512::CALL : pg_dq_avx2::CALL)
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    PG_GEMM(pack_x(xp, M, K, p0, p1, a));
  });
  std::atomic<int64_t> next{0};  // column blocks, taken as threads come free
  const int64_t teams = std::min<int64_t>(at::get_num_threads(), (O + nc - 1) / nc);
  at::parallel_for(0, teams, 1, [&](int64_t, int64_t) {
    PG_GEMM(gemm_blocks(a, M, K, job, w, bias, O, nc, next, o));
  });
#undef PG_GEMM
  return out;
#else
  TORCH_CHECK(false, "own_mm: x86 only");
  return at::Tensor();
#endif
}

at::Tensor dequant_mm(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& scale_,
                      int64_t bits, int64_t group, int64_t tile, int64_t isa, int64_t amx,
                      int64_t f32) {
  const at::Tensor q = q_.contiguous(), scale = scale_.contiguous();
  TORCH_CHECK(x_.dim() == 2, "dequant_mm: x [M, I]");
  const int64_t I = x_.size(1);
  check_codes(q, scale, bits, group, I);
  TORCH_CHECK(tile != 0, "dequant_mm: tile != 0");
  isa = resolved_isa(isa);
  TORCH_CHECK(amx != 1 || amx_bf16_ready(), "dequant_mm: no AMX-BF16 here (CPU or OS)");
  const at::Tensor x = x_.contiguous();
  if (f32 && x.scalar_type() == at::kBFloat16 && isa >= 1) {  // float32 holding bfloat16 values
    const bool s16 = scale.scalar_type() == at::kBFloat16;
    const Job job{q.data_ptr(), scale.data_ptr(), s16, false, true, bits, group, I, nullptr, 0};
    return own_mm(x, &job, nullptr, q.size(0), nullptr, tile, isa);
  }
  if (f32 && x.scalar_type() == at::kBFloat16)  // the same values, PyTorch's float32 GEMM
    return tiled_mm(x.to(at::kFloat), q, scale, bits, group, tile, isa, true).to(at::kBFloat16);
  if (amx != 0 && isa == 2 && tile > 0 && x.scalar_type() == at::kBFloat16 && I % 32 == 0 &&
      (bits == 8 || group % 32 == 0) && amx_bf16_ready())
    return amx_mm(x, q, scale, bits, group, tile);
  return tiled_mm(x, q, scale, bits, group, tile, isa, false);
}

// x bf16[M, I] @ w bf16[O, I].T (+ bias f32[O]) -> bf16[M, O]: w's rows widened to float32
// `tile` rows at a time per thread, float32 GEMMs, the bias added in float32, one rounding
// (the plain bfloat16 prefill where the CPU has no fast bfloat16 GEMM: matvec.py)
at::Tensor f32_mm(const at::Tensor& x_, const at::Tensor& w_,
                  const c10::optional<at::Tensor>& bias_, int64_t tile, int64_t isa) {
  TORCH_CHECK(x_.dim() == 2 && w_.dim() == 2 && x_.size(1) == w_.size(1) && tile > 0,
              "f32_mm: x [M, I], w [O, I], tile > 0");
  TORCH_CHECK(x_.scalar_type() == at::kBFloat16 && w_.scalar_type() == at::kBFloat16,
              "f32_mm: x and w bfloat16");
  const at::Tensor w = w_.contiguous(), x = x_.contiguous();
  at::Tensor bias;
  if (bias_.has_value()) {
    TORCH_CHECK(bias_->numel() == w.size(0), "f32_mm: bias [O]");
    bias = bias_->to(at::kFloat).contiguous();
  }
  isa = resolved_isa(isa);
  if (isa >= 1)
    return own_mm(x, nullptr, w.data_ptr<c10::BFloat16>(), w.size(0),
                  bias.defined() ? bias.data_ptr<float>() : nullptr, tile, isa);
  at::Tensor out = tiled_mm(x.to(at::kFloat), w, w, 16, 0, tile, isa, false);
  if (bias.defined()) out.add_(bias);
  return out.to(at::kBFloat16);
}

// The AMX ops' x, checked: AMX-BF16 here, x bfloat16 [M, I] with I a multiple of 32, tile > 0;
// returned contiguous.
at::Tensor amx_x(const at::Tensor& x, int64_t tile, const char* op) {
  TORCH_CHECK(amx_bf16_ready(), op, ": no AMX-BF16 here (CPU or OS)");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && tile > 0, op,
              ": x bfloat16 [M, I], tile > 0");
  TORCH_CHECK(x.size(1) % 32 == 0, op, ": in features a multiple of 32");
  return x.contiguous();
}

// A bias float32 [O] (contiguous, kept in `held`), or nullptr without one.
const float* amx_bias(const c10::optional<at::Tensor>& bias, int64_t O, at::Tensor& held,
                      const char* op) {
  if (!bias.has_value()) return nullptr;
  held = bias->contiguous();
  TORCH_CHECK(held.scalar_type() == at::kFloat && held.numel() == O, op, ": bias float32 [O]");
  return held.data_ptr<float>();
}

at::Tensor bf16_mm(const at::Tensor& x_, const at::Tensor& w_,
                   const c10::optional<at::Tensor>& bias_, int64_t tile, bool gelu) {
  const at::Tensor x = amx_x(x_, tile, "bf16_mm"), w = w_.contiguous();
  check_codes(w, w, 16, 0, x.size(1));
  at::Tensor bias;
  const float* b = amx_bias(bias_, w.size(0), bias, "bf16_mm");
  return amx_mm(x, w, w, 16, 0, tile, b, nullptr, nullptr, gelu);
}

std::vector<at::Tensor> bf16_mms(const at::Tensor& x_, at::TensorList ws,
                                 const c10::List<c10::optional<at::Tensor>>& biases, int64_t tile) {
  const at::Tensor x = amx_x(x_, tile, "bf16_mms");
  TORCH_CHECK(!ws.empty() && biases.size() == ws.size(), "bf16_mms: a bias (or None) per weight");
  std::vector<at::Tensor> w(ws.size()), bias(ws.size()), out(ws.size());
  std::vector<AmxWeight> parts;  // (references into the vectors above, sized once)
  for (size_t j = 0; j < ws.size(); ++j) {
    w[j] = ws[j].contiguous();
    check_codes(w[j], w[j], 16, 0, x.size(1));
    const float* b = amx_bias(biases.get(j), w[j].size(0), bias[j], "bf16_mms");
    out[j] = at::empty({x.size(0), w[j].size(0)}, x.options());
    parts.push_back({w[j], w[j], b, out[j]});
  }
  amx_run(x, parts.data(), int64_t(parts.size()), 16, 0, tile);
  return out;
}

std::vector<at::Tensor> dequant_mms(const at::Tensor& x_, at::TensorList qs, at::TensorList scales,
                                    int64_t bits, int64_t group, int64_t tile) {
  const at::Tensor x = amx_x(x_, tile, "dequant_mms");
  TORCH_CHECK(bits == 8 || (bits == 4 && group % 32 == 0),
              "dequant_mms: int8 / int4 codes (int4: the group a multiple of 32)");
  TORCH_CHECK(!qs.empty() && scales.size() == qs.size(), "dequant_mms: a scale per weight");
  std::vector<at::Tensor> q(qs.size()), scale(qs.size()), out(qs.size());
  std::vector<AmxWeight> parts;  // (references into the vectors above, sized once)
  for (size_t j = 0; j < qs.size(); ++j) {
    q[j] = qs[j].contiguous(), scale[j] = scales[j].contiguous();
    check_codes(q[j], scale[j], bits, group, x.size(1));
    out[j] = at::empty({x.size(0), q[j].size(0)}, x.options());
    parts.push_back({q[j], scale[j], nullptr, out[j]});
  }
  amx_run(x, parts.data(), int64_t(parts.size()), bits, group, tile);
  return out;
}

at::Tensor bf16_geglu(const at::Tensor& x_, const at::Tensor& wg_, const at::Tensor& wu_,
                      int64_t tile) {
  const at::Tensor x = amx_x(x_, tile, "bf16_geglu");
  const at::Tensor wg = wg_.contiguous(), wu = wu_.contiguous();
  TORCH_CHECK(wg.sizes() == wu.sizes(), "bf16_geglu: w_gate and w_up [O, I] alike");
  check_codes(wg, wg, 16, 0, x.size(1));
  check_codes(wu, wu, 16, 0, x.size(1));
  return amx_mm(x, wg, wg, 16, 0, tile, nullptr, &wu);
}

at::Tensor dequant_geglu(const at::Tensor& x_, const at::Tensor& qg_, const at::Tensor& sg_,
                         const at::Tensor& qu_, const at::Tensor& su_, int64_t bits,
                         int64_t group, int64_t tile) {
  const at::Tensor x = amx_x(x_, tile, "dequant_geglu");
  const at::Tensor qg = qg_.contiguous(), sg = sg_.contiguous();
  const at::Tensor qu = qu_.contiguous(), su = su_.contiguous();
  check_codes(qg, sg, bits, group, x.size(1));
  check_codes(qu, su, bits, group, x.size(1));
  TORCH_CHECK(qg.sizes() == qu.sizes() && sg.sizes() == su.sizes() &&
                  sg.scalar_type() == su.scalar_type(),
              "dequant_geglu: the gate's and up's codes and scales alike");
  TORCH_CHECK(bits == 8 || group % 32 == 0, "dequant_geglu: the int4 group a multiple of 32");
  return amx_mm(x, qg, sg, bits, group, tile, nullptr, &qu, &su);
}

}  // namespace

bool pg_amx_bf16_ready() { return amx_bf16_ready(); }  // (attend_amx.cpp)

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("dequantize_rows(Tensor q, Tensor scale, int bits, int group, Tensor(a!) out, "
        "int start, int isa=-1) -> ()",
        &dequantize_rows);
  m.def("dequant_mm(Tensor x, Tensor q, Tensor scale, int bits, int group, int tile, "
        "int isa=-1, int amx=-1, int f32=0) -> Tensor",
        &dequant_mm);
  m.def("f32_mm(Tensor x, Tensor w, Tensor? bias, int tile, int isa=-1) -> Tensor", &f32_mm);
  m.def("bf16_mm(Tensor x, Tensor w, Tensor? bias, int tile, bool gelu=False) -> Tensor",
        &bf16_mm);
  m.def("bf16_mms(Tensor x, Tensor[] ws, Tensor?[] biases, int tile) -> Tensor[]", &bf16_mms);
  m.def("dequant_mms(Tensor x, Tensor[] qs, Tensor[] scales, int bits, int group, int tile) "
        "-> Tensor[]",
        &dequant_mms);
  m.def("bf16_geglu(Tensor x, Tensor w_gate, Tensor w_up, int tile) -> Tensor", &bf16_geglu);
  m.def("dequant_geglu(Tensor x, Tensor q_gate, Tensor scale_gate, Tensor q_up, Tensor scale_up, "
        "int bits, int group, int tile) -> Tensor",
        &dequant_geglu);
  m.def("cpu_amx_bf16() -> int", [] { return int64_t(amx_bf16_ready()); });
}
