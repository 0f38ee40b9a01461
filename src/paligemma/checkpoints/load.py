"""Load and save whole models: transformers directories, Hugging Face Hub ids, big_vision npz.

Loading builds the model on the meta device (no memory), then reads one tensor at a time,
converts it to the target dtype and device, and finally assigns them all (`strict=True`). Tensors
are read with plain file reads, not memory-mapped, largest first: the process never holds more
than the finished tensors plus the one being converted, so peak memory stays near the model's
size in the target dtype (a mapped file would add its touched pages to the resident set, up to
the whole file). Nothing is unpickled: safetensors headers are JSON, npz members are read with
`allow_pickle=False`.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError, PaliGemmaConfig, get_config, with_reference
from ..model import PaliGemma
from ..quant import store as quant_store
from ..quant.matvec import install_matvec_
from ..quant.store import QUANT_FILE
from .hf_config import from_hf_json, to_hf_json
from .names import (
    CheckpointError,
    check_keys,
    hf_name_to_ours,
    infer_npz_config,
    npz_to_ours,
    our_name_to_hf,
)
from .safetensors_io import SafetensorsReader, write_atomic, write_safetensors

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHARD_BYTES = 5 * 2**30


# ---------------------------------------------------------------------------------------------
# Sources


def resolve_source(source: str | os.PathLike) -> Path:
    """A local path, or a hub id downloaded (or found in the cache) by huggingface_hub."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    if not _HUB_ID.match(text):
        raise CheckpointError(f"no such checkpoint: {text!r} (not a file, directory or hub id)")
    from huggingface_hub import snapshot_download

    try:
        local = Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.model"]))
        if not any(local.glob("*.safetensors")):  # big_vision-only repos hold an .npz
            local = Path(snapshot_download(text, allow_patterns=["*.npz"]))
    except Exception as e:  # offline, unknown repo, gated, network down: all end the same way
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{text!r} is not a local path and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {reason}); download it where the hub is reachable and pass "
            f"its directory, e.g. load_model('/path/to/{text.split('/')[-1]}')"
        ) from None
    return local


def _as_config(config: PaliGemmaConfig | str | os.PathLike | dict | None) -> PaliGemmaConfig | None:
    if config is None or isinstance(config, PaliGemmaConfig):
        return config
    if isinstance(config, dict):
        return from_hf_json(config)
    path = Path(config)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return from_hf_json(json.loads(path.read_text()))
    return get_config(str(config))


