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
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .config import ConfigError, PaliGemmaConfig, get_config
from .hf_config import from_hf_json, to_hf_json
from .model import PaliGemma
from .weights import (
    CheckpointError,
    check_keys,
    hf_name_to_ours,
    infer_npz_config,
    npz_to_ours,
    our_name_to_hf,
)

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHARD_BYTES = 5 * 2**30
_STAGING_BYTES = 8 * 2**20  # chunk size for dtype conversion while reading


# ---------------------------------------------------------------------------------------------
# safetensors, read without mapping the file


class SafetensorsReader:
    """One .safetensors file: parse the JSON header, read tensors on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by close())
        size = os.fstat(self._file.fileno()).st_size
        try:
            (header_len,) = struct.unpack("<Q", self._file.read(8))
            if header_len > min(size - 8, 100 * 2**20):
                raise ValueError("header length out of range")
            header = json.loads(self._file.read(header_len))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is not a safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self._base = 8 + header_len
        self._staging = torch.empty(_STAGING_BYTES, dtype=torch.uint8)
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            dtype = _ST_DTYPES.get(info.get("dtype"))
            begin, end = info.get("data_offsets", (0, -1))
            shape = tuple(info.get("shape", ()))
            nbytes = math.prod(shape) * (dtype.itemsize if dtype else 0)
            if dtype is None or begin < 0 or end - begin != nbytes or self._base + end > size:
                raise CheckpointError(f"{path}: tensor {name!r} has a corrupt header entry")
            self.entries[name] = (dtype, shape, begin, end)

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self.entries[name]
        return end - begin

    def read(self, name: str, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
        """Tensor `name`, converted to `dtype` and `device` on the way in.

        A conversion goes through a small reusable staging buffer, chunk by chunk, so a
        float32 file loads into bfloat16 without ever holding the float32 tensor whole.
        """
        src, shape, begin, _ = self.entries[name]
        dtype = dtype or src
        out = torch.empty(shape, dtype=dtype, device=device)
        self._file.seek(self._base + begin)
        if dtype == src and out.device.type == "cpu":
            self._read_exactly(out.reshape(-1).view(torch.uint8), name)
            return out
        flat, step = out.reshape(-1), _STAGING_BYTES // src.itemsize
        for i in range(0, flat.numel(), step):
            n = min(step, flat.numel() - i)
            chunk = self._staging[: n * src.itemsize]
            self._read_exactly(chunk, name)
            flat[i : i + n].copy_(chunk.view(src))
        return out

    def _read_exactly(self, buf: torch.Tensor, name: str) -> None:
        if buf.numel() and self._file.readinto(memoryview(buf.numpy())) != buf.numel():
            raise CheckpointError(f"{self.path}: truncated while reading {name!r}")

    def close(self) -> None:
        self._file.close()


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


def _load_hf_dir(path: Path, cfg, dtype, device) -> PaliGemma:
    if cfg is None:
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} has no config.json (pass config=)")
        cfg = from_hf_json(json.loads((path / "config.json").read_text()))
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
        with torch.device("meta"):
            model = PaliGemma(cfg)
        state: dict[str, torch.Tensor] = {}
        for _, name, reader in sorted(items, key=lambda x: -x[0]):  # largest first
            ours = hf_name_to_ours(name, cfg)
            if ours is None:  # the tied output head is the embedding; the reference ignores it
                continue
            if ours in state:
                raise CheckpointError(f"tensor {ours!r} appears twice (as {name!r})")
            state[ours] = reader.read(name, dtype, device)
            if not state[ours].is_floating_point():
                raise CheckpointError(f"{name!r} is {state[ours].dtype}, not floating point")
    finally:
        for r in readers:
            r.close()
    return _assign(model, state)


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


def _load_npz(path: Path, cfg, dtype, device) -> PaliGemma:
    try:
        meta = _npz_shapes(path)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable .npz ({e})") from None
    if cfg is None:
        cfg = infer_npz_config({k: shape for k, (shape, _) in meta.items()})
    if dtype is None:
        dtypes = [
            torch.bfloat16 if d == np.dtype("V2") else _npz_tensor(np.zeros(0, d)).dtype
            for _, d in meta.values()
        ]
        dtype = _majority_dtype(dtypes)
    with torch.device("meta"):
        model = PaliGemma(cfg)
    state: dict[str, torch.Tensor] = {}
    sizes = {k: math.prod(s) * d.itemsize for k, (s, d) in meta.items()}
    with np.load(path, allow_pickle=False) as npz:
        for key in sorted(sizes, key=lambda k: -sizes[k]):  # largest first
            array = _npz_tensor(npz[key])
            for name, t in npz_to_ours(key, array, cfg):
                if name in state:
                    raise CheckpointError(f"tensor {name!r} appears twice in {path}")
                state[name] = _materialise(t, dtype, device)
            del array
    return _assign(model, state)


def load_model(
    source: str | os.PathLike,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    config: PaliGemmaConfig | str | os.PathLike | dict | None = None,
) -> PaliGemma:
    """A PaliGemma with weights from `source`, in eval mode.

    source: a transformers directory (config.json + model.safetensors or a sharded index, 4.x
    or 5.x tensor names), a big_vision `.npz`, or a hub id such as "google/paligemma2-3b-pt-224".
    config: overrides config.json; for an .npz (which holds none) a preset name, config.json path,
    dict or PaliGemmaConfig, else inferred from the tensor shapes where they determine it.
    dtype: defaults to the stored weights' dtype. device: defaults to the CPU.
    """
    device = torch.device(device or "cpu")
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    path = resolve_source(source)
    try:
        cfg = _as_config(config)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read config {config!r}: {e}") from None
    if path.is_dir():
        npz = sorted(path.glob("*.npz"))
        if not any(path.glob("*.safetensors")) and len(npz) == 1:
            return _load_npz(npz[0], cfg, dtype, device)
        return _load_hf_dir(path, cfg, dtype, device)
    if path.suffix == ".npz":
        return _load_npz(path, cfg, dtype, device)
    if path.name == "config.json" or path.suffix == ".safetensors":
        return _load_hf_dir(path.parent, cfg, dtype, device)
    raise CheckpointError(f"{path}: expected a directory, an .npz or a .safetensors file")


# ---------------------------------------------------------------------------------------------
# Saving


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model(
    model: PaliGemma, out_dir: str | os.PathLike, max_shard_bytes: int = _SHARD_BYTES
) -> None:
    """Write `model` in the transformers layout (config.json + safetensors, sharded when large).

    Tensor names are those of the published checkpoints, which every transformers version loads.
    Each file is written under a temporary name and renamed, so a crash leaves no torn file.
    """
    from safetensors.torch import save_file

    cfg = model.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
        _write_atomic(
            out / fname, lambda p, s=shard: save_file(s, str(p), metadata={"format": "pt"})
        )
    if n > 1:
        index = {
            "metadata": {
                "total_size": sum(t.numel() * t.element_size() for s in shards for t in s.values())
            },
            "weight_map": {k: f for f, s in zip(names, shards, strict=True) for k in s},
        }
        _write_atomic(
            out / "model.safetensors.index.json",
            lambda p: p.write_text(json.dumps(index, indent=2)),
        )
    hf = to_hf_json(cfg, dtype=_DTYPE_NAMES.get(model.dtype))
    _write_atomic(out / "config.json", lambda p: p.write_text(json.dumps(hf, indent=2) + "\n"))
    gen = {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    _write_atomic(
        out / "generation_config.json", lambda p: p.write_text(json.dumps(gen, indent=2) + "\n")
    )
