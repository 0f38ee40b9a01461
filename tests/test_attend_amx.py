"""attend_amx (quant/attend_amx.cpp), the prefill attention on AMX-BF16 tiles: within PyTorch's
fused kernel's own error against a float64 softmax, each query row's bits independent of the
other rows, zeros for a row with no key allowed; taken by the models' attention
(quant/attention.py) only where it applies."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import amx_bf16, bench_module

from paligemma.config import GemmaConfig, SiglipConfig
from paligemma.gemma import Attention as GemmaAttention
from paligemma.quant import attention, matvec
from paligemma.siglip import Attention as SiglipAttention

# (B, N, K, T, S, H, mask): SigLIP's heads of 72, Gemma's one kv head, tails of 16 rows and 128
# keys, more keys than queries (a cache), GQA with 2 kv heads
SHAPES = [
    (1, 4, 4, 100, 100, 72, False),
    (2, 4, 1, 70, 70, 64, True),
    (1, 8, 1, 300, 300, 256, False),
    (1, 4, 2, 17, 130, 40, True),
    (2, 2, 1, 33, 257, 128, True),
    (1, 2, 1, 20, 37, 33, True),  # an odd head dim
]


def float64_attention(q, k, v, mask, scale):
    g = q.shape[1] // k.shape[1]
    k, v = (t.double().repeat_interleave(g, 1) for t in (k, v))
    s = (q.double() @ k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def operands(b, n, kv, t, s, h, masked, seed=0):
    """q as the models' views of (B, T, N, H); k, v too for odd seeds, else contiguous (a cache)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, t, n, h, generator=g).bfloat16().transpose(1, 2)
    if seed % 2:
        k, v = (torch.randn(b, s, kv, h, generator=g).bfloat16().transpose(1, 2) for _ in "kv")
    else:
        k, v = (torch.randn(b, kv, s, h, generator=g).bfloat16() for _ in "kv")
    mask = torch.rand(b, 1, t, s, generator=g) > 0.3 if masked else None
    if masked:
        mask[..., 0] = True  # every row allows a key (PyTorch's kernel: NaN otherwise)
    return q, k, v, mask


def test_attend_amx_is_as_close_to_float64_as_pytorchs_fused_kernel():
    has = amx_bf16()  # (loads the kernels)
    op = torch.ops.paligemma_cpu.attend_amx
    if not has:
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            op(*operands(1, 1, 1, 16, 16, 32, False)[:3], None, 0.2)
        return
    for seed, (b, n, kv, t, s, h, masked) in enumerate(SHAPES):
        q, k, v, mask = operands(b, n, kv, t, s, h, masked, seed)
        scale = h**-0.5
        got = op(q, k, v, mask, scale)
        want = float64_attention(q, k, v, mask, scale)
        ref = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=kv != n
        )
        assert got.dtype == torch.bfloat16 and got.shape == (b, n, t, h)
        ours, theirs = (got.double() - want).abs(), (ref.double() - want).abs()
        assert ours.max() <= 1.5 * theirs.max(), (b, n, kv, t, s, h)
        assert ours.mean() <= 1.1 * theirs.mean(), (b, n, kv, t, s, h)
        # each query row alone: the same bits from a call on some of the rows
        part = op(q[:, :, 5:], k, v, None if mask is None else mask[:, :, 5:], scale)
        assert torch.equal(part, got[:, :, 5:])


def test_a_row_with_no_key_allowed_gets_zeros_and_bad_inputs_are_errors():
    if not amx_bf16():
        return  # (the op refuses to run at all: the test above)
    op = torch.ops.paligemma_cpu.attend_amx
    q, k, v, mask = operands(1, 2, 1, 20, 40, 32, True, seed=1)
    mask[0, 0, 3] = False
    got = op(q, k, v, mask, 0.2)
    assert (got[:, :, 3] == 0).all() and (got[:, :, 2] != 0).any()
    with pytest.raises(RuntimeError, match="bfloat16"):
        op(q.float(), k, v, mask, 0.2)
    with pytest.raises(RuntimeError, match="mask bool"):
        op(q, k, v, mask[..., :-1], 0.2)
    with pytest.raises(RuntimeError, match="K dividing"):
        op(q, k.expand(1, 3, 40, 32), v.expand(1, 3, 40, 32), mask, 0.2)


def gemma_attention(head_dim: int) -> GemmaAttention:
    cfg = GemmaConfig(
        width=256,
        depth=1,
        mlp_dim=512,
        num_heads=4,
        num_kv_heads=1,
        head_dim=head_dim,
        vocab_size=64,
    )
    torch.manual_seed(0)
    return GemmaAttention(cfg).bfloat16().eval()


