"""The tanh GELU kernel (quant/gelu.cpp, quant/gelu.py): every bfloat16 input checked against the
exact function and against PyTorch's kernel, the fused GeGLU product, the paths' equal bits, and
the module swap at load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from paligemma.activations import GeluTanh
from paligemma.quant import gelu as quant_gelu
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant.matvec import install_matvec_


def op():
    assert cpu_kernels.available(), cpu_kernels.why_not()
    return torch.ops.paligemma_cpu.gelu_tanh_


def paths() -> list[int]:
    op()
    return list(range(int(torch.ops.paligemma_cpu.cpu_isa()) + 1))


def every_bf16() -> torch.Tensor:
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def exact(x: torch.Tensor) -> torch.Tensor:
    """GELU (tanh form) in float64: x sigmoid(2u) = 0.5 x (1 + tanh u), no cancellation."""
    xd = x.double()
    u = (2 / torch.pi) ** 0.5 * (xd + 0.044715 * xd**3)
    return xd * torch.sigmoid(2 * u)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def test_every_bfloat16_input_is_the_exact_gelu_rounded_on_every_path():
    """All 65,536 inputs: the paths agree bit for bit, and every finite output is the exact GELU
    correctly rounded to bfloat16, but for exact values under 1e-37 (x < -10: exp(-2u)
    overflows float32), which come out as -0, as PyTorch's do."""
    x = every_bf16()
    outs = [op()(x.clone(), None, isa) for isa in paths()]
    for other in outs[1:]:
        assert torch.equal(bits(outs[0]), bits(other))
    out, true = outs[0], exact(x)
    finite = torch.isfinite(x.float()) & torch.isfinite(true)
    differ = finite & (bits(out) != bits(true.to(torch.bfloat16)))
    tiny = true.abs() < 1e-37
    assert (out[differ & tiny] == 0).all()
    assert not (differ & ~tiny).any(), x[differ & ~tiny]


def test_it_matches_pytorchs_kernel_except_where_pytorchs_cancels():
    """Against aten.gelu_ on every input: equal bits for x >= -2.5 but for rounding-boundary
    ties (at most 2, 1 ulp); below, where PyTorch's 1 + tanh(u) loses bits, within 2e-5."""
    x = every_bf16()
    ours = op()(x.clone(), None, -1)
    theirs = torch.ops.aten.gelu_(x.clone(), approximate="tanh")
    finite = torch.isfinite(x.float())
    differ = finite & (bits(ours) != bits(theirs))
    upper = differ & (x.float() >= -2.5)
    assert int(upper.sum()) <= 2
    assert ((bits(ours)[upper].int() - bits(theirs)[upper].int()).abs() <= 1).all()
    assert (ours.float() - theirs.float())[finite].abs().max() <= 2e-5
    # and PyTorch's are the less exact ones there
    true = exact(x)[differ & ~upper]
    assert (ours[differ & ~upper].double() - true).abs().sum() < (
        theirs[differ & ~upper].double() - true
    ).abs().sum()


def test_special_values_follow_pytorch():
    """NaN -> NaN, inf -> inf, -inf -> NaN (-inf * 0), +-0 -> +-0, very negative -> -0; on
    every path, at a vector's lanes and in the scalar tail (17 values)."""
    values = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -20.0, 1e30, -1e30]
    for v in values:
        x = torch.full((17,), v, dtype=torch.bfloat16)
        theirs = torch.ops.aten.gelu_(x.clone(), approximate="tanh")
        for isa in paths():
            ours = op()(x.clone(), None, isa)
            assert torch.equal(ours.isnan(), theirs.isnan()), v
            same = ~theirs.isnan()
            assert torch.equal(bits(ours)[same], bits(theirs)[same]), (v, isa)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 70001])
