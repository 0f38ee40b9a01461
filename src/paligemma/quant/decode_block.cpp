// One decoder block of a decode step (one query token per row) on the CPU, as one call: the ops
// of gemma.Block's forward (RMSNorm, the projections, RoPE, the cache write, attention, GeGLU,
// the residuals) called from C++ in the same order with the same arguments, so the result is the
// Python block's bit for bit, without ~100 Python-level op calls a layer (decode_block.py says
// when it is taken).
//
//   decode_block(x [B, 1, D], norms [attn, mlp] or [attn, mlp, post_attn, post_mlp], eps,
//                linear, weights [q, k, v, o, gate, up, down], scales (same order, or []),
//                dot [bits, group, isa, vnni], cos, sin [B, 1, 1, H], mask bool [B, 1, 1, S],
//                cache_k, cache_v [L, B, K, S_max, H], layer, start, heads [N, K, H],
//                scale, softcap?, attention, rows_alone, gelu_isa, lowest, ops=-1) -> [B, 1, D]
//
// linear: 0 int4_dots / int8_dots (dot = [bits, group, isa, vnni]: the layers read the same x in
// one call, as gemma.project does), 1 int8_matmul (isa = dot[2]: int8 at one row), 2 torch.mv
// (one float row: matvec.py), 3 F.linear (float weights), 4 bf16_mv (bfloat16 rows, isa =
// dot[2]: matvec.py's own_mv). attention: 0 eager, 1 eager with
// float32 products ("wide"), 2 fused (scaled_dot_product_attention). rows_alone: each row over
// its own key span (gemma.Attention._one_query_rows). gelu_isa: >= -1 gelu.cpp's kernel on that
// path, -2 ATen's. lowest: the value masked scores take (torch.finfo(dtype).min). ops: -1 ATen's
// ops, as the Python block calls them (AtenOps); -2 the same with its RMSNorm through
// decode_ops.h's loop (where the Python block's norms are rmsnorm.py's CpuRMSNorm that take
// it: model-sized bfloat16 rows); >= 0 (bfloat16 only) decode_ops.h's loops for
// RMSNorm, RoPE and the cache write, attention and the residual adds (OwnOps), attention on that
// path (1 AVX2, 0 scalar): not the Python block's bits (their summation order differs), bounded
// by tests instead. Both run one skeleton, `block`.
//
//   decode_layers(x, norms (each layer's, in order), eps, linear, weights, scales (7 a layer),
//                 dot, cos, sin, mask, local_mask?, local [L], cache_k, cache_v, start, heads,
//                 scale, softcap?, attention, rows_alone, gelu_isa, lowest, ops=-1) -> [B, 1, D]
//
// decode_block for layers 0 .. L - 1 in turn, each with its own tensors and mask (local_mask
// where local[l]): a quantised step's whole decoder in one call (decode_layers.py).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include "decode_ops.h"
#include <torch/library.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

namespace {

using Tensors = std::vector<at::Tensor>;
using DotsFn = Tensors(const at::Tensor&, at::TensorList, at::TensorList, int64_t, int64_t,
                       int64_t, std::optional<at::ScalarType>);
using Int8MmFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using MvFn = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);
using GeluFn = at::Tensor&(at::Tensor&, const std::optional<at::Tensor>&, int64_t);

// A Python number as Python passes it to a tensor op: a wrapped 0-dim double tensor. (C++'s
// Scalar overloads differ: `mul_(Scalar)` on bfloat16 rounds the scalar to bfloat16 first.)
at::Tensor num(double v) {
  at::Tensor t = at::scalar_tensor(v, at::kDouble);
  t.unsafeGetTensorImpl()->set_wrapped_number(true);
  return t;
}

template <typename Fn>
c10::TypedOperatorHandle<Fn> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

struct Linears {
  int64_t kind;
  const std::vector<at::Tensor>& w;
  const std::vector<at::Tensor>& s;
  const std::vector<int64_t>& dot;  // bits, group, isa, vnni
};