def test_the_models_take_it_for_prefill_where_it_applies(monkeypatch):
    """install_matvec_ gives both attentions the kernel; their fused prefill attention (128
    queries and more) takes it without autograd where the CPU has AMX-BF16, and ATTENTION off, a
    gradient to record or fewer than MIN_QUERIES queries do not; what it gives is within a few
    bfloat16 ulps of PyTorch's."""
    has, ops, calls = amx_bf16(), torch.ops.paligemma_cpu, []
    real = ops.attend_amx
    monkeypatch.setattr(ops, "attend_amx", lambda *a: calls.append(1) or real(*a))
    gemma = matvec.install_matvec_(torch.nn.Sequential(gemma_attention(128)))[0]
    siglip_cfg = SiglipConfig(width=144, depth=1, mlp_dim=64, num_heads=2, patch_size=14)
    siglip = matvec.install_matvec_(torch.nn.Sequential(SiglipAttention(siglip_cfg)))[0]
    assert gemma.kernel is attention.attend and siglip.kernel is attention.attend
    siglip = siglip.bfloat16().eval()

    def run_gemma(t, grad=False):
        x = torch.randn(1, t, 256).bfloat16()
        rope = (torch.ones(1, t, 128).bfloat16(), torch.zeros(1, t, 128).bfloat16())
        mask = torch.ones(1, 1, t, t, dtype=torch.bool).tril()
        with torch.set_grad_enabled(grad):
            return gemma(x, rope, mask, None, 0, 0)

    def run_siglip(x):
        with torch.no_grad():
            return siglip(x)

    def taken(run, *args, **kw) -> bool:
        calls.clear()
        out = run(*args, **kw)
        assert out.isfinite().all()
        return bool(calls)

    x = torch.randn(1, 256, 144).bfloat16()
    assert taken(run_gemma, 140) == has and taken(run_siglip, x) == has
    assert not taken(run_gemma, 100) and not taken(run_siglip, x[:, :100])  # (not fused at all)
    assert not taken(run_gemma, 140, grad=True)
    q, k, v, _ = operands(1, 2, 1, attention.MIN_QUERIES - 1, 200, 128, False)
    assert attention.attend(q, k, v, None, 0.1) is None
    q, k, v, _ = operands(1, 2, 1, 100, 100, attention.MAX_HEAD_DIM + 2, False)
    assert attention.attend(q, k, v, None, 0.1) is None
    with torch.no_grad():
        got = siglip(x)
        monkeypatch.setattr(attention, "ATTENTION", False)
        assert not taken(run_gemma, 140) and not taken(run_siglip, x)
        want = siglip(x)
    assert (got.float() - want.float()).abs().max() <= 0.05 * want.float().abs().max()


def test_the_benchmark_times_both_paths_and_their_errors(tmp_path):
    """benchmarks/bench_prefill_attention.py at 224 px: both paths timed, each within bfloat16
    rounding of float64; a CPU without AMX-BF16 is a usage error."""
    bench = bench_module("bench_prefill_attention")
    if not amx_bf16():
        with pytest.raises(SystemExit):
            bench.main(["--sizes", "224", "--rounds", "1"])
        return
    out = bench.main(["--sizes", "224", "--rounds", "1", "--json", str(tmp_path / "a.json")])
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads(json.dumps(out))
    assert set(out["results"]) == {"siglip 224", "gemma 224"}
    for r in out["results"].values():
        assert r["ours"]["ms"] > 0 and r["pytorch"]["ms"] > 0 and r["ours_over_pytorch"] > 0
        assert r["ours"]["max_err"] < 0.01 and r["pytorch"]["max_err"] < 0.01
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "0"])


def test_a_padded_row_gets_its_bits_alone_under_rows_alone(monkeypatch):
    """Gemma's attention under `rows_alone` (the server's batched = alone), the kernel taken: a
    left-padded row of a batch gets the bits it gets alone, and so does the unpadded one."""
    has, ops, calls = amx_bf16(), torch.ops.paligemma_cpu, []
    real = ops.attend_amx
    monkeypatch.setattr(ops, "attend_amx", lambda *a: calls.append(1) or real(*a))
    gemma = matvec.install_matvec_(torch.nn.Sequential(gemma_attention(128)))[0]
    gemma.rows_alone = True
    g = torch.Generator().manual_seed(0)
    t, pad = 150, 10
    x = torch.randn(2, t, 256, generator=g).bfloat16()
    cos, sin = (torch.randn(2, 1, t, 128, generator=g).bfloat16() for _ in "cs")
    mask = torch.ones(2, 1, t, t, dtype=torch.bool).tril()
    mask[1, :, :, :pad] = False
    with torch.no_grad():
        both = gemma(x, (cos, sin), mask, None, 0, 0)
        rope = (cos[1:, :, pad:], sin[1:, :, pad:])
        alone = gemma(x[1:, pad:], rope, mask[1:, :, pad:, pad:], None, 0, 0)
        first = gemma(x[:1], (cos[:1], sin[:1]), mask[:1], None, 0, 0)
    assert bool(calls) == has
    assert torch.equal(both[1, pad:], alone[0]) and torch.equal(both[0], first[0])
