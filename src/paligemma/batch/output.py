"""A run's output directory: Parquet parts written whole or not at all, and what they hold.

Each part is written to a hidden temporary file and renamed into place (`part-NNNNN-<tag>.parquet`),
so a run killed at any moment leaves only complete parts; a resumed run reads their `id` column
and skips those inputs. Rows whose id is already written are dropped (every input exactly once,
even if an engine hands a row over twice). `pyarrow.dataset` reads the directory as it is (it
ignores the hidden temporaries).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .predictor import OUTPUT_SCHEMA

PART = re.compile(r"part-(\d+)-[0-9a-f]+\.parquet$")


def parts(out_dir: Path) -> list[Path]:
    """The complete parts in `out_dir`, in the order they were written."""
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.iterdir() if PART.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(PART.fullmatch(p.name).group(1)))


def done_ids(out_dir: Path) -> set[str]:
    """Ids of the inputs the parts already hold."""
    return {i for p in parts(out_dir) for i in pq.read_table(p, columns=["id"])["id"].to_pylist()}


def read_output(out_dir: str | os.PathLike) -> pa.Table:
    """Every row of a run's output (all parts), in OUTPUT_SCHEMA."""
    tables = [pq.read_table(p, schema=OUTPUT_SCHEMA) for p in parts(Path(out_dir))]
    return pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()


class PartWriter:
    """Collects output rows and writes a part every `rows_per_part` rows (and at `close`)."""

    def __init__(self, out_dir: Path, rows_per_part: int = 256, done: set[str] | None = None):
        self.out_dir, self.rows_per_part = out_dir, max(1, rows_per_part)
        out_dir.mkdir(parents=True, exist_ok=True)
        existing = parts(out_dir)
        self.next_part = int(PART.fullmatch(existing[-1].name).group(1)) + 1 if existing else 0
        self.seen = set(done) if done is not None else done_ids(out_dir)
        self.pending: list[pa.Table] = []
        self.pending_rows = self.written = 0

    def add(self, table: pa.Table) -> pa.Table:
        """Queue the rows of `table` not written before (returned); write a part when enough
        are queued."""
        ids = table["id"].to_pylist()
        keep = [n for n, i in enumerate(ids) if i not in self.seen]
        self.seen.update(ids[n] for n in keep)
        if len(keep) < len(ids):
            table = table.take(keep)
        if table.num_rows:
            self.pending.append(table.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA))
            self.pending_rows += table.num_rows
        if self.pending_rows >= self.rows_per_part:
            self.flush()
        return table

    def flush(self) -> None:
        if not self.pending_rows:
            return
        name = f"part-{self.next_part:05d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.out_dir / f".tmp-{name}"
        pq.write_table(pa.concat_tables(self.pending), tmp)
        with open(tmp, "rb") as f:  # on disk before it is named a part
            os.fsync(f.fileno())
        os.replace(tmp, self.out_dir / name)
        self.next_part += 1
        self.written += self.pending_rows
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self.flush()