// The layers `idx` applied to x [B, 1, I] -> one [B, 1, O_j] each.
Tensors project(const Linears& L, const at::Tensor& x, std::initializer_list<int> idx) {
  const int64_t b = x.size(0);
  Tensors out;
  if (L.kind == 0) {
    static const auto dots4 = op<DotsFn>("paligemma_cpu::int4_dots");
    static const auto dots8 = op<DotsFn>("paligemma_cpu::int8_dots");
    Tensors w, s;
    for (int j : idx) w.push_back(L.w[j]), s.push_back(L.s[j]);
    const auto& dots = L.dot[0] == 4 ? dots4 : dots8;
    const at::Tensor flat = x.reshape({b, -1});
    for (const at::Tensor& o : dots.call(flat, w, s, L.dot[1], L.dot[2], L.dot[3], x.scalar_type()))
      out.push_back(o.view({b, 1, -1}));
    return out;
  }
  for (int j : idx) {
    if (L.kind == 1) {
      static const auto mm = op<Int8MmFn>("paligemma_cpu::int8_matmul");
      const at::Tensor y = mm.call(x.reshape({b, -1}), L.w[j], L.s[j], L.dot[2]);
      out.push_back(y.view({b, 1, -1}).to(x.scalar_type()));
    } else if (L.kind == 4) {
      static const auto mv = op<MvFn>("paligemma_cpu::bf16_mv");
      out.push_back(mv.call(x.reshape({b, -1}), L.w[j], L.dot[2]).view({b, 1, -1}));
    } else if (L.kind == 2) {
      out.push_back(at::mv(L.w[j], x.reshape({-1})).view({b, 1, -1}));
    } else {
      out.push_back(at::linear(x, L.w[j]));
    }
  }
  return out;
}

// gemma.RMSNorm: float32 arithmetic, (1 + w), rounded to x's dtype.
at::Tensor rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  const at::Tensor one_plus = w.to(at::kFloat).add(num(1.0));
  return at::rms_norm(x.to(at::kFloat), {x.size(-1)}, one_plus, eps).to(x.scalar_type());
}

// gemma.apply_rope on [B, N, 1, H].
at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const at::Tensor rotated = at::cat({x.slice(-1, half).neg(), x.slice(-1, 0, half)}, -1);
  return at::add(x.mul(cos), rotated.mul(sin));
}

struct Attn {
  double scale;
  std::optional<double> softcap;
  int64_t mode;  // 0 eager, 1 eager wide, 2 fused
  double lowest;
};

// gemma.Attention._eager for one query: q [B, K, G, H], k, v [B, K, S, H] -> [B, K, G, H].
at::Tensor eager(const Attn& a, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& mask) {
  const bool wide = a.mode == 1;
  const int64_t b = mask.size(0), t = mask.size(2), s = k.size(2);
  at::Tensor scores =
      wide ? at::matmul(q.to(at::kFloat), k.to(at::kFloat).transpose(-1, -2)).to(q.scalar_type())
           : at::matmul(q, k.transpose(-1, -2));
  scores = scores.view({b, -1, t, s}).mul_(num(a.scale));
  if (a.softcap) scores.div_(num(*a.softcap)).tanh_().mul_(num(*a.softcap));
  scores = scores.masked_fill_(mask.bitwise_not(), a.lowest);
  const at::Tensor probs =
      at::softmax(scores, -1, at::kFloat).to(v.scalar_type()).view({b, k.size(1), -1, s});
  if (wide) return at::matmul(probs.to(at::kFloat), v.to(at::kFloat)).to(v.scalar_type());
  return at::matmul(probs, v);
}

// gemma.Attention._attend for one query: q [B, N, 1, H] -> [B, N, 1, H].
at::Tensor attend(const Attn& a, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& mask) {
  const int64_t b = q.size(0), n = q.size(1), h = q.size(3), kv = k.size(1);
  if (a.mode == 2 && kv == n)
    return at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, a.scale, false);
  const at::Tensor grouped = q.reshape({b, kv, n / kv, h});  // (B, K, G, H)
  at::Tensor out;
  if (a.mode == 2)
    out = at::scaled_dot_product_attention(grouped, k, v, mask, 0.0, false, a.scale, false);
  else
    out = eager(a, grouped, k, v, mask);
  return out.view({b, n, 1, h});
}

// gemma.Attention._one_query_rows: each row over its own contiguous key span.
at::Tensor one_query_rows(const Attn& a, const at::Tensor& q, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& mask) {
  const at::Tensor allowed = mask.select(1, 0).select(1, 0);  // (B, S)
  const int64_t s = allowed.size(-1);
  const at::Tensor first = allowed.to(at::kInt).argmax(-1);
  const at::Tensor end = at::rsub(allowed.flip(-1).to(at::kInt).argmax(-1), s);
  const at::Tensor count = allowed.sum(-1);
  if (!at::eq(end - first, count).all().item<bool>()) return attend(a, q, k, v, mask);
  at::Tensor out = at::empty_like(q);
  const auto fa = first.accessor<int64_t, 1>(), ea = end.accessor<int64_t, 1>();
  for (int64_t r = 0; r < q.size(0); ++r) {
    const int64_t lo = fa[r], hi = ea[r];
    out.slice(0, r, r + 1).copy_(attend(a, q.slice(0, r, r + 1), k.slice(0, r, r + 1).slice(2, lo, hi),
                                        v.slice(0, r, r + 1).slice(2, lo, hi),
                                        mask.slice(0, r, r + 1).slice(3, lo, hi)));
  }
  return out;
}

