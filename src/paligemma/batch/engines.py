"""run_batch: read the inputs, skip those a partly written output already holds, answer the rest
with the Predictor (in this process, or as Ray Data actors), write crash-safe Parquet parts.

Both engines run the same Predictor code and write the same schema; greedy answers are the same
whichever engine (a row's answer does not depend on its batch), so their outputs are equal.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from .inputs import read_inputs
from .output import PartWriter, done_ids
from .predictor import TASKS, Predictor, build_prompt

ENGINES = ("local", "ray")
BATCHES_PER_BLOCK = 16  # batches per Ray Data block (see _ray)
MAX_BLOCKS = 10_000
RAY_MISSING = (
    "--engine ray needs Ray Data: pip install 'paligemma[ray]' (or: pip install 'ray[data]')"
)


def import_ray():
    """The ray module, or a clear error naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    return ray


def run_batch(
    input: str | Path,
    task: str,
    output: str | Path,
    *,
    prompt: str | None = None,
    engine: str = "local",
    workers: int = 1,
    batch_size: int = 8,
    threads: int | None = None,
    num_gpus_per_worker: float = 0,
    address: str | None = None,
    load: dict[str, Any] | None = None,
    max_new_tokens: int | None = None,
    rows_per_part: int = 256,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    predictor: type = Predictor,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Answer every input not yet in `output`; returns counts and seconds. threads: torch CPU
    threads per worker. load: `paligemma.load` keyword arguments (dtype as a name). The Ray
    engine joins the running Ray instance, else `ray.init(address=address)` (None: a local
    one), with `workers` actors, each restarted up to `max_restarts` times on a crash.
    progress: called with the number of new rows each time results arrive."""
    if engine not in ENGINES or task not in TASKS:
        raise ValueError(f"unknown engine {engine!r} or task {task!r}; see paligemma batch -h")
    if engine == "ray":
        import_ray()  # a clear message before anything is read or written
    start = time.perf_counter()
    out_dir = Path(output)
    kind, records = read_inputs(input)
    if kind == "dir" or prompt is not None:  # a bad --prompt fails now, not once per row
        build_prompt(task, prompt)
    done = done_ids(out_dir)
    todo = [r for r in records if r["id"] not in done]
    args = {"task": task, "prompt": prompt, "load": dict(load or {}), "threads": threads}
    args |= {"batch_size": batch_size, "max_new_tokens": max_new_tokens}
    if kind != "dir":
        args["base_dir"] = str(Path(input).parent.resolve())
    if todo and engine == "local":
        tables = _local(predictor(**args), todo, batch_size)
    elif todo:
        ray_options = {"workers": workers, "threads": threads, "gpus": num_gpus_per_worker}
        ray_options |= {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
        tables = _ray(predictor, args, todo, batch_size, address, ray_options)
    else:
        tables = iter(())
    written, errors = _write(tables, PartWriter(out_dir, rows_per_part, done), progress)
    return {
        "inputs": len(records),
        "skipped": len(records) - len(todo),
        "written": written,
        "errors": errors,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _write(tables: Iterator[pa.Table], writer: PartWriter, progress) -> tuple[int, int]:
    """Hand every result table to the writer; (rows written, of which errors)."""
    errors = 0
    try:
        for table in tables:
            kept = writer.add(table)
            errors += kept.num_rows - kept["error"].null_count
            if progress is not None:
                progress(kept.num_rows)
    finally:  # rows already answered are kept, even when the run stops here
        writer.close()
    return writer.written, errors


def _columns(records: list[dict[str, Any]]) -> dict[str, list]:
    return {k: [r[k] for r in records] for k in ("id", "path", "prompt", "bytes")}


def _local(pred: Predictor, todo: list[dict[str, Any]], batch_size: int) -> Iterator[pa.Table]:
    for i in range(0, len(todo), batch_size):
        yield pred(_columns(todo[i : i + batch_size]))


def _ray(predictor, args, todo, batch_size, address, opts) -> Iterator[pa.Table]:
    """The Ray Data pipeline: the inputs handed over as records (`ray.data.from_items`), the
    predictor as an actor pool reading and decoding them, results streamed back here."""
    ray = import_ray()
    if not ray.is_initialized():
        local = not address and not os.environ.get("RAY_ADDRESS")  # else: join a cluster
        ray.init(address=address, **({"include_dashboard": False} if local else {}))
        cpus = ray.cluster_resources().get("CPU", 0)
        if local and opts["workers"] * (opts["threads"] or 1) > cpus:
            raise ValueError(
                f"{opts['workers']} workers x {opts['threads'] or 1} threads need more CPUs than "
                f"this machine's Ray cluster has ({cpus:g}); use fewer --workers"
            )
    # Blocks of BATCHES_PER_BLOCK batches (at least two per worker, so every actor gets work):
    # a block costs Ray a task and a hand-over whatever its size (a block per batch spent
    # most of the time there), and a crash redoes at most one block per actor.
    per_block = batch_size * BATCHES_PER_BLOCK
    blocks = min(max(-(-len(todo) // per_block), 2 * opts["workers"]), MAX_BLOCKS)
    # Every input goes in as a record (id, path or bytes, prompt) and the actors read the files
    # themselves. For a directory this replaces ray.data.read_binary_files, whose per-file
    # metadata pass and read tasks cost about 15 s of every 3,000 files here before the first
    # result (benchmarks/bench_batch.py: Ray 2.7% behind the local engine with records, 32%
    # with the reader); the file list is ours anyway, since a resumed run skips what is done.
    ds = ray.data.from_items(todo, override_num_blocks=blocks)
    with warnings.catch_warnings():  # Ray 2.60 has no named max_restarts / max_task_retries
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        ds = ds.map_batches(
            predictor,
            fn_constructor_kwargs=args,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=opts["workers"]),
            num_cpus=opts["threads"] or 1,
            num_gpus=opts["gpus"] or None,
            max_restarts=opts["max_restarts"],
            max_task_retries=opts["max_task_retries"],
        )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
