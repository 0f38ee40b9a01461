"""Reading .safetensors files one tensor at a time with plain file reads (no memory map), and
writing them with the usual file mode.

A mapped file adds every page it touches to the process's resident set (up to the whole file);
reading into the destination tensor, and converting dtypes through a small reusable staging
buffer, keeps peak memory at the size of the tensors actually kept. The header is JSON; nothing
is unpickled.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

from .names import CheckpointError


def current_umask() -> int:
    """The process's umask, read without changing it where the OS tells (Linux); elsewhere by
    setting a restrictive one for an instant (os.umask can only be read by setting it), so a
    file another thread creates in that instant is private rather than open to all."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """write(tmp) to a hidden temporary name beside `path`, then rename it over `path`: a crash
    leaves the old file or none, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None
) -> None:
    """safetensors' save_file, then the mode any new file gets (save_file makes files 0600,
    which hides checkpoints from the other users of a shared directory)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~current_umask())


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
_STAGING_BYTES = 8 * 2**20  # chunk size for dtype conversion while reading


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

    def read(
        self, name: str, dtype: torch.dtype | None = None, device=None, scratch=None
    ) -> torch.Tensor:
        """Tensor `name`, converted to `dtype` and `device` on the way in; with `scratch` (a
        flat uint8 buffer at least that large) the tensor is a view of it, not a new one.

        A conversion goes through a small reusable staging buffer, chunk by chunk, so a
        float32 file loads into bfloat16 without ever holding the float32 tensor whole.
        """
        src, shape, begin, _ = self.entries[name]
        dtype = dtype or src
        if scratch is None:
            out = torch.empty(shape, dtype=dtype, device=device)
        else:
            out = scratch[: math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
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