// GeGLU's gelu(gate) * up in place (gelu.cpp's kernel, or ATen's).
void geglu(at::Tensor& gate, const at::Tensor& up, int64_t gelu_isa) {
  if (gelu_isa >= -1) {
    static const auto gelu = op<GeluFn>("paligemma_cpu::gelu_tanh_");
    gelu.call(gate, up, gelu_isa);
  } else {
    at::gelu_(gate, "tanh").mul_(up);
  }
}

struct Step {  // where a step's attention reads and writes
  const at::Tensor &cos, &sin, &mask, &cache_k, &cache_v;
  int64_t layer, start;
  int64_t n, kv, h;  // heads: query, key / value, dimension
  bool rows_alone;
};

// The ops between the products as the Python block calls them (ATen's).
struct AtenOps {
  const Step& t;
  const Attn& a;
  bool own_rms;  // ops -2: CpuRMSNorm's loop (rmsnorm.py)
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w, double eps) const {
    return own_rms ? pg_ops::rms(x.contiguous(), w, eps) : rms(x, w, eps);
  }
  at::Tensor add(const at::Tensor& x, const at::Tensor& y) const { return at::add(x, y); }
  // q, k, v [B, 1, *] -> RoPE, the cache write, attention -> [B, 1, N H]
  at::Tensor attention(const Tensors& qkv) const {
    const int64_t b = qkv[0].size(0), n = t.n, kv = t.kv, h = t.h;
    const at::Tensor q = rope(qkv[0].view({b, 1, n, h}).transpose(1, 2), t.cos, t.sin);  // B N 1 H
    const at::Tensor k = rope(qkv[1].view({b, 1, kv, h}).transpose(1, 2), t.cos, t.sin);  // B K 1 H
    const at::Tensor v = qkv[2].view({b, 1, kv, h}).transpose(1, 2);
    const at::Tensor keys = t.cache_k.select(0, t.layer), values = t.cache_v.select(0, t.layer);
    keys.slice(2, t.start, t.start + 1).copy_(k);  // kv_cache.KVCache.write
    values.slice(2, t.start, t.start + 1).copy_(v);
    const at::Tensor ks = keys.slice(2, 0, t.start + 1), vs = values.slice(2, 0, t.start + 1);
    const at::Tensor out =
        t.rows_alone ? one_query_rows(a, q, ks, vs, t.mask) : attend(a, q, ks, vs, t.mask);
    return out.transpose(1, 2).reshape({b, 1, n * h});
  }
};

// decode_ops.h's loops (ops >= 0: the attention's path); x must be contiguous.
struct OwnOps {
  const Step& t;
  const Attn& a;
  int64_t isa;
  at::Tensor norm(const at::Tensor& x, const at::Tensor& w, double eps) const {
    return pg_ops::rms(x, w, eps);
  }
  at::Tensor add(const at::Tensor& x, const at::Tensor& y) const { return pg_ops::add(x, y); }
  at::Tensor attention(const Tensors& qkv) const {
    const at::Tensor q = pg_ops::rope_write(qkv[0], qkv[1], qkv[2], t.cos.contiguous(),
                                            t.sin.contiguous(), t.cache_k, t.cache_v, t.layer,
                                            t.start);  // (B, N, H) float32
    return pg_ops::attend(q, t.cache_k, t.cache_v, t.layer, t.mask, a.scale, a.softcap, isa);
  }
};

// gemma.Block's forward for one query token a row, with Ops between the products.
template <typename Ops>
at::Tensor block(const Ops& o, const Linears& L, const at::Tensor& x, at::TensorList norms,
                 double eps, int64_t gelu_isa) {
  // x += post_attn_norm(attn(attn_norm(x)))
  at::Tensor y = project(L, o.attention(project(L, o.norm(x, norms[0], eps), {0, 1, 2})), {3})[0];
  if (norms.size() == 4) y = o.norm(y, norms[2], eps);
  const at::Tensor x1 = o.add(x, y);

  // x += post_mlp_norm(mlp(mlp_norm(x)))
  Tensors gate_up = project(L, o.norm(x1, norms[1], eps), {4, 5});
  geglu(gate_up[0], gate_up[1], gelu_isa);
  at::Tensor m = project(L, gate_up[0], {6})[0];
  if (norms.size() == 4) m = o.norm(m, norms[3], eps);
  return o.add(x1, m);
}

