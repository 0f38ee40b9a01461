"""Every checkpoint layout loads the same model; keys are checked strictly; saving round-trips."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bigvision_npz import write_bigvision_npz
from conftest import make_batch
from safetensors.torch import load_file, save_file

import paligemma
from paligemma import CheckpointError
from paligemma.checkpoints.safetensors_io import current_umask


def logits_of(model, dtype=torch.float32):
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        return model(ids, px.to(dtype), am, tt)


@pytest.fixture(scope="module")
def reference(hf_checkpoint):
    """(transformers model, its saved dir, our model loaded from it, its logits)."""
    hf, path = hf_checkpoint
    ours = paligemma.load_model(path)
    return hf, path, ours, logits_of(ours)


def rewrite(src: Path, dst: Path, rename, config=None) -> Path:
    """Copy a checkpoint directory with renamed tensors (and optionally another config.json)."""
    dst.mkdir()
    tensors = load_file(src / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, dst / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text()) if config is None else config
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def to_legacy(name: str) -> str:
    """transformers 5.x file names -> the published (4.x) layout."""
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + name[len("vision_tower.") :]
    return name


def test_5x_file_layout_is_what_transformers_writes(reference):
    _, path, _, _ = reference
    names = load_file(path / "model.safetensors").keys()
    assert any(n.startswith("vision_tower.encoder.") for n in names)  # 5.23 drops vision_model.


def test_legacy_layout_and_4x_config(reference, tmp_path):
    """Published checkpoints: vision_tower.vision_model.* names, 4.x config.json fields."""
    _, path, _, want = reference
    cfg = json.loads((path / "config.json").read_text())
    text = cfg["text_config"]
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]  # 4.x: flat rope_theta
    text.pop("layer_types", None)  # old configs lack it; the default pattern applies
    text.pop("use_bidirectional_attention", None)
    text["torch_dtype"] = "float32"
    cfg |= {"torch_dtype": "float32", "transformers_version": "4.44.0", "ignore_index": -100}
    d = rewrite(path, tmp_path / "legacy", to_legacy, cfg)
    assert "vision_tower.vision_model.post_layernorm.weight" in load_file(d / "model.safetensors")
    got = logits_of(paligemma.load_model(d))
    assert torch.equal(got, want)


def test_in_memory_5x_names_and_tied_head(reference, tmp_path):
    """state_dict() names of transformers 5.x (model.language_model.*, lm_head) also load."""
    hf, path, _, want = reference
    d = tmp_path / "inmem"
    d.mkdir()
    state = {k: v.contiguous().clone() for k, v in hf.state_dict().items()}
    assert "lm_head.weight" in state and any(k.startswith("model.language_model.") for k in state)
    save_file(state, d / "model.safetensors")
    (d / "config.json").write_text((path / "config.json").read_text())
    assert torch.equal(logits_of(paligemma.load_model(d)), want)


def test_sharded_checkpoint(reference, tmp_path):
    hf, _, _, want = reference
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    assert torch.equal(logits_of(paligemma.load_model(tmp_path)), want)


def test_missing_shard_is_named(reference, tmp_path):
    hf, _, _, _ = reference
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        paligemma.load_model(tmp_path)


def _npz_kwargs(cfg: paligemma.PaliGemmaConfig) -> dict:
    t = cfg.text
    return dict(
        gemma2=cfg.is_v2,
        num_heads=t.num_heads,
        num_kv_heads=t.num_kv_heads,
        head_dim=t.head_dim,
        vision_heads=cfg.vision.num_heads,
    )


def test_bigvision_npz_float32(reference, tmp_path):
    _, path, ours, want = reference
    npz = tmp_path / "ckpt.npz"
    write_bigvision_npz(load_file(path / "model.safetensors"), npz, **_npz_kwargs(ours.cfg))
    # An npz holds no config: give it as a config.json path, a preset-like object, or a dict.
    # (Same weights, same numbers: transformers' window and final soft-cap asked for explicitly,
    # an npz computes as big_vision by default; test_parity covers that default.)
    for config in (path / "config.json", ours.cfg, json.loads((path / "config.json").read_text())):
        model = paligemma.load_model(npz, config=config, reference="transformers")
        assert model.dtype == torch.float32
        assert torch.equal(logits_of(model), want)


def test_bigvision_npz_bfloat16_void_with_params_prefix(reference, tmp_path):
    """Real big_vision files store bf16 as raw 2-byte voids and may prefix keys with params/."""
    _, path, ours, _ = reference
    npz = tmp_path / "ckpt.npz"
    write_bigvision_npz(
        load_file(path / "model.safetensors"),
        npz,
        bf16_as_void=True,
        params_prefix=True,
        **_npz_kwargs(ours.cfg),
    )
    with np.load(npz, allow_pickle=False) as f:
        assert f["params/llm/final_norm/scale"].dtype == np.dtype("V2")
    model = paligemma.load_model(npz, config=ours.cfg, reference="transformers")
    assert model.dtype == torch.bfloat16  # the stored dtype is the default
    from_safetensors = paligemma.load_model(path, dtype=torch.bfloat16)
    assert torch.equal(
        logits_of(model, torch.bfloat16), logits_of(from_safetensors, torch.bfloat16)
    )


def test_npz_vocabulary_pad_rows(reference, tmp_path):
    """big_vision files lack transformers' 64 padding rows: they are added as zeros."""
    _, path, ours, want = reference
    tensors = load_file(path / "model.safetensors")
    name = "language_model.model.embed_tokens.weight"
    full = tensors[name]
    tensors[name] = full[:-4].clone()  # the image token (last id) row is never looked up
    npz = tmp_path / "ckpt.npz"
    write_bigvision_npz(tensors, npz, **_npz_kwargs(ours.cfg))
    model = paligemma.load_model(npz, config=ours.cfg, reference="transformers")
    assert torch.equal(model.decoder.embed.weight[-4:], torch.zeros(4, full.shape[1]))
    got = logits_of(model)
    assert torch.allclose(got[..., :-4], want[..., :-4], atol=1e-6, rtol=0)


