"""What a batch run reads: a directory of images, or a JSONL / Parquet file of records, as a list
of input records {"id", "path", "prompt", "bytes"} in a fixed order (resume relies on it).

A directory: every file with an image extension below it, sorted by path (corrupt ones too: they
become error rows). A JSONL line / Parquet row: {"image": path or bytes, "prompt"?, "id"?};
relative paths are relative to the file. Ids must be unique (a run resumes by id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(directory: Path) -> list[str]:
    """Image files below `directory` (by extension, any case), as absolute paths, sorted."""
    files = (p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(str(p.resolve()) for p in files if p.is_file())


def read_inputs(source: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(kind, records): kind is "dir", "jsonl" or "parquet"."""
    source = Path(source)
    if source.is_dir():
        records = [{"id": p, "path": p, "prompt": None, "bytes": None} for p in list_images(source)]
        return "dir", records
    if not source.is_file():
        raise FileNotFoundError(f"--input {source}: no such file or directory")
    if source.suffix == ".jsonl":
        return "jsonl", _unique(_jsonl(source), source)
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(source).to_pylist()
        return "parquet", _unique([_record(r, n, source) for n, r in enumerate(rows)], source)
    raise ValueError(f"--input {source}: expected a directory, a .jsonl or a .parquet file")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open() as f:
        for n, line in enumerate(f):
            if line.strip():
                try:
                    records.append(_record(json.loads(line), n, path))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {n + 1}: not JSON ({e})") from None
    return records


def _record(rec: Any, n: int, source: Path) -> dict[str, Any]:
    """One input record from a JSONL line / Parquet row."""
    image = rec.get("image") if isinstance(rec, dict) else None
    if not isinstance(image, (str, bytes)):
        raise ValueError(f'{source} record {n + 1}: expected {{"image": path or bytes, ...}}')
    if isinstance(image, bytes) and rec.get("id") is None:
        raise ValueError(f"{source} record {n + 1}: an image given as bytes needs an 'id'")
    path = str((source.parent / image).resolve()) if isinstance(image, str) else str(rec["id"])
    rid = str(rec["id"]) if rec.get("id") is not None else path
    data = image if isinstance(image, bytes) else None
    return {"id": rid, "path": path, "prompt": rec.get("prompt"), "bytes": data}


def _unique(records: list[dict[str, Any]], source: Path) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for rec in records:
        if rec["id"] in seen:
            raise ValueError(
                f"{source}: input id {rec['id']!r} appears twice; give each record its own 'id'"
            )
        seen.add(rec["id"])
    return records
