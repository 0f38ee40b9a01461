"""Weight-only int8 / int4 layers: accuracy against float, kernels against dequantisation,
and quantised checkpoints that save and load as they are."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paligemma
from paligemma.quant import kernels as cpu_kernels
from paligemma.quant import linear as q
from paligemma.quant import store as q_store


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(("cls", "bound"), [(q.Int8Linear, 0.01), (q.Int4Linear, 0.12)])
def test_layer_accuracy_and_kernel_matches_dequantised(cls, bound):
    torch.manual_seed(0)
    linear = nn.Linear(256, 96, bias=True)
    x = torch.randn(5, 3, 256)
    layer = cls.from_linear(linear)
    got, want = layer(x), linear(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    assert rel_err(got, want) < bound
    # Non-contiguous bfloat16 input (as after attention's transpose) takes the kernel too.
    strided = x.to(torch.bfloat16).transpose(0, 1)[:1]
    assert rel_err(layer(strided), linear(strided.float())) < bound + 0.01
    # The CPU kernel (bfloat16 activations) and the portable dequantised path agree.
    portable = nn.functional.linear(x, layer.dequantize(), layer.bias)
    assert rel_err(got, portable) < 0.01
    assert rel_err(layer.dequantize(), linear.weight) < bound


def test_cpu_kernels_build_here_and_match_float64():
    """Where a C++ compiler exists (this project's machines), the int8 kernel builds and equals
    a float64 product to float32 rounding; without one, the fallback says why."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        assert not cpu_kernels.available() and "compiler" in cpu_kernels.why_not()
        return
    assert cpu_kernels.available(), cpu_kernels.why_not()
    torch.manual_seed(0)
    ops = torch.ops.paligemma_cpu
    for rows in (1, 2, 5, 8, 9, 19):  # every unrolled width, and passes of 8 rows
        for in_features in (64, 96, 200, 512):
            x = torch.randn(rows, in_features)
            codes = torch.randint(-127, 128, (70, in_features), dtype=torch.int8)
            scale = torch.rand(70)
            want = x.double() @ (codes.double() * scale.double()[:, None]).T
            got = ops.int8_matmul(x, codes, scale)
            assert rel_err(got, want) < 1e-6, (rows, in_features)
    with pytest.raises(RuntimeError, match="one scale per output row"):
        ops.int8_matmul(torch.randn(1, 64), codes[:, :64], torch.rand(3))


def int4_reference(x, packed, scale, group):
    """float64 x @ W.T for int4 codes in the portable layout (low nibble first)."""
    codes = torch.stack([packed & 15, packed >> 4], -1).view(len(packed), -1).double() - 8
    w = (codes.view(len(packed), -1, group) * scale.double()[..., None]).view(len(packed), -1)
    return x.double() @ w.T


def test_int4_and_int8_kernels_match_float64_on_every_instruction_set():
    """Each path the CPU has (AVX-512, AVX2 + FMA, scalar: chosen at run time, forced here) equals
    a float64 product to float32 rounding, for every row count, group size and scale dtype."""
    assert cpu_kernels.available(), cpu_kernels.why_not()  # the kernels build on every CI host
    ops = torch.ops.paligemma_cpu
    torch.manual_seed(0)
    paths = range(int(ops.cpu_isa()) + 1)
    assert max(paths) == cpu_kernels.isa()
    for isa, rows in ((isa, rows) for isa in paths for rows in (1, 2, 3, 4, 8, 9, 16)):
        for in_features, group in ((64, 32), (128, 64), (384, 128), (192, 64)):
            x = torch.randn(rows, in_features)
            packed = torch.randint(0, 256, (40, in_features // 2), dtype=torch.uint8)
            for dtype in (torch.float32, torch.bfloat16):
                scale = torch.rand(40, in_features // group).to(dtype)
                got = ops.int4_matmul(x, packed, scale, group, isa)
                assert rel_err(got, int4_reference(x, packed, scale, group)) < 1e-6, (isa, rows)
        codes = torch.randint(-127, 128, (70, 200), dtype=torch.int8)
        scale = torch.rand(70)
        want = x.double() @ (codes.double() * scale.double()[:, None]).T[:192]
        got = ops.int8_matmul(x, codes[:, :192], scale, isa)
        assert rel_err(got, want) < 1e-6, (isa, rows)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        ops.int4_matmul(x, packed, scale, 48, -1)
    with pytest.raises(RuntimeError, match="has no path"):
        ops.int4_matmul(x, packed, torch.rand(40, 3), 64, 3)


def test_a_lower_instruction_set_can_be_forced(monkeypatch):
    assert cpu_kernels.available(), cpu_kernels.why_not()
    layer = q.Int4Linear.from_linear(nn.Linear(128, 48))
    x = torch.randn(2, 128)
    with torch.no_grad():
        want = nn.functional.linear(x, layer.dequantize(), layer.bias)
        for name, path in cpu_kernels.ISAS.items():
            monkeypatch.setenv(cpu_kernels.ENV_ISA, name)
            assert cpu_kernels.isa() == min(path, int(torch.ops.paligemma_cpu.cpu_isa()))
            assert rel_err(layer(x), want) < 1e-6
    monkeypatch.setenv(cpu_kernels.ENV_ISA, "sse9")
    with pytest.raises(ValueError, match="must be one of"):
        cpu_kernels.isa()


@pytest.mark.parametrize("cls", [q.Int8Linear, q.Int4Linear])
def test_every_cpu_path_gives_the_dequantised_product(cls, monkeypatch):
    """Decoding rows (our kernel / PyTorch's packed kernels) and prefill rows (dequantised in
    chunks, here 32 output rows at a time over 96 or 100) all equal x @ dequantize().T."""
    monkeypatch.setattr(q, "CHUNK", 32)
    torch.manual_seed(0)
    for out_features in (96, 100):  # (PyTorch's int4 packing needs a multiple of 16)
        check_paths(cls.from_linear(nn.Linear(128, out_features, bias=True)))


def check_paths(layer):
    cls = type(layer)
    for rows in (1, 3, q.KERNEL_ROWS, q.KERNEL_ROWS + 1, q.PACKED_ROWS, q.PACKED_ROWS + 1, 40):
        for dtype, bound in ((torch.float32, 1e-5), (torch.bfloat16, 0.01)):
            x = torch.randn(rows, 128, dtype=dtype)
            with torch.no_grad():
                got = layer(x)
                want = nn.functional.linear(x.float(), layer.dequantize().float(), layer.bias)
            assert got.dtype == dtype and got.shape == (rows, layer.out_features)
            # PyTorch's packed kernels round activations to bfloat16; ours and the GEMM do not.
            ours = cls is q.Int8Linear and rows <= q.KERNEL_ROWS and cpu_kernels.available()
            exact = ours or rows > q.PACKED_ROWS
            assert rel_err(got, want) < (bound if exact else 0.01), (rows, dtype)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_device_generic_quantised_path_matches_the_cpu_paths(pipeline_dir, mode, monkeypatch):
    """What runs on a GPU (the weight dequantised to the activation dtype), here on the CPU:
    the quantised model's logits equal those of the CPU path."""
    quant = paligemma.load(pipeline_dir, dtype=torch.float32, quantize=mode)
    texts = ["caption en", "ocr", "answer en what is this?"]  # > PACKED_ROWS rows: the GEMM
    batch = quant.processor(images=[torch.zeros(28, 28, 3).numpy().astype("uint8")] * 3, text=texts)
    assert batch["input_ids"].numel() > q.PACKED_ROWS
    with torch.no_grad():
        cpu = quant.model(**batch)
        monkeypatch.setattr(q, "_on_cpu_inference", lambda x: False)
        generic = quant.model(**batch)
    assert rel_err(generic, cpu) < 1e-5


def test_cpu_kernels_fall_back_when_disabled_or_unbuildable(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    assert not cpu_kernels.available() and cpu_kernels.ENV_SWITCH in cpu_kernels.why_not()
    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.delenv(cpu_kernels.ENV_SWITCH)
    monkeypatch.setenv("PALIGEMMA_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that always fails
    assert not cpu_kernels.available() and "build failed" in cpu_kernels.why_not()
    layer = q.Int8Linear.from_linear(nn.Linear(64, 8))  # and the layers still work
    x = torch.randn(1, 64)
    with torch.no_grad():
        assert rel_err(layer(x), nn.functional.linear(x, layer.dequantize(), layer.bias)) < 0.01


def test_int4_packing_round_trip():
    torch.manual_seed(0)
    layer = q.Int4Linear.from_linear(nn.Linear(128, 8, bias=False), group=32)
    codes = layer.codes()
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and layer.weight.shape == (8, 64)
    with pytest.raises(ValueError, match="multiple of the group"):
        q.Int4Linear(100, 8, group=64)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantised_model_saves_and_loads(pipeline_dir, tmp_path, mode):
    base = paligemma.load(pipeline_dir, dtype=torch.float32)
    quant = paligemma.load(pipeline_dir, dtype=torch.float32, quantize=mode)
    layers = [m for m in quant.model.modules() if type(m) in q.QUANTIZED]
    assert len(layers) == 7 * quant.model.cfg.text.depth + 1  # + the output head copy
    assert type(quant.model.decoder.head) in q.QUANTIZED
    # int8 looks embeddings up in the head's codes: no float copy of the matrix
    assert isinstance(quant.model.decoder.embed, q.Int8Embedding) == (mode == "int8")
    assert ("decoder.embed.weight" in quant.model.state_dict()) == (mode == "int4")
    batch = base.processor(
        images=[torch.zeros(28, 28, 3).numpy().astype("uint8")] * 2, text=["caption en", "ocr"]
    )
    with torch.no_grad():
        ref, got = base.model(**batch), quant.model(**batch)
    # The tiny test model is chaotic (large random weights, width 64): errors compound through
    # its layers, so int4's model-level error is large (measured 0.57 PaliGemma 1, 0.74
    # PaliGemma 2; layers are bounded tightly above). An all-zero output scores 1.0 and a
    # sign-flipped one about 1.9: the cosine check tells both from a noisy right answer.
    # int8 measured 0.034 / 0.061 (PG1 / PG2) with lookups in the head's int8 codes, 0.031 /
    # 0.052 when they read the float matrix.
    gemma2 = quant.model.cfg.text.final_softcap is not None
    assert rel_err(got, ref) < {"int8": 0.07, "int4": 0.78 if gemma2 else 0.6}[mode]
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0)
    assert float(cosine) > (0.99 if mode == "int8" else 0.6)
    paligemma.save_model(quant.model, tmp_path)
    assert json.loads((tmp_path / "quantization.json").read_text())["mode"] == mode
    again = paligemma.load_model(tmp_path, dtype=torch.float32)
    assert {type(m) for m in again.modules()} & set(q.QUANTIZED)
    for (name, a), b in zip(
        quant.model.state_dict().items(), again.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(again(**batch), got)
    # The saved file holds integer codes, so it is smaller than the float checkpoint.
    float_size = (pipeline_dir / "model.safetensors").stat().st_size
    assert (tmp_path / "model.safetensors").stat().st_size < float_size


def test_int8_lookups_are_the_heads_rows_and_old_saves_keep_the_float_matrix(
    pipeline_dir, tmp_path
):
    """int8 embeds token v as the head's dequantised row v (scaled by sqrt(D) as the float
    lookup is); an int8 model saved before lookups read the codes (the float embedding in its
    state dict, no `decoder.embed` in quantization.json) loads as it was saved."""
    base = paligemma.load_model(pipeline_dir, dtype=torch.float32)
    model = paligemma.load_model(pipeline_dir, dtype=torch.float32, quantize="int8")
    decoder, ids = model.decoder, torch.tensor([[0, 5, 17], [3, 3, 99]])
    rows = decoder.head.dequantize()[ids] * torch.tensor(decoder.cfg.width**0.5)
    assert torch.equal(decoder.embed_tokens(ids), rows)
    assert rel_err(rows, base.decoder.embed_tokens(ids)) < 0.01  # int8: 1 / 254 of a row's max
    assert decoder.dtype == torch.float32 and "decoder.embed" in q_store.describe(model)["modules"]
    decoder.embed = base.decoder.embed  # the earlier int8 layout
    paligemma.save_model(model, tmp_path)
    assert (
        "decoder.embed" not in json.loads((tmp_path / "quantization.json").read_text())["modules"]
    )
    again = paligemma.load_model(tmp_path, dtype=torch.float32)
    assert type(again.decoder.embed) is nn.Embedding
    assert torch.equal(again.decoder.embed.weight, base.decoder.embed.weight)
    with torch.no_grad():
        ids = torch.tensor([[2, 7, 11]])
        assert torch.equal(
            again.decoder.logits(again.decoder.embed_tokens(ids)),
            model.decoder.logits(model.decoder.embed_tokens(ids)),
        )


def test_a_spec_with_int8_lookups_needs_an_int8_head():
    spec = {"mode": "int4", "group": 64, "modules": ["decoder.embed", "decoder.head"]}
    with torch.device("meta"), pytest.raises(ValueError, match=r"needs an int8 'decoder\.head'"):
        q_store.build_(paligemma.PaliGemma(paligemma.TINY), spec)


def test_quantize_rejects_unknown_modes():
    with pytest.raises(ValueError, match="int8' or 'int4"):
        q.quantize_(paligemma.PaliGemma(paligemma.TINY), "int3")


def test_cli_convert_quantised_then_generate(pipeline_dir, tmp_path, capsys):
    from paligemma.cli import main

    out = tmp_path / "int8"
    assert main(["convert", str(pipeline_dir), str(out), "--quantize", "int8"]) == 0
    assert "int8, our layout" in capsys.readouterr().out
    assert (out / "quantization.json").is_file() and (out / "tokenizer.model").is_file()
    pipe = paligemma.load(out)
    assert any(type(m) is q.Int8Linear for m in pipe.model.modules())
    image = torch.full((28, 28, 3), 90, dtype=torch.uint8).numpy()
    assert len(pipe.generate(image, "caption en", max_new_tokens=3).token_ids) == 3


# -- layers swapped by name: the tied head, the CPU matrix-vector path, the saved form ----------


def tiny_model() -> paligemma.PaliGemma:
    torch.manual_seed(0)
    return paligemma.PaliGemma(paligemma.TINY).eval()


def test_matvec_path_swaps_layers_keeping_tensors_and_results(monkeypatch):
    """install_matvec_ keeps every parameter (same objects, same names, no new key: the tied head
    holds none), sends single CPU rows through torch.mv, and changes no result."""
    from paligemma.gemma import TiedHead
    from paligemma.quant import matvec

    model = tiny_model()
    assert type(model.decoder.head) is TiedHead
    params = dict(model.named_parameters())
    assert not any(k.startswith("decoder.head") for k in model.state_dict())
    x = torch.randn(1, 1, paligemma.TINY.text.width)
    h = torch.randn(3, 2, paligemma.TINY.text.width)
    with torch.no_grad():
        want = [model.decoder.blocks[0].mlp(x), model.decoder.logits(x), model.decoder.logits(h)]
    matvec.install_matvec_(model)
    assert dict(model.named_parameters()) == params  # the very same Parameter objects
    assert type(model.decoder.head) is matvec.MatVecHead
    assert type(model.decoder.blocks[0].attn.q_proj) is matvec.MatVecLinear
    calls = []
    mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *a: calls.append(1) or mv(*a))
    monkeypatch.setattr(matvec, "MV_MAX_THREADS", torch.get_num_threads())  # whatever the host
    with torch.no_grad():
        got = [model.decoder.blocks[0].mlp(x), model.decoder.logits(x), model.decoder.logits(h)]
    assert len(calls) == 4  # gate, up, down, head; the 6-row logits take F.linear
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.fixture
def threads():
    """Sets torch's thread count for one test, then puts it back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_a_single_row_takes_torch_mv_with_few_threads_or_rows_alone(threads, monkeypatch):
    """One bfloat16 row through a 16,384-wide projection: with few threads (or under
    set_rows_alone_, the server's) torch.mv, whose bits are the bits that row gets in a batch
    of 2..16 rows; with many threads (F.linear is faster there) F.linear's own. (Where F.linear
    gives one row the batch's bits too, e.g. AVX2 hosts, the calls still tell.) This is the
    path without our bfloat16 kernel (OWN_MV off here; it takes such rows where built:
    tests/test_bf16_mv.py)."""
    from paligemma.quant import matvec

    monkeypatch.setattr(matvec, "OWN_MV", False)
    calls = []
    mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *a: calls.append(1) or mv(*a))

    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(16384, 2048, bias=False).bfloat16()
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.02, generator=g)
    x = torch.randn(8, 1, 16384, generator=g).bfloat16()
    model = matvec.install_matvec_(nn.Sequential(layer))
    with torch.no_grad():
        batch = F.linear(x[:, 0], layer.weight)  # (8, 2048): each row as in a batch
        single = torch.cat([F.linear(x[r], layer.weight) for r in range(8)])  # F.linear alone
        runs = {}
        for name, n in (("few", matvec.MV_MAX_THREADS), ("many", matvec.MV_MAX_THREADS + 1)):
            threads(n)
            calls.clear()
            runs[name] = torch.cat([model(x[r]) for r in range(8)]), len(calls)
        paligemma.model.set_rows_alone_(model)
        assert model[0].rows_alone
        calls.clear()
        runs["alone"] = torch.cat([model(x[r]) for r in range(8)]), len(calls)
    assert [n for _, n in runs.values()] == [8, 0, 8]  # torch.mv: few threads, rows alone
    assert torch.equal(runs["few"][0], batch) and torch.equal(runs["alone"][0], batch)
    assert torch.equal(runs["many"][0], single)


def test_load_model_installs_the_matvec_path_on_the_cpu(pipeline_dir):
    from paligemma.quant import matvec

    model = paligemma.load_model(pipeline_dir, dtype=torch.float32)
    kinds = {type(m) for m in model.modules()}
    assert matvec.MatVecHead in kinds and matvec.MatVecLinear in kinds and nn.Linear not in kinds


def test_quant_store_describes_and_rebuilds_a_model():
    from paligemma.quant import store

    model = tiny_model()
    assert store.describe(model) is None
    q.quantize_(model, "int4", group=32)
    spec = store.describe(model)
    assert spec["mode"] == "int4" and spec["group"] == 32 and "decoder.head" in spec["modules"]
    with torch.device("meta"):
        skeleton = store.build_(paligemma.PaliGemma(paligemma.TINY), spec)
    shapes = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in skeleton.state_dict().items()} == shapes
    with pytest.raises(ValueError, match="mode must be"):
        store.build_(paligemma.PaliGemma(paligemma.TINY), {**spec, "mode": "int3"})
    q.quantize_(model, "int8", include="vision.blocks.*")
    with pytest.raises(ValueError, match="mixes int8 and int4"):
        store.describe(model)


# -- quantising at load: tensor by tensor, never the whole model in 16 or 32 bits ----------------


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantising_at_load_equals_quantising_after_load(tmp_path, mode):
    from paligemma.checkpoints import load as checkpoint_load

    torch.manual_seed(0)
    paligemma.save_model(paligemma.PaliGemma(paligemma.TINY).to(torch.bfloat16), tmp_path)
    after = checkpoint_load._load_any(tmp_path, None, None, None, None)
    q.quantize_(after, mode)
    at_load = paligemma.load_model(tmp_path, quantize=mode)
    want, got = after.state_dict(), at_load.state_dict()
    assert want.keys() == got.keys()
    for name, t in want.items():
        assert t.dtype == got[name].dtype and torch.equal(t, got[name]), name
    with pytest.raises(ValueError, match="int8' or 'int4"):
        paligemma.load_model(tmp_path, quantize="int3")


def test_quantize_weight_without_the_kernels_gives_the_same_codes(monkeypatch):
    torch.manual_seed(0)
    w = (torch.randn(300, 256) * torch.rand(300, 1)).to(torch.bfloat16)
    w[3] = 0
    for mode in ("int8", "int4"):
        ours = q.quantize_weight(w, mode)
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
        portable = q.quantize_weight(w, mode, elements=1000)  # (in blocks of 3 rows)
        monkeypatch.undo()
        for a, b in zip(ours, portable, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b), mode


def test_the_package_ships_every_file_the_kernel_build_reads():
    """pyproject's package-data names every C++ source and header kernels.py compiles (a wheel
    without one builds no kernels and falls back to PyTorch's, silently slower), matched as
    setuptools matches it: the glob against the path inside the package."""
    import fnmatch
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib

    root = Path(cpu_kernels.__file__).resolve().parents[3]
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    globs = meta["tool"]["setuptools"]["package-data"]["paligemma"]
    package = root / "src" / "paligemma"
    files = [f.relative_to(package).as_posix() for f in cpu_kernels.SOURCES + cpu_kernels.HEADERS]
    assert len(files) >= 9 and all((package / f).exists() for f in files)
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert missing == []
