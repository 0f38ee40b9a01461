"""decode_ops.cpp, the small ops of a quantised bfloat16 decode step (decode_block.cpp with
ops >= 0): RMSNorm and one query's attention against float64 (one bfloat16 rounding of the
exact value, on the AVX2 and the scalar paths), RoPE and the cache write bit for bit against
gemma.apply_rope; and through the whole model, the steps stay as close to float32 as the Python
block's (tests/test_decode_block.py checks that they are taken)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_batch, tiny_hf_model

import paligemma
from paligemma import generate as engine
from paligemma.gemma import RMSNorm, apply_rope, rope_angles
from paligemma.model import set_rows_alone_
from paligemma.quant import decode_block
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import rmsnorm as cpu_rms
from paligemma.quant.rmsnorm import CpuRMSNorm

ISAS = list(range(cpu_kernels.isa() + 1)) if cpu_kernels.available() else [0]


@pytest.fixture(scope="module", autouse=True)
def built():
    assert cpu_kernels.available(), cpu_kernels.why_not()


def near_bf16(out: torch.Tensor, ref: torch.Tensor, scale: float) -> None:
    """out (bfloat16) is ref (float64) rounded once: within bfloat16's unit roundoff of |ref|
    (2^-8: half an ulp, 8 significant bits) plus float32 arithmetic's error."""
    err = (out.double() - ref).abs()
    bound = ref.abs() * 2.0**-8 + 1e-5 * scale
    assert (err <= bound).all(), (err - bound).max()


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_rms_is_float64_rounded_once(weight_dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 1, 2048, generator=g) * 4).bfloat16()
    w = torch.randn(2048, generator=g).to(weight_dtype)
    out = torch.ops.paligemma_cpu.decode_rms(x, w, 1e-6)
    xd = x.double()
    ref = xd * (xd.pow(2).mean(-1, keepdim=True) + 1e-6).rsqrt() * (1 + w.double())
    near_bf16(out, ref, ref.abs().max().item())
    # a broken norm (another eps would be invisible; the (1 + w) is not)
    with pytest.raises(AssertionError):
        near_bf16(out, xd * (xd.pow(2).mean(-1, keepdim=True) + 1e-6).rsqrt() * w.double(), 1.0)