def test_npz_config_inferred_from_shapes():
    """Shapes alone fix PaliGemma 1; PaliGemma 2's caps come from the preset of that shape."""
    from paligemma.checkpoints.names import infer_npz_config

    def shapes(cfg):
        v, t = cfg.vision, cfg.text
        enc = "img/Transformer/encoderblock/"
        return {
            enc + "MultiHeadDotProductAttention_0/query/kernel": (
                v.depth,
                v.width,
                v.num_heads,
                v.head_dim,
            ),
            enc + "MlpBlock_0/Dense_0/kernel": (v.depth, v.width, v.mlp_dim),
            "img/embedding/kernel": (v.patch_size, v.patch_size, 3, v.width),
            "img/pos_embedding": (1, cfg.num_image_tokens, v.width),
            "llm/layers/attn/q_einsum/w": (t.depth, t.num_heads, t.width, t.head_dim),
            "llm/layers/attn/kv_einsum/w": (t.depth, 2, t.num_kv_heads, t.width, t.head_dim),
            "llm/layers/mlp/linear": (t.depth, t.mlp_dim, t.width),
            "llm/embedder/input_embedding": (257_152, t.width),
            **({"llm/layers/post_attention_norm/scale": (t.depth, t.width)} if cfg.is_v2 else {}),
        }

    for name, cfg in paligemma.CONFIGS.items():
        assert infer_npz_config(shapes(cfg)) == cfg, name
    tiny = paligemma.TINY  # PaliGemma 1 of any shape: fully determined
    want = dataclasses.replace(
        tiny, text=dataclasses.replace(tiny.text, vocab_size=257_216), image_token_id=257_152
    )
    assert infer_npz_config(shapes(tiny)) == want
    tiny2 = dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, post_norms=True))
    with pytest.raises(paligemma.ConfigError, match="config="):
        infer_npz_config(shapes(tiny2))


