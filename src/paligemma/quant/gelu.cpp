// The tanh GELU of bfloat16 activations in place, optionally times a second tensor (GeGLU's
// gelu(gate) * up), for CPU inference. Built into the same library as kernels.cpp (kernels.py
// compiles all); the op lives under torch.ops.paligemma_cpu.
//
//   gelu_tanh_(x bf16[N] (any shape, contiguous), up bf16[N]?, isa=-1) -> x
//       x = round(gelu(x)), then, given up, x = round(x * up): each step rounded to bfloat16
//       (nearest even) as `aten.gelu_(x, approximate="tanh").mul_(up)` rounds them.
//
// gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), computed in float32 as
// x / (1 + exp(-2 u)) (the same function: 0.5 (1 + tanh(u)) = sigmoid(2 u)). That form has no
// cancellation: every output is within a few float32 ulps of the exact GELU of its bfloat16
// input, and rounded to bfloat16 it is the correctly rounded value for every input (all 65,536
// checked: tests/test_gelu.py). (PyTorch's kernel sums 1 + tanh(u), which cancels for x below
// about -3: there its outputs, all under 2e-4 in magnitude, carry relative errors up to a few
// bfloat16 ulps, and from about -5 it returns 0.) On 266 x 16384 bfloat16 values, 2 threads of
// a Xeon: 2.2 ms against PyTorch's 7.1 ms (~3 ns an element a thread), 3.2 vs 8.2 ms with the
// product.
//
// exp(t): t = n ln2 + r (n = round(t / ln2), r by two FMAs with ln2 split in two), exp(r) by
// Cephes' degree-7 polynomial (~1 ulp), times 2^n built in the exponent bits; t clamped to
// [-87, 88] (exp(-87) is lost against 1 anyway) and +inf above 88.72 (the float32 overflow),
// so x below about -10 (an exact GELU under 1e-37) gives -0 as x / inf, as PyTorch's does.
// NaN stays NaN; x = -inf gives NaN, as in PyTorch.
//
// The AVX-512, AVX2 + FMA and scalar paths run the same float32 operations in the same order
// (each correctly rounded: FMA, mul, add, div, round-to-nearest-even), so they agree bit for
// bit (the scalar one also runs each vector path's tail); isa: 2 AVX-512, 1 AVX2, 0 scalar, -1
// the best this CPU has (kernels.cpp's pg_cpu_isa).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PG_GELU_X86
#endif

int64_t pg_cpu_isa();  // kernels.cpp

#include "gelu_isa.h"

#ifdef PG_GELU_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
namespace pg_gelu_avx512 {
#define PG_GELU_ISA 2
#include "gelu_isa.h"
#undef PG_GELU_ISA
}  // namespace pg_gelu_avx512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace pg_gelu_avx2 {
#define PG_GELU_ISA 1
#include "gelu_isa.h"
#undef PG_GELU_ISA
}  // namespace pg_gelu_avx2
#pragma GCC pop_options
#endif

namespace {

at::Tensor& gelu_tanh_(at::Tensor& x, const c10::optional<at::Tensor>& up, int64_t isa) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
              "gelu_tanh_: x must be a contiguous bfloat16 CPU tensor");
  const bool times = up.has_value() && up->defined();
  if (times)
    TORCH_CHECK(up->device().is_cpu() && up->scalar_type() == at::kBFloat16 &&
                    up->is_contiguous() && up->sizes() == x.sizes(),
                "gelu_tanh_: up must be a contiguous bfloat16 CPU tensor shaped like x");
  const int64_t best = pg_cpu_isa();
  TORCH_CHECK(isa <= best, "gelu_tanh_: this CPU has no path ", isa, " (best: ", best, ")");
  isa = isa < 0 ? best : isa;
  auto* xp = static_cast<uint16_t*>(x.data_ptr());
  const auto* up_p = times ? static_cast<const uint16_t*>(up->data_ptr()) : nullptr;
  at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t a, int64_t b) {
#ifdef PG_GELU_X86
    if (isa == 2) return pg_gelu_avx512::run(xp + a, up_p ? up_p + a : nullptr, b - a);
    if (isa == 1) return pg_gelu_avx2::run(xp + a, up_p ? up_p + a : nullptr, b - a);
#endif
    pg_gelu::run1(xp + a, up_p ? up_p + a : nullptr, b - a);
  });
  return x;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def("gelu_tanh_(Tensor(a!) x, Tensor? up=None, int isa=-1) -> Tensor(a!)", &gelu_tanh_);
}

