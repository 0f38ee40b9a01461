"""A checkpoint directory besides its weights: tokenizer, preprocessor config, mask VQ-VAE."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..tokenizer import TOKENIZER_FILES

MASK_VAE_FILES = ("vae-oid.npz", "vae-oid.safetensors", "mask_vae.safetensors", "mask_vae.npz")


def copy_assets(source: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Copy what a checkpoint needs besides weights (tokenizer, preprocessor config, mask
    VQ-VAE) from `source` (a checkpoint directory or file in one) to `dest`."""
    source = Path(source)
    directory = source if source.is_dir() else source.parent
    for name in (*TOKENIZER_FILES, "preprocessor_config.json", *MASK_VAE_FILES):
        if (directory / name).is_file():
            shutil.copy(directory / name, Path(dest) / name)


def find_mask_vae(directory: Path) -> Path | None:
    """The mask VQ-VAE file beside a checkpoint's weights, if there is one."""
    return next((directory / n for n in MASK_VAE_FILES if (directory / n).is_file()), None)