def test_npz_unscanned_layers(reference, tmp_path):
    """big_vision's scan=False files: one array per layer, encoderblock_{i}/ and layers/{i}/."""
    _, path, ours, want = reference
    npz = tmp_path / "ckpt.npz"
    tensors = load_file(path / "model.safetensors")
    write_bigvision_npz(tensors, npz, scanned=False, **_npz_kwargs(ours.cfg))
    with np.load(npz, allow_pickle=False) as f:
        assert "llm/layers/1/mlp/gating_einsum" in f.files
        assert "img/Transformer/encoderblock_1/LayerNorm_0/scale" in f.files
        assert not any(k.startswith("img/Transformer/encoderblock/") for k in f.files)
    model = paligemma.load_model(npz, config=ours.cfg, reference="transformers")
    assert torch.equal(logits_of(model), want)


def npz_file_shapes(npz: Path) -> dict[str, tuple[int, ...]]:
    with np.load(npz, allow_pickle=False) as f:
        shapes = {k: f[k].shape for k in f.files}
    width = shapes["llm/embedder/input_embedding"][1]
    return shapes | {"llm/embedder/input_embedding": (257_152, width)}  # a published vocabulary


def test_npz_fused_qkv_einsum_scanned_or_not(tmp_path):
    """With as many kv heads as heads, big_vision fuses q, k, v in one qkv_einsum (3, N, D, H);
    such files load, and their config is inferred, scanned or not."""
    from paligemma.checkpoints.names import infer_npz_config

    tiny = paligemma.TINY
    cfg = dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, num_kv_heads=4))
    torch.manual_seed(0)
    model = paligemma.PaliGemma(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    paligemma.save_model(model, tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    write_bigvision_npz(tensors, tmp_path / "plain.npz", **_npz_kwargs(cfg))
    want = logits_of(model)
    for scanned in (True, False):
        npz = tmp_path / f"fused-{scanned}.npz"
        write_bigvision_npz(tensors, npz, fused_qkv=True, scanned=scanned, **_npz_kwargs(cfg))
        shapes = npz_file_shapes(npz)
        assert not any("/q_einsum" in k or "/kv_einsum" in k for k in shapes)
        qkv = "llm/layers/attn/qkv_einsum/w" if scanned else "llm/layers/1/attn/qkv_einsum/w"
        assert shapes[qkv] == ((2, 3, 4, 64, 16) if scanned else (3, 4, 64, 16))  # (L,) 3 N D H
        assert torch.equal(logits_of(paligemma.load_model(npz, config=cfg)), want)
        inferred = infer_npz_config(shapes)
        assert inferred == infer_npz_config(npz_file_shapes(tmp_path / "plain.npz"))
        assert (inferred.text.num_kv_heads, inferred.text.depth, inferred.vision.depth) == (4, 2, 2)
    with pytest.raises(ValueError, match="as many kv heads as heads"):
        write_bigvision_npz(tensors, tmp_path / "x.npz", fused_qkv=True, **_npz_kwargs(tiny))


def test_missing_unexpected_and_misshapen_tensors_are_named(reference, tmp_path):
    _, path, _, _ = reference
    tensors = load_file(path / "model.safetensors")
    victim = "language_model.model.norm.weight"

    d = tmp_path / "missing"
    d.mkdir()
    save_file({k: v for k, v in tensors.items() if k != victim}, d / "model.safetensors")
    (d / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): decoder.final_norm.weight"):
        paligemma.load_model(d)

    d = tmp_path / "unexpected"
    d.mkdir()
    save_file(
        {**tensors, "vision_tower.head.probe.weight": torch.zeros(2)}, d / "model.safetensors"
    )
    (d / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"vision_tower\.vision_model\.head\.probe\.weight"):
        paligemma.load_model(d)

    d = tmp_path / "shape"
    d.mkdir()
    save_file({**tensors, victim: torch.zeros(3)}, d / "model.safetensors")
    (d / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"decoder.final_norm.weight \(3,\)"):
        paligemma.load_model(d)


def test_corrupt_and_truncated_files(reference, tmp_path):
    _, path, _, _ = reference
    d = tmp_path / "trunc"
    d.mkdir()
    data = (path / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    (d / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"corrupt|truncated"):
        paligemma.load_model(d)
    (d / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        paligemma.load_model(d)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"not a readable \.npz"):
        paligemma.load_model(tmp_path / "bad.npz", config=paligemma.TINY)


def test_save_model_loads_in_transformers(reference, tmp_path):
    from transformers import PaliGemmaForConditionalGeneration

    hf, _, ours, want = reference
    paligemma.save_model(ours, tmp_path)
    names = load_file(tmp_path / "model.safetensors").keys()
    published = ("vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.")
    assert all(n.startswith(published) for n in names)
    back = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager")
    ids, am, tt, px = make_batch()
    with torch.no_grad():
        a = back(input_ids=ids, pixel_values=px, attention_mask=am, token_type_ids=tt).logits
        b = hf(input_ids=ids, pixel_values=px, attention_mask=am, token_type_ids=tt).logits
    assert torch.equal(a, b)  # identical weights and config => identical logits
    assert torch.equal(logits_of(paligemma.load_model(tmp_path)), want)


def test_save_model_sharded_and_half(reference, tmp_path):
    from transformers import PaliGemmaForConditionalGeneration

    _, path, _, _ = reference
    ours = paligemma.load_model(path, dtype=torch.bfloat16)
    paligemma.save_model(ours, tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert not list(tmp_path.glob(".*.tmp"))
    umask = current_umask()
    for f in tmp_path.glob("*.safetensors"):  # the usual mode (safetensors alone writes 0600)
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    back = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16)
    ours_again = paligemma.load_model(tmp_path)
    assert ours_again.dtype == torch.bfloat16
    for (name, a), b in zip(
        ours.state_dict().items(), ours_again.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in ours.parameters())


def test_hub_id_offline_gives_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code = "import paligemma; paligemma.load_model('google/paligemma2-3b-pt-224')"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy()
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "could not be fetched from the Hugging Face Hub" in last
    assert "pass its directory" in last


def test_hub_id_from_cache(reference, tmp_path):
    """A hub id resolves through huggingface_hub's cache when the hub is unreachable."""
    _, path, _, _ = reference
    cache = tmp_path / "hub"
    repo = cache / "models--google--tiny-paligemma"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    for f in ("config.json", "model.safetensors"):
        (snap / f).write_bytes((path / f).read_bytes())
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    code = (
        "import paligemma, torch, sys; m = paligemma.load_model('google/tiny-paligemma'); "
        "print(repr(sum(p.double().sum().item() for p in m.parameters())))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    want = sum(p.double().sum().item() for p in paligemma.load_model(path).parameters())
    assert float(out.stdout.strip()) == want


def test_unknown_local_path():
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        paligemma.load_model("./definitely/not/../here.npz")


@pytest.mark.parametrize("procfs", [True, False])
def test_current_umask_reads_without_opening_up(procfs, monkeypatch):
    """Linux: read from /proc; elsewhere set-and-restore, briefly restrictive, never 0."""
    from paligemma.checkpoints import safetensors_io as reader

    if not procfs:

        def no_proc(*a, **k):
            raise OSError("no /proc here")

        monkeypatch.setattr(reader, "open", no_proc, raising=False)
    seen = []
    real_umask = os.umask

    def spy(mask):
        seen.append(mask)
        return real_umask(mask)

    monkeypatch.setattr(reader.os, "umask", spy)  # the loop sets masks through real_umask
    old = real_umask(0o022)
    try:
        for mask in (0o022, 0o027, 0o002):
            real_umask(mask)
            assert reader.current_umask() == mask
    finally:
        real_umask(old)
    if procfs and not Path("/proc/self/status").is_file():
        return  # not Linux: only the values above were checked
    assert seen == ([] if procfs else [0o077, 0o022, 0o077, 0o027, 0o077, 0o002])