def test_the_fused_product_is_gelu_rounded_then_times_up_rounded(n):
    """gelu_tanh_(x, up) == gelu_tanh_(x).mul_(up) bit for bit (two roundings, as PyTorch's
    gelu_ then mul_), any length (vector lanes, tails, several threads' chunks), every path."""
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(n, generator=g) * 3).to(torch.bfloat16)
    up = torch.randn(n, generator=g).to(torch.bfloat16)
    for isa in paths():
        fused = op()(x.clone(), up, isa)
        assert torch.equal(bits(fused), bits(op()(x.clone(), None, isa).mul_(up)))
    assert torch.equal(bits(fused), bits(op()(x.clone().view(1, -1), up.view(1, -1)).view(-1)))


def test_bad_inputs_are_refused():
    x = torch.randn(8, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="contiguous bfloat16"):
        op()(torch.randn(8), None, -1)
    with pytest.raises(RuntimeError, match="contiguous bfloat16"):
        op()(torch.randn(8, 2, dtype=torch.bfloat16).t(), None, -1)
    with pytest.raises(RuntimeError, match="shaped like x"):
        op()(x.clone(), torch.randn(9, dtype=torch.bfloat16), -1)
    with pytest.raises(RuntimeError, match="shaped like x"):
        op()(x.clone(), torch.randn(8), -1)


def test_the_module_routes_bfloat16_inference_only(monkeypatch):
    """CpuGeluTanh: bfloat16 CPU without autograd through the kernel (in place, its bits);
    float32, autograd, a strided input or FAST_GELU = False: GeluTanh's PyTorch ops, bit for
    bit, gradients included."""
    act, ref = quant_gelu.CpuGeluTanh(), GeluTanh()
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 33, generator=g) * 3).to(torch.bfloat16)
    up = torch.randn(4, 33, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        y = x.clone()
        out = act(y, up)
        assert out.data_ptr() == y.data_ptr()
        assert torch.equal(bits(out), bits(op()(x.clone(), up, -1)))
        xf = x.float()
        assert torch.equal(act(xf.clone(), up.float()), ref(xf.clone(), up.float()))
        assert not x[:, ::2].is_contiguous()
        assert torch.equal(bits(act(x.clone()[:, ::2], None)), bits(ref(x.clone()[:, ::2])))
        monkeypatch.setattr(quant_gelu, "FAST_GELU", False)
        assert torch.equal(bits(act(x.clone(), up)), bits(ref(x.clone(), up)))
    monkeypatch.setattr(quant_gelu, "FAST_GELU", True)
    xg = x.clone().requires_grad_()
    out = act(xg, up)
    out.float().sum().backward()
    xr = x.clone().requires_grad_()
    expect = F.gelu(xr, approximate="tanh") * up
    expect.float().sum().backward()
    assert torch.equal(bits(out.detach()), bits(expect.detach()))
    assert torch.equal(xg.grad, xr.grad)


@pytest.mark.parametrize("v2", [False, True])
def test_load_installs_it_in_both_towers_and_the_model_stays_close(v2):
    """install_matvec_ swaps every GeluTanh (SigLIP's and Gemma's MLPs) for CpuGeluTanh; a tiny
    bfloat16 model's logits then stay within bfloat16 noise of PyTorch's GELU."""
    from conftest import make_batch
    from test_model import tiny

    model = tiny(v2).to(torch.bfloat16)
    acts = [m for m in model.modules() if isinstance(m, GeluTanh)]
    assert len(acts) == model.cfg.vision.depth + model.cfg.text.depth
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        before = model(ids, px.to(torch.bfloat16), am, tt).float()
        install_matvec_(model)
        acts = [m for m in model.modules() if isinstance(m, GeluTanh)]
        assert all(type(m) is quant_gelu.CpuGeluTanh for m in acts)
        after = model(ids, px.to(torch.bfloat16), am, tt).float()
    err = (after - before).abs()[am.bool()]
    assert err.max() < 0.1 and err.mean() < 0.01, (err.max(), err.mean())