def _materialise(t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`t` in `dtype` on `device`, in storage of its own (never a view of a larger array)."""
    if not t.is_floating_point():
        raise CheckpointError(f"expected floating-point weights, got {t.dtype}")
    return torch.empty(t.shape, dtype=dtype, device=device).copy_(t)


def _assign(model: PaliGemma, state: dict[str, torch.Tensor]) -> PaliGemma:
    check_keys({k: v.shape for k, v in model.state_dict().items()}, state)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _majority_dtype(dtypes: list[torch.dtype]) -> torch.dtype:
    floats = [d for d in dtypes if d.is_floating_point]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _load_hf_dir(path: Path, cfg, dtype, device, reference, quantize=None) -> PaliGemma:
    if cfg is None:
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json (pass config=)")
        cfg = from_hf_json(json.loads((path / "config.json").read_text()))
    cfg = with_reference(cfg, reference or "transformers")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(f"{path} has neither model.safetensors nor its sharded index")
    missing_files = [f for f in files if not (path / f).is_file()]
    if missing_files:
        raise CheckpointError(f"{path} lacks shard(s) {', '.join(missing_files)}")
    readers = [SafetensorsReader(path / f) for f in files]
    try:
        items = [(r.nbytes(n), n, r) for r in readers for n in r.entries]
        if dtype is None:
            dtype = _majority_dtype([r.entries[n][0] for _, n, r in items])
        model, spec = _skeleton(cfg, quantize)
        state: dict[str, torch.Tensor] = {}
        scratch = None  # one buffer for the tensors read only to be quantised (the largest)
        for _, name, reader in sorted(items, key=lambda x: -x[0]):  # largest first
            ours = hf_name_to_ours(name, cfg)
            if ours is None:  # the tied output head is the embedding; the reference ignores it
                continue
            if ours in state:
                raise CheckpointError(f"tensor {ours!r} appears twice (as {name!r})")
            into = None  # (no tensor of its own: memory freed and taken again stays resident)
            if quant_store.dropped(ours, spec):
                into = scratch = _scratch(scratch, reader.entries[name][1], dtype, device)
            t = reader.read(name, dtype, device, scratch=into)
            if not t.is_floating_point():
                raise CheckpointError(f"{name!r} is {t.dtype}, not floating point")
            state.update(quant_store.entries(ours, t, spec))
    finally:
        for r in readers:
            r.close()
    return _assign(model, state)


def _scratch(buf: torch.Tensor | None, shape, dtype, device) -> torch.Tensor:
    """`buf`, or a new flat uint8 buffer when a tensor of `shape` and `dtype` does not fit or
    needs under a quarter of it (the last, small tensors: the big buffer goes)."""
    need = math.prod(shape) * dtype.itemsize
    if buf is None or not need <= buf.numel() < 4 * need:
        buf = torch.empty(need, dtype=torch.uint8, device=device)
    return buf


def _npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of every array in an .npz, from the member headers only."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                fmt = np.lib.format
                major, _ = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                shape, _, dtype = read(f)
            out[info.filename[: -len(".npy")]] = (shape, dtype)
    return out


def _npz_tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype == np.dtype("V2"):  # big_vision stores bfloat16 as raw 2-byte voids
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _load_npz(path: Path, cfg, dtype, device, reference, quantize=None) -> PaliGemma:
    try:
        meta = _npz_shapes(path)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable .npz ({e})") from None
    if cfg is None:
        cfg = infer_npz_config({k: shape for k, (shape, _) in meta.items()})
    cfg = with_reference(cfg, reference or "big_vision")
    if dtype is None:
        dtypes = [
            torch.bfloat16 if d == np.dtype("V2") else _npz_tensor(np.zeros(0, d)).dtype
            for _, d in meta.values()
        ]
        dtype = _majority_dtype(dtypes)
    model, spec = _skeleton(cfg, quantize)
    state: dict[str, torch.Tensor] = {}
    sizes = {k: math.prod(s) * d.itemsize for k, (s, d) in meta.items()}
    with np.load(path, allow_pickle=False) as npz:
        for key in sorted(sizes, key=lambda k: -sizes[k]):  # largest first
            array = _npz_tensor(npz[key])
            for name, t in npz_to_ours(key, array, cfg):
                if name in state:
                    raise CheckpointError(f"tensor {name!r} appears twice in {path}")
                state.update(quant_store.entries(name, _materialise(t, dtype, device), spec))
            del array
    return _assign(model, state)


def _skeleton(cfg, quantize: str | None) -> tuple[PaliGemma, dict | None]:
    """The model on the meta device, and with `quantize` its quantised layers and their spec
    (each float tensor is then quantised as it is read: quant_store.entries)."""
    with torch.device("meta"):
        model = PaliGemma(cfg)
        spec = None if quantize is None else quant_store.plan(model, quantize)
        return (model if spec is None else quant_store.build_(model, spec)), spec


def _load_quantized(path: Path, dtype, device, reference) -> PaliGemma:
    """A checkpoint written by `save_model` from a quantised model: our tensor names, integer
    codes kept as they are, float tensors converted to `dtype`; quant.store builds the model."""
    cfg = with_reference(from_hf_json(json.loads((path / "config.json").read_text())), reference)
    spec = json.loads((path / QUANT_FILE).read_text())
    reader = SafetensorsReader(path / "model.safetensors")
    try:
        if dtype is None:
            dtype = _majority_dtype([reader.entries[n][0] for n in reader.entries])
        with torch.device("meta"):
            model = quant_store.build_(PaliGemma(cfg), spec)
        state = {}
        for name in reader.entries:
            stored = reader.entries[name][0]
            state[name] = reader.read(name, dtype if stored.is_floating_point else stored, device)
    finally:
        reader.close()
    return _assign(model, state)


def load_model(
    source: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    config: PaliGemmaConfig | str | os.PathLike | dict | None = None,
    quantize: str | None = None,
    *,
    reference: str | None = None,
) -> PaliGemma:
    """A PaliGemma with weights from `source`, in eval mode.

    source: a transformers directory (config.json + model.safetensors or a sharded index, 4.x
    or 5.x tensor names), a big_vision `.npz`, or a hub id such as "google/paligemma2-3b-pt-224".
    config: overrides config.json; for an .npz (which holds none) a preset name, config.json path,
    dict or PaliGemmaConfig, else inferred from the tensor shapes where they determine it.
    dtype: defaults to the stored weights' dtype. device: defaults to the CPU.
    quantize: "int8" | "int4" quantises the decoder's linear layers (weight-only) tensor by
    tensor as they are read; a checkpoint saved from a quantised model loads quantised without
    it. On the CPU the float linears and the tied head take the matrix-vector path for single
    rows (quant/matvec.py).
    reference: "transformers" | "big_vision", whose computation to reproduce where the two
    differ (PaliGemma 2 only; see `config.with_reference`): transformers keeps Gemma 2's
    sliding window and final logit soft-cap, big_vision (where PaliGemma 2 was trained) has
    neither. Default: big_vision for an .npz, transformers for everything else.
    """
    if quantize not in (None, *quant_store.MODES):
        raise ValueError(f"quantize must be 'int8' or 'int4', got {quantize!r}")
    model = _load_any(source, dtype, device, config, reference, quantize)
    return install_matvec_(model) if model.device.type == "cpu" else model


def _load_any(source, dtype, device, config, reference, quantize=None) -> PaliGemma:
    device = torch.device(device or "cpu")
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    path = resolve_source(source)
    try:
        cfg = _as_config(config)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {config!r}: {e}") from None
    if path.is_dir() and (path / QUANT_FILE).is_file():
        return _load_quantized(path, dtype, device, reference or "transformers")
    if path.is_dir():
        npz = sorted(path.glob("*.npz"))
        if not any(path.glob("*.safetensors")) and len(npz) == 1:
            return _load_npz(npz[0], cfg, dtype, device, reference, quantize)
        return _load_hf_dir(path, cfg, dtype, device, reference, quantize)
    if path.suffix == ".npz":
        return _load_npz(path, cfg, dtype, device, reference, quantize)
    if path.name == "config.json" or path.suffix == ".safetensors":
        return _load_hf_dir(path.parent, cfg, dtype, device, reference, quantize)
    raise CheckpointError(f"{path}: expected a directory, an .npz or a .safetensors file")


# ---------------------------------------------------------------------------------------------
# Saving


def save_model(
    model: PaliGemma, out_dir: str | os.PathLike, max_shard_bytes: int = _SHARD_BYTES
) -> None:
    """Write `model` in the transformers layout (config.json + safetensors, sharded when large).

    Tensor names are those of the published checkpoints, which every transformers version loads.
    A quantised model is saved in our own layout instead (our tensor names, integer codes, and
    quantization.json): load_model reads it back quantised, transformers does not read it.
    Each file is written under a temporary name and renamed, so a crash leaves no torn file.
    """
    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = quant_store.describe(model)
    if spec is not None:  # our own layout: transformers has no such tensors
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        write_atomic(
            out / "model.safetensors", lambda p: write_safetensors(state, p, {"format": "pt"})
        )
        write_atomic(out / QUANT_FILE, lambda p: p.write_text(json.dumps(spec, indent=1)))
        hf = to_hf_json(cfg, dtype=_DTYPE_NAMES.get(model.dtype))
        write_atomic(out / "config.json", lambda p: p.write_text(json.dumps(hf, indent=2) + "\n"))
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in model.state_dict().items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][our_name_to_hf(name, cfg)] = t.detach().to("cpu").contiguous()
        size += nbytes
    n = len(shards)
    names = (
        ["model.safetensors"]
        if n == 1
        else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    )
    for fname, shard in zip(names, shards, strict=True):
        write_atomic(out / fname, lambda p, s=shard: write_safetensors(s, p, {"format": "pt"}))
    if n > 1:
        index = {
            "metadata": {
                "total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())
            },
            "weight_map": {k: f for f, s in zip(names, shards, strict=True) for k in s},
        }
        write_atomic(
            out / "model.safetensors.index.json",
            lambda p: p.write_text(json.dumps(index, indent=2)),
        )
    hf = to_hf_json(cfg, dtype=_DTYPE_NAMES.get(model.dtype))
    write_atomic(out / "config.json", lambda p: p.write_text(json.dumps(hf, indent=2) + "\n"))
    gen = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    write_atomic(
        out / "generation_config.json", lambda p: p.write_text(json.dumps(gen, indent=2) + "\n")
    )
