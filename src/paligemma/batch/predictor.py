"""The batch predictor: a batch of inputs (image bytes or paths, prompts, ids) -> one output row
each, for every task; a bad image or a failed row is an `error`, never an exception.

Used as is by the local engine and as a Ray Data actor class:

    ds.map_batches(Predictor, fn_constructor_kwargs={"task": "caption"}, concurrency=2)

Input columns (lists or numpy arrays of length N): `path` (str; read when there are no bytes),
optional `bytes` (encoded image), `prompt` (the task's argument, see `build_prompt`) and `id`.
Output: a pyarrow Table of N rows in OUTPUT_SCHEMA.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from ..processor import ImageError, load_image
from ..tasks.objects import task_prompt

_BYTES_REPR = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")
TASKS = ("caption", "detect", "segment", "answer", "prompt")
MAX_NEW_TOKENS = {"caption": 32, "answer": 32, "prompt": 32, "detect": 128, "segment": 128}
OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # the input's id (its path unless the input names one)
        ("path", pa.string()),  # the input file (or the id, for an image given as bytes)
        ("prompt", pa.string()),  # the prompt the model was given
        ("text", pa.string()),  # the answer; null on error
        ("objects", pa.string()),  # detect / segment: JSON list (boxes; masks as COCO RLE)
        ("error", pa.string()),  # null on success
    ]
)


def build_prompt(task: str, prompt: str | None) -> str:
    """The model's prompt for a task: caption -> "caption LANG" (`prompt` is the language,
    default en); answer -> "answer en QUESTION"; detect / segment -> "detect a ; b" (`prompt`
    holds the labels, ';'-separated); prompt -> `prompt` as written."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "caption":
        return f"caption {(prompt or 'en').strip()}"
    if not prompt or not prompt.strip():
        raise ValueError(f"task {task} needs a prompt (--prompt or a 'prompt' per input)")
    if task == "answer":
        return f"answer en {prompt.strip()}"
    if task in ("detect", "segment"):
        return task_prompt(task, [p for p in prompt.split(";") if p.strip()])
    return prompt


def _column(batch: Mapping[str, Any], name: str, n: int) -> list:
    """A column as a list; missing values are None (Ray hands an all-null column over as NaN)."""
    values = batch.get(name)
    if values is None:
        return [None] * n
    return [None if isinstance(v, (float, np.floating)) and v != v else v for v in values]


class Predictor:
    """Loads the model once (per process / Ray actor); each call answers one batch.

    task, prompt: see `build_prompt` (a row's own `prompt` wins). load: keyword arguments of
    `paligemma.load` (model, dtype as a name like "float32", device, ...). threads: torch's CPU
    threads in this process. batch_size: rows per forward pass."""

    def __init__(
        self,
        task: str = "caption",
        prompt: str | None = None,
        *,
        load: Mapping[str, Any] | None = None,
        threads: int | None = None,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        base_dir: str | None = None,
    ):
        from ..pipeline import load as load_pipeline

        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        if threads:
            torch.set_num_threads(threads)
        options = dict(load or {})
        if isinstance(options.get("dtype"), str):
            options["dtype"] = getattr(torch, options["dtype"])
        self.task, self.prompt, self.batch_size = task, prompt, batch_size
        self.max_new_tokens = max_new_tokens or MAX_NEW_TOKENS[task]
        self.base_dir = base_dir
        self.pipe = load_pipeline(**options)
        if task == "segment" and self.pipe.mask_vae is None:
            raise ValueError("segment needs the mask VQ-VAE (vae-oid.npz) beside the weights")

    def __call__(self, batch: Mapping[str, Any]) -> pa.Table:
        n = len(batch["path"])
        paths = [str(p) for p in batch["path"]]
        given = _column(batch, "id", n)
        ids = [str(i) if i is not None else p for i, p in zip(given, paths, strict=True)]
        rows = {"id": ids, "path": paths, "prompt": [None] * n, "text": [None] * n}
        rows |= {"objects": [None] * n, "error": [None] * n}
        todo = []  # (row, image, prompt)
        for i, (data, own) in enumerate(
            zip(_column(batch, "bytes", n), _column(batch, "prompt", n), strict=True)
        ):
            try:
                rows["prompt"][i] = build_prompt(self.task, own or self.prompt)
                todo.append((i, self._image(data, paths[i]), rows["prompt"][i]))
            except Exception as e:  # a bad input is that row's error, never the batch's
                rows["error"][i] = _message(e)
        for start in range(0, len(todo), self.batch_size):
            self._answer(todo[start : start + self.batch_size], rows)
        return pa.Table.from_pydict(rows, schema=OUTPUT_SCHEMA)

    def _image(self, data: Any, path: str) -> Image.Image:
        """The decoded image of a row: its bytes, else its file read here (so both engines
        decode the same bytes and word a failure the same way, naming the path)."""
        if data is None:
            full = os.path.join(self.base_dir or "", path)
            with open(full, "rb") as f:
                data = f.read()
        try:
            return load_image(bytes(data))
        except ImageError as e:
            text = _BYTES_REPR.sub("", str(e).replace("image bytes", path, 1))
            raise ImageError(text) from None

    def _answer(self, chunk: Sequence[tuple[int, Any, str]], rows: dict[str, list]) -> None:
        """Generate for a chunk at once; when that fails, row by row (each its own error)."""
        images, prompts = [[c[1]] for c in chunk], [c[2] for c in chunk]
        try:
            results = self.pipe.generate(
                images, prompts, max_new_tokens=self.max_new_tokens, batch_size=len(chunk)
            )
        except Exception as e:
            if len(chunk) == 1:
                rows["error"][chunk[0][0]] = _message(e)
            else:
                for one in chunk:
                    self._answer([one], rows)
            return
        for (i, image, _), result in zip(chunk, results, strict=True):
            try:
                rows["objects"][i] = self._objects(result.text, image)
                rows["text"][i] = result.text
            except Exception as e:
                rows["error"][i] = _message(e)

    def _objects(self, text: str, image) -> str | None:
        if self.task not in ("detect", "segment"):
            return None
        objects = self.pipe.read_objects(self.task, text, image.width, image.height)
        return json.dumps([o.to_dict() for o in objects])


def _message(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
