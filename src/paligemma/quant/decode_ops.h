// The small ops of a bfloat16 decode step (one query token a row) as plain loops: decode_ops.cpp
// has them, decode_block.cpp calls them between its matrix products when asked (`ops` >= 0).
// On a 2-core AMD EPYC each ATen op of a 2,048-value row costs 5-30 us (dispatch, TensorIterator,
// allocation), RMSNorm ~100 us as 5 of them and one query's fused attention ~230 us a layer;
// these loops take a few microseconds.
//
// Numerics: every bfloat16 result is rounded once from float32 arithmetic. RoPE and the residual
// adds round each product and sum as PyTorch's bfloat16 ops do (the same bits: the keys in the
// cache equal the Python block's); RMSNorm sums squares in double, and the attention keeps
// scores, softmax and the weighted values in float32 (rounded once, at the end). The last two
// differ from PyTorch's kernels in summation order only: bounded by tests against float64 and
// through the whole model (tests/test_decode_ops.py).

#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace pg_ops {

// y [R, D] = round(x * rsqrt(mean(x^2) + eps) * (1 + w)): x [R, D] bfloat16 rows (contiguous),
// w [D] bfloat16 or float32 (the stored w of gemma.RMSNorm).
at::Tensor rms(const at::Tensor& x, const at::Tensor& w, double eps);

// round(x + y) of two bfloat16 tensors of one shape (contiguous).
at::Tensor add(const at::Tensor& x, const at::Tensor& y);

// RoPE of the step's q, k (gemma.apply_rope, rounded as its bfloat16 ops), k and v written to
// the cache at `start`; returns q [B, N, H] in float32 (its bfloat16 values).
//   qkv: q [B, 1, N H], k, v [B, 1, K H] bfloat16; cos, sin [B, 1, 1, H]; cache_k, cache_v
//   [L, B, K, S_max, H] (any strides, the last 1).
at::Tensor rope_write(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& cache_k,
                      const at::Tensor& cache_v, int64_t layer, int64_t start);

// One query a row over the cache's first S = mask.size(-1) slots: q [B, N, H] float32, mask
// bool [B, 1, 1, S] (keys a row may see), scores q.k * scale, optionally softcap tanh(s / c) c,
// softmax over the allowed keys -> out [B, 1, N H] bfloat16 (heads in order, as the o
// projection reads them). isa: 2 AVX-512 (heads of a multiple of 16 values), 1 AVX2 + FMA
// (of 8), 0 scalar.
at::Tensor attend(const at::Tensor& q, const at::Tensor& cache_k, const at::Tensor& cache_v,
                  int64_t layer, const at::Tensor& mask, double scale,
                  std::optional<double> softcap, int64_t isa);

}  // namespace pg_ops