def test_rms_rows_are_their_own_bits_and_the_prefill_norm_takes_them(monkeypatch):
    """Many rows (four side by side, over threads) give each row the bits it gets alone; Gemma's
    RMSNorm on model-sized bfloat16 rows (CpuRMSNorm, installed at load) is that loop, within
    one bfloat16 rounding of PyTorch's float32 op, and keeps PyTorch's op below MIN_WIDTH, in
    float32 and with autograd."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 271, 2048, generator=g) * 3).bfloat16()
    w = torch.randn(2048, generator=g).bfloat16()
    many = torch.ops.paligemma_cpu.decode_rms(x, w, 1e-6)
    alone = torch.cat([torch.ops.paligemma_cpu.decode_rms(r, w, 1e-6) for r in x.split(1, 1)], 1)
    assert torch.equal(many, alone)
    norm = CpuRMSNorm.of(RMSNorm(2048, 1e-6))
    with torch.no_grad():
        norm.weight.copy_(w)
    with torch.no_grad():
        assert torch.equal(norm(x), many)
        reference = RMSNorm.forward(norm, x)  # PyTorch's rms_norm in float32
        assert (norm(x) != reference).float().mean() < 1e-3
        assert ((norm(x).float() - reference.float()).abs() <= reference.float().abs() / 128).all()
        strided = torch.cat([x, x], -1)[..., :2048]  # the same rows, 4,096 values apart
        assert not strided.is_contiguous() and torch.equal(norm(strided), many)
        monkeypatch.setattr(cpu_rms, "MIN_WIDTH", 4096)
        assert torch.equal(norm(x), reference)
    monkeypatch.undo()
    assert torch.equal(norm(x.float()), RMSNorm.forward(norm, x.float()))
    xg = x.clone().requires_grad_()
    assert norm(xg).grad_fn is not None
    assert torch.equal(norm(xg).detach(), RMSNorm.forward(norm, x).detach())
    # a decode step's C++ block follows the block's norms: ATen's ops with this loop (-2)
    with torch.no_grad():
        step = x[:, :1]
        kv = torch.zeros(1, 1, 1, 4, 8, dtype=torch.bfloat16)
        cache = type("Cache", (), {"k": kv, "v": kv})()
        assert decode_block._ops(decode_block.LINEAR, step, cache, norm) == -2
        assert decode_block._ops(decode_block.LINEAR, step.float(), cache, norm) == -1
        assert decode_block._ops(decode_block.LINEAR, step, cache, RMSNorm(2048, 1e-6)) == -1


def test_rope_and_the_cache_write_equal_apply_rope_bit_for_bit():
    g = torch.Generator().manual_seed(1)
    b, n, kv, h, start = 2, 8, 2, 16, 5
    q = torch.randn(b, 1, n * h, generator=g).bfloat16()
    k, v = (torch.randn(b, 1, kv * h, generator=g).bfloat16() for _ in range(2))
    cos, sin = rope_angles(torch.tensor([[start], [start + 3]]), h, 10000.0, torch.bfloat16)
    cache_k, cache_v = (torch.randn(3, b, kv, 9, h, generator=g).bfloat16() for _ in range(2))
    before_k, before_v = cache_k.clone(), cache_v.clone()
    qf = torch.ops.paligemma_cpu.decode_rope(q, k, v, cos, sin, cache_k, cache_v, 1, start)
    want_q = apply_rope(q.view(b, 1, n, h).transpose(1, 2), cos, sin)  # (B, N, 1, H)
    assert qf.dtype == torch.float32 and torch.equal(qf, want_q[:, :, 0].float())
    want_k = apply_rope(k.view(b, 1, kv, h).transpose(1, 2), cos, sin)[:, :, 0]
    assert torch.equal(cache_k[1, :, :, start], want_k)
    assert torch.equal(cache_v[1, :, :, start], v.view(b, kv, h))
    before_k[1, :, :, start], before_v[1, :, :, start] = want_k, v.view(b, kv, h)
    assert torch.equal(cache_k, before_k) and torch.equal(cache_v, before_v)  # nothing else


def attention64(q, cache_k, cache_v, layer, mask, scale, softcap):
    """float64 reference: (B, N, H) -> (B, N, H); a row with no allowed key weighs all alike."""
    b, n, _ = q.shape
    s = mask.shape[-1]
    k = cache_k[layer, :, :, :s].double()  # (B, K, S, H)
    v = cache_v[layer, :, :, :s].double()
    group = n // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # (B, N, S, H)
    scores = torch.einsum("bnh,bnsh->bns", q.double(), k) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = mask[:, 0, 0][:, None, :].expand(b, n, s)  # (B, N, S)
    none = ~allowed.any(-1, keepdim=True)
    scores = torch.where(none, 0.0, scores.masked_fill(~allowed, float("-inf")))
    return torch.einsum("bns,bnsh->bnh", scores.softmax(-1), v)


CASES = [  # (B, N, K, H, S, softcap): PaliGemma 1 (8 heads, one kv head, 256), 2 (groups of 2,
    # soft-cap 50), groups of 3 and 5 (tasks of 3, then 4 + 1 heads), a head dimension that is
    # no multiple of 8 (the scalar loop on every path)
    (1, 8, 1, 256, 37, None),
    (3, 8, 4, 256, 20, 50.0),
    (2, 6, 2, 16, 9, 30.0),
    (2, 10, 2, 8, 11, None),
    (2, 4, 2, 12, 7, None),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_one_query_attention_is_float64_rounded_once(case, isa):
    b, n, kv, h, s, softcap = case
    g = torch.Generator().manual_seed(s)
    q = torch.randn(b, n, h, generator=g)
    cache_k, cache_v = (torch.randn(2, b, kv, s + 4, h, generator=g).bfloat16() for _ in range(2))
    mask = torch.ones(b, 1, 1, s, dtype=torch.bool)
    mask[-1, ..., : s // 3] = False  # left padding
    mask[0, ..., 1::4] = False  # holes (a sliding window's edge, a prefix's gaps)
    if b > 2:
        mask[1] = False  # a row that may see nothing
    scale = h**-0.5
    out = torch.ops.paligemma_cpu.decode_attend(q, cache_k, cache_v, 1, mask, scale, softcap, isa)
    assert out.shape == (b, 1, n * h) and out.dtype == torch.bfloat16
    ref = attention64(q, cache_k, cache_v, 1, mask, scale, softcap)
    near_bf16(out.view(b, n, h), ref, 1.0)
    with pytest.raises(AssertionError):  # another layer's cache (or scale) is seen
        near_bf16(out.view(b, n, h), attention64(q, cache_k, cache_v, 0, mask, scale, softcap), 1.0)


def test_attention_rejects_what_it_cannot_read():
    q = torch.randn(1, 8, 16)
    cache = torch.zeros(1, 1, 1, 4, 16, dtype=torch.bfloat16)
    mask = torch.ones(1, 1, 1, 5, dtype=torch.bool)  # longer than the cache
    with pytest.raises(RuntimeError, match="within the cache"):
        torch.ops.paligemma_cpu.decode_attend(q, cache, cache, 0, mask, 0.25, None, 0)
    with pytest.raises(RuntimeError, match="float32"):
        attend = torch.ops.paligemma_cpu.decode_attend
        attend(q.half(), cache, cache, 0, mask[..., :4], 0.25, None, 0)


STEPS = 9  # past PaliGemma 2's window of 6


def step_logits(model, batch: int, own: bool, monkeypatch) -> torch.Tensor:
    """(B, STEPS, V) logits of decode steps fed the same tokens after one prefill."""
    monkeypatch.setattr(decode_block, "OWN_OPS", own)
    ids, mask, types, pixels = (t[:batch] for t in make_batch(seed=batch))
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, pixel_values=pixels)
    _, cache, _ = engine._prefill(model, inputs, STEPS)
    out, g = [], torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        out.append(engine._step(model, cache, torch.randint(5, 290, (batch,), generator=g)))
    monkeypatch.undo()
    return torch.stack(out, 1)


def kl(ref: torch.Tensor, other: torch.Tensor) -> float:
    ref, other = ref.log_softmax(-1), other.log_softmax(-1)
    return (ref.exp() * (ref - other)).sum(-1).mean().item()


@pytest.mark.parametrize("pg2", [False, True], ids=["pg1", "pg2"])
def test_quantised_steps_stay_as_close_to_float32_as_the_python_blocks(pg2, tmp_path, monkeypatch):
    """int8 / int4 in bfloat16, one row and a left-padded batch (rows alone too): the steps with
    decode_ops.cpp's loops against float32's steps, KL within 1.25x the ATen ops' (measured:
    0.9-1.1x) and 2e-5 of it; and against the ATen ops' steps themselves KL <= 1e-4 (measured
    7e-6 .. 2.4e-5: bfloat16 rounding)."""
    tiny_hf_model(pg2, seed=3, lively=True).save_pretrained(tmp_path)
    f32 = paligemma.load_model(tmp_path, dtype=torch.float32)
    for mode in ("int8", "int4"):
        model = paligemma.load_model(tmp_path, dtype=torch.bfloat16, quantize=mode)
        for batch, alone in ((1, False), (3, False), (3, True)):
            set_rows_alone_(model, alone)
            ref = step_logits(f32, batch, False, monkeypatch)
            aten = step_logits(model, batch, False, monkeypatch)
            own = step_logits(model, batch, True, monkeypatch)
            where = (mode, batch, alone)
            assert kl(ref, own) <= 1.25 * kl(ref, aten) + 2e-5, where
            assert kl(aten, own) <= 1e-4, where