at::Tensor decode_block(const at::Tensor& x, at::TensorList norms, double eps, int64_t linear,
                        at::TensorList weights, at::TensorList scales, at::IntArrayRef dot,
                        const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                        const at::Tensor& cache_k, const at::Tensor& cache_v, int64_t layer,
                        int64_t start, at::IntArrayRef heads, double scale,
                        std::optional<double> softcap, int64_t attention, bool rows_alone,
                        int64_t gelu_isa, double lowest, int64_t ops) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "decode_block: x must be [B, 1, D]");
  TORCH_CHECK(norms.size() == 2 || norms.size() == 4, "decode_block: 2 or 4 norms");
  TORCH_CHECK(weights.size() == 7 && (scales.empty() || scales.size() == 7),
              "decode_block: 7 weights (q, k, v, o, gate, up, down) and their scales");
  TORCH_CHECK(dot.size() == 4 && heads.size() == 3 && linear >= 0 && linear <= 4,
              "decode_block: dot = [bits, group, isa, vnni], heads = [N, K, H], linear 0..4");
  TORCH_CHECK(linear >= 2 || scales.size() == 7, "decode_block: quantised layers need scales");
  const std::vector<at::Tensor> w(weights.begin(), weights.end()), s(scales.begin(), scales.end());
  const std::vector<int64_t> d(dot.begin(), dot.end());
  const Linears L{linear, w, s, d};
  const Attn a{scale, softcap, attention, lowest};
  const Step t{cos, sin, mask, cache_k, cache_v, layer, start, heads[0], heads[1], heads[2],
               rows_alone};
  if (ops < 0) return block(AtenOps{t, a, ops == -2}, L, x, norms, eps, gelu_isa);
  TORCH_CHECK(mask.size(-1) == start + 1, "decode_block: the mask must cover slots 0..start");
  return block(OwnOps{t, a, ops}, L, x.contiguous(), norms, eps, gelu_isa);
}

// decode_layers (the file's header): layer l's norms are norms.size() / L of them.
at::Tensor decode_layers(const at::Tensor& x, at::TensorList norms, double eps, int64_t linear,
                         at::TensorList weights, at::TensorList scales, at::IntArrayRef dot,
                         const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask,
                         const std::optional<at::Tensor>& local_mask, at::IntArrayRef local,
                         const at::Tensor& cache_k, const at::Tensor& cache_v, int64_t start,
                         at::IntArrayRef heads, double scale, std::optional<double> softcap,
                         int64_t attention, bool rows_alone, int64_t gelu_isa, double lowest,
                         int64_t ops) {
  const int64_t n = local.size();
  TORCH_CHECK(n > 0 && norms.size() % n == 0 && weights.size() == 7 * n &&
                  (scales.empty() || scales.size() == 7 * n),
              "decode_layers: per layer the same number of norms, 7 weights and their scales");
  const int64_t k = norms.size() / n;
  at::Tensor y = x;
  for (int64_t l = 0; l < n; ++l) {
    TORCH_CHECK(!local[l] || local_mask.has_value(), "decode_layers: a local layer needs its mask");
    y = decode_block(y, norms.slice(k * l, k), eps, linear, weights.slice(7 * l, 7),
                     scales.empty() ? scales : scales.slice(7 * l, 7), dot, cos, sin,
                     local[l] ? *local_mask : mask, cache_k, cache_v, l, start, heads, scale,
                     softcap, attention, rows_alone, gelu_isa, lowest, ops);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(paligemma_cpu, m) {
  m.def(
      "decode_block(Tensor x, Tensor[] norms, float eps, int linear, Tensor[] weights, "
      "Tensor[] scales, int[] dot, Tensor cos, Tensor sin, Tensor mask, Tensor(a!) cache_k, "
      "Tensor(b!) cache_v, int layer, int start, int[] heads, float scale, float? softcap, "
      "int attention, bool rows_alone, int gelu_isa, float lowest, int ops=-1) -> Tensor",
      &decode_block);
  m.def(
      "decode_layers(Tensor x, Tensor[] norms, float eps, int linear, Tensor[] weights, "
      "Tensor[] scales, int[] dot, Tensor cos, Tensor sin, Tensor mask, Tensor? local_mask, "
      "int[] local, Tensor(a!) cache_k, Tensor(b!) cache_v, int start, int[] heads, float scale, "
      "float? softcap, int attention, bool rows_alone, int gelu_isa, float lowest, "
      "int ops=-1) -> Tensor",
      &decode_layers);
}
