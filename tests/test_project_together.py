"""Projections that read the same x (q, k, v; gate, up) in one kernel call (project.project,
_QuantizedLinear.together, int4_dots / int8_dots): each output equals its layer's own call bit
for bit, and the call is taken only where each layer alone would take the dot kernel."""

from __future__ import annotations

import pytest
import torch
from conftest import amx_bf16, assert_hooks_step_aside, fused_taken, make_batch, tiny_hf_model
from test_int4_dot import variants
from torch import nn

import paligemma
from paligemma import generate as engine
from paligemma.config import GemmaConfig, SiglipConfig
from paligemma.gemma import Attention as GemmaAttention
from paligemma.project import project
from paligemma.quant import decode_block, matvec
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q
from paligemma.siglip import Attention as SiglipAttention


def test_dots_equal_one_call_per_weight_bit_for_bit():
    """int4_dots / int8_dots over three weights (output rows not multiples of 16: tails) equal
    int4_dot / int8_dot per weight on every path, at 1..17 rows (AMX's from 8, two passes at
    17); dtype bfloat16 / float16 is the float32 result rounded once."""
    assert cpu_kernels.available(), cpu_kernels.why_not()
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    i, group = 192, 64
    int4 = [
        (torch.randint(0, 256, (o, i // 2), dtype=torch.uint8), torch.rand(o, i // group))
        for o in (40, 16, 9)
    ]
    int8 = [(torch.randint(-128, 128, (o, i), dtype=torch.int8), torch.rand(o)) for o in (33, 8)]
    for (isa, vnni), rows in ((p, r) for p in [*variants(), (-1, -1)] for r in (1, 3, 8, 17)):
        x = torch.randn(rows, i).to(torch.bfloat16)
        for one, many, weights in (
            (ops.int4_dot, ops.int4_dots, int4),
            (ops.int8_dot, ops.int8_dots, int8),
        ):
            codes, scales = [w for w, _ in weights], [s for _, s in weights]
            each = [one(x, w, s, group, isa, vnni) for w, s in weights]
            got = many(x, codes, scales, group, isa, vnni)
            assert all(torch.equal(a, b) for a, b in zip(got, each, strict=True)), (isa, rows)
            for dtype in (torch.bfloat16, torch.float16):
                half = many(x, codes, scales, group, isa, vnni, dtype=dtype)
                assert all(h.dtype == dtype for h in half)
                assert all(torch.equal(h, e.to(dtype)) for h, e in zip(half, each, strict=True))
    with pytest.raises(RuntimeError, match="one scale per weight"):
        ops.int4_dots(x, codes, scales[:1], group)
    with pytest.raises(RuntimeError, match="dtype must be"):
        ops.int4_dot(x, *int4[0], group, dtype=torch.float64)


def layers(cls, widths=(64, 32, 32), bias=False) -> list[nn.Module]:
    torch.manual_seed(0)
    return [cls.from_linear(nn.Linear(128, o, bias=bias)) for o in widths]


def counted(monkeypatch) -> list[int]:
    """The rows of each int4_dot / int8_dot(s) call (each asks dot_path once)."""
    calls, dot_path = [], cpu_kernels.dot_path
    monkeypatch.setattr(cpu_kernels, "dot_path", lambda rows: calls.append(rows) or dot_path(rows))
    return calls


@pytest.mark.parametrize("cls", [q.Int4Linear, q.Int8Linear])
def test_project_reads_x_once_where_each_layer_takes_the_dot_kernel(cls, monkeypatch):
    """bfloat16 decoding rows: one kernel call for the three layers, outputs equal to the layers'
    own (bfloat16, their shapes). Elsewhere each layer runs alone: float32 rows, more rows than
    DOT_ROWS, one int8 row where it takes the float kernel (cpu_kernels.int8_dot_from() 2), a
    layer with a bias, mixed classes, a layer with a forward hook (which then runs), a hook set
    for every module (which then runs for each layer)."""
    calls = counted(monkeypatch)
    three = layers(cls)
    one_row = cls is q.Int4Linear or cpu_kernels.int8_dot_from() == 1
    with torch.inference_mode():
        for rows in (1, 2, 8, q.DOT_ROWS) if one_row else (2, 8, q.DOT_ROWS):
            x = torch.randn(1, rows, 128).to(torch.bfloat16)
            want = [m(x) for m in three]
            calls.clear()
            got = project(x, *three)
            assert calls == [rows]
            assert all(
                g.shape == w.shape and torch.equal(g, w) for g, w in zip(got, want, strict=True)
            )
            assert all(g.dtype == torch.bfloat16 for g in got)
        bf16 = torch.randn(2, 128).to(torch.bfloat16)
        alone = {  # case: (layers, x, dot kernel calls: one per layer that takes it alone)
            "float32": (three, torch.randn(2, 128), 0),
            "rows": (three, torch.randn(q.DOT_ROWS + 1, 128).to(torch.bfloat16), 0),
            "bias": (layers(cls, bias=True), bf16, 3),
            "mixed": ([three[0], nn.Linear(128, 8).to(torch.bfloat16)], bf16, 1),
            "hooked": (layers(cls), bf16, 3),
        }
        seen = []
        alone["hooked"][0][1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
        if not one_row:
            alone["one int8 row"] = (three, bf16[:1], 0)
        for name, (mods, x, dots) in alone.items():
            want = [m(x) for m in mods]
            calls.clear()
            got = project(x, *mods)
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), name
            assert len(calls) == dots, name
        assert seen == [(2, 32), (2, 32)]  # the hook ran: for `want` and through project
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: seen.append(o.shape)
        )
        try:
            calls.clear(), seen.clear()
            project(bf16, *three)
        finally:
            hook.remove()
        assert len(calls) == 3 and len(seen) == 3  # a hook set for every module: each layer alone


@pytest.mark.parametrize("v2", [False, True], ids=["pg1", "pg2"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_decoding_is_unchanged_by_projecting_together(tmp_path, monkeypatch, v2, mode):
    """A tiny quantised model decoding a batch of 3 in bfloat16: the same tokens and the same
    log-probabilities bit for bit with the projections together as with each layer alone (the
    Python block's projections: the C++ decode block, tests/test_decode_block.py, is off)."""
    monkeypatch.setattr(decode_block, "FAST_DECODE", False)
    tiny_hf_model(v2, seed=3, lively=True).save_pretrained(tmp_path)
    model = paligemma.load_model(tmp_path, dtype=torch.bfloat16, quantize=mode)
    ids, mask, types, pixels = make_batch(0)
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, pixel_values=pixels)
    cfg = engine.GenerationConfig(max_new_tokens=6)
    calls = counted(monkeypatch)
    together = engine.generate(model, inputs, cfg, set(), logprobs=True)
    joint = calls.count(3)  # kernel calls of the decoding steps (3 rows)
    monkeypatch.setattr(q._QuantizedLinear, "together", staticmethod(lambda mods, x: None))
    calls.clear()
    alone = engine.generate(model, inputs, cfg, set(), logprobs=True)
    assert together.tokens == alone.tokens and together.logprobs == alone.logprobs
    layers = model.cfg.text.depth
    assert calls.count(3) - joint == 3 * layers * (cfg.max_new_tokens - 1)  # 7 calls a layer -> 4


def test_bf16_mms_equals_bf16_mm_per_weight_bit_for_bit():
    """bf16_mms over weights of different sizes (Gemma's q, k, v shapes scaled down; output
    rows not multiples of 16; with and without biases), rows within one pass and past it, 1 and
    2 threads: each output is bf16_mm's for that weight, bit for bit. Without AMX-BF16 the op
    is a clear error."""
    ops = torch.ops.paligemma_cpu
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 64, generator=g).to(torch.bfloat16)
    ws = [(torch.randn(o, 64, generator=g) * 0.1).to(torch.bfloat16) for o in (72, 16, 9)]
    if not amx_bf16():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ops.bf16_mms(x, ws, [None] * 3, 256)
        return
    threads = torch.get_num_threads()
    try:
        for rows, i, sizes, n in (
            (268, 2048, (2048, 256, 256), 2),
            (1100, 96, (50, 17), 2),
            (17, 64, (72, 16, 9), 1),
        ):
            torch.set_num_threads(n)
            x = torch.randn(rows, i, generator=g).to(torch.bfloat16)
            ws = [(torch.randn(o, i, generator=g) * 0.1).to(torch.bfloat16) for o in sizes]
            biases = [torch.randn(o, generator=g) if k % 2 else None for k, o in enumerate(sizes)]
            got = ops.bf16_mms(x, ws, biases, 256)
            for out, w, b in zip(got, ws, biases, strict=True):
                want = ops.bf16_mm(x, w, b, 256)
                assert torch.equal(out.view(torch.int16), want.view(torch.int16)), (rows, w.shape)
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(RuntimeError, match="a bias"):
        ops.bf16_mms(x, ws, [None], 256)
    with pytest.raises(RuntimeError, match="bfloat16 \\[O, I\\]"):
        ops.bf16_mms(x, [ws[0][:, :32]], [None], 256)


def test_dequant_mms_equals_dequant_mm_per_weight_bit_for_bit():
    """dequant_mms over int8 / int4 weights of different sizes (groups 32 and 64, float32 and
    bfloat16 scales), rows within one pass and past it: each output is dequant_mm's AMX path's
    (amx=1) for that weight. Mismatched lists and shapes are clear errors; without AMX-BF16 the
    op is one."""
    ops = torch.ops.paligemma_cpu
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 128, generator=g).to(torch.bfloat16)
    codes = [ops.quantize(torch.randn(o, 128, generator=g), 8, 0) for o in (72, 16)]
    if not amx_bf16():
        with pytest.raises(RuntimeError, match="no AMX-BF16"):
            ops.dequant_mms(x, [c for c, _ in codes], [s for _, s in codes], 8, 0, 256)
        return
    for rows, i, bits, group, sdtype in (
        (268, 2048, 8, 0, torch.bfloat16),
        (40, 256, 4, 32, torch.float32),
        (1100, 128, 4, 64, torch.bfloat16),
    ):
        x = torch.randn(rows, i, generator=g).to(torch.bfloat16)
        ws = [torch.randn(o, i, generator=g) * 0.1 for o in (72, 16, 9)]
        qs, scales = zip(*(ops.quantize(w, bits, group) for w in ws), strict=True)
        scales = [s.to(sdtype) for s in scales]
        got = ops.dequant_mms(x, list(qs), scales, bits, group, 256)
        for out, qq, sc in zip(got, qs, scales, strict=True):
            want = ops.dequant_mm(x, qq, sc, bits, group, 256, -1, 1, 0)
            assert torch.equal(out.view(torch.int16), want.view(torch.int16)), (rows, bits)
    with pytest.raises(RuntimeError, match="a scale per weight"):
        ops.dequant_mms(x, list(qs), scales[:1], bits, group, 256)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.dequant_mms(x[:, :40], [qs[0][:, :20]], [scales[0]], 4, 40, 256)


@pytest.mark.parametrize(
    "tower, mode",
    [("gemma", None), ("siglip", None), ("gemma", "int8"), ("gemma", "int4"), ("siglip", "int4")],
)
def test_prefill_projects_q_k_v_in_one_call_with_the_same_bits(tower, mode, monkeypatch):
    """Attention's q, k, v after install_matvec_ (plain bfloat16 linears: bf16_mms; int8 / int4:
    dequant_mms): one call for a prefill's rows where the CPU has AMX-BF16, the same output bits
    as with TOGETHER off; not for few rows, with autograd recording, or a hook on a projection
    or on every module; not for quantised layers with a bias (SigLIP's)."""
    has, ops = amx_bf16(), torch.ops.paligemma_cpu
    calls: list[int] = []
    name = "dequant_mms" if mode else "bf16_mms"
    real = getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    if tower == "siglip":
        attn = SiglipAttention(SiglipConfig(width=64, num_heads=4))
    else:
        attn = GemmaAttention(GemmaConfig(width=64, num_heads=4, num_kv_heads=1, head_dim=32))
    model = nn.Sequential(attn.to(torch.bfloat16).eval())
    if mode:
        q.quantize_(model, mode, include="*", group=32, head=False)
    attn = matvec.install_matvec_(model)[0]
    x = torch.randn(2, 20, 64).to(torch.bfloat16)
    fuses = has and not (mode and tower == "siglip")

    def out(x):  # SigLIP's whole attention; Gemma's projections (its forward needs a cache)
        if tower == "siglip":
            return attn(x)
        return project(x, attn.q_proj, attn.k_proj, attn.v_proj)

    taken = fused_taken(out, calls, monkeypatch, matvec, "TOGETHER")

    assert taken(x) == fuses
    assert not taken(x[:1, :8])
    assert not taken(x.requires_grad_(True), grad=True)
    x = x.detach()
    assert_hooks_step_aside(taken, x, (attn.k_proj,))
    assert taken(x) == fuses
