"""Training examples -> our training JSONL: one {"image", "prefix", "suffix", "id"} a line,
image paths relative to the file when they can be, image bytes (parquet / Hugging Face) written
once each (named by content) to a folder beside it."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from .records import Dataset

KIND_TASKS = {"prefix": "prefix", "question": "answer", "caption": "caption"}
FORMAT_TASKS = {
    "coco-instances": "detect",
    "coco-captions": "caption",
    "vqav2": "answer",
    "refcoco": "detect",
}


def default_task(dataset: Dataset) -> str:
    """The task a dataset's records suit when none is named: by format, or for tables by their
    columns (prefix + suffix: as they are; question: answer; caption: caption)."""
    if dataset.format in FORMAT_TASKS:
        return FORMAT_TASKS[dataset.format]
    kinds = {r.meta.get("kind") for r in dataset}
    return KIND_TASKS.get(kinds.pop(), "prefix") if len(kinds) == 1 else "prefix"


def write_examples(examples: list[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write `examples` to the JSONL `out`; image bytes go to `<out stem>_images/` beside it.
    Returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent / f"{out.stem}_images"
    lines = []
    for ex in examples:
        images = ex["image"] if isinstance(ex["image"], list) else [ex["image"]]
        names = [_place(image, out.parent, folder) for image in images]
        line = {"image": names[0] if len(names) == 1 else names}
        line |= {"prefix": ex["prefix"], "suffix": ex["suffix"], "id": ex.get("id")}
        lines.append(json.dumps(line, ensure_ascii=False) + "\n")
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # ranks of one run may race
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out)
    return out


def _place(image: Path | bytes, root: Path, folder: Path) -> str:
    """How the JSONL names an image: bytes written to `folder` (once, by content hash), paths
    relative to `root` where they lie under it, else absolute."""
    if isinstance(image, bytes):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(image).hexdigest()[:20]}.{_extension(image)}"
        if not path.exists():
            path.write_bytes(image)
        image = path
    image = Path(image).absolute()
    try:
        return image.relative_to(root.absolute()).as_posix()
    except ValueError:
        return str(image)


def _extension(image: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as im:
            return (im.format or "bin").lower().replace("jpeg", "jpg")
    except OSError:
        return "bin"  # the fine-tuning check names it as an image that does not load
