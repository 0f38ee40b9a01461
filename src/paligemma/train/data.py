"""Fine-tuning data: a JSONL file, one example per line:

    {"image": "img/0001.jpg" (or a list of paths; relative to the file), "prefix": "...",
     "suffix": "..."}

Every record is checked before a run starts: fields present (`prefix` and a non-empty
`suffix`), length, and every image decoded in full (in a thread pool, with a progress bar on
large sets), so that a truncated or corrupt file is found before the run, not at its batch.
Every problem is reported with its line number; a long list goes to a file as well.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from ..pipeline import Pipeline
from ..processor import ImageError, load_image


class DataError(ValueError):
    """Training data with bad records."""


@dataclass(frozen=True)
class Example:
    line: int
    images: tuple[Path, ...]
    prefix: str
    suffix: str


SHOWN = 10  # problems written into the error itself; a longer list also goes to a file
BAR_FROM = 256  # images: a progress bar for the check from this many


def say(message: str) -> None:
    """A note to the user on stderr, as the command line writes its own."""
    print(f"paligemma: {message}", file=sys.stderr)


def training_file(
    data: str | os.PathLike,
    fmt: str,
    out: Path,
    images: str | None = None,
    annotations: str | None = None,
    task: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """The JSONL a run trains on: `data` itself for the jsonl format; otherwise `data` read as
    `fmt` (paligemma.data), turned into `task`'s examples and written to out/data/train.jsonl
    (deterministic: a resumed run writes the same file)."""
    if fmt == "jsonl":
        return Path(data)
    from ..data import read_dataset, to_examples
    from ..data.convert import default_task, write_examples

    dataset = read_dataset(fmt, data, images=images, annotations=annotations)
    task = task or default_task(dataset)
    examples = to_examples(dataset, task, seed=seed, progress=progress)
    return write_examples(examples, out / "data" / "train.jsonl")


def read_examples(
    path: str | os.PathLike,
    pipe: Pipeline,
    max_len: int | None,
    skip_bad: bool,
    problems_file: str | os.PathLike | None = None,
    progress: bool = False,
    log: Callable[[str], None] = say,
) -> list[Example]:
    """All examples of a JSONL file, validated. Bad records raise one DataError listing every
    problem with its line number, unless `skip_bad`, when they are left out and `log` says how
    many and why. Over SHOWN problems, the full list is written to `problems_file` (when
    given) and the message names it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such data file: {path}")
    candidates, bad = [], {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            example, problems = _parse(n, line, path.parent, pipe, max_len)
            candidates += [example] if example else []
            bad |= {n: problems} if problems else {}
    images = sorted({p for e in candidates for p in e.images})
    failed = check_images(images, progress)
    for e in candidates:
        problems = [failed[p] for p in e.images if p in failed]
        if problems:
            bad[e.line] = bad.get(e.line, []) + problems
    good = [e for e in candidates if e.line not in bad]
    if bad:
        shown = _shown([f"line {n}: {'; '.join(p)}" for n, p in sorted(bad.items())], problems_file)
        if not skip_bad:
            raise DataError(
                f"{path}: {len(bad)} bad record(s): {shown} (fix them or skip them with --skip-bad)"
            )
        log(f"{path}: {len(bad)} record{'s' * (len(bad) > 1)} skipped: {shown}")
    if not good:
        raise DataError(f"{path}: no usable examples")
    return good


def _parse(
    n: int, line: str, root: Path, pipe: Pipeline, max_len: int | None
) -> tuple[Example | None, list[str]]:
    """Line `n` as an example whose images are still to be checked (None when it names no
    usable paths), and the problems of its fields."""
    try:
        rec = json.loads(line)
    except ValueError as e:
        return None, [f"not JSON ({e})"]
    if not isinstance(rec, dict):
        return None, ["not a JSON object"]
    problems = []
    images = rec.get("image")
    images = [images] if isinstance(images, str) else images
    if not images or not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        problems.append('"image" must be a path or a list of paths')
        images = []
    prefix, suffix = rec.get("prefix"), rec.get("suffix")
    if not isinstance(prefix, str):
        problems.append(
            'missing "prefix" (write "prefix": "" for none)'
            if prefix is None
            else '"prefix" must be a string'
        )
    if not isinstance(suffix, str) or not suffix.strip():
        problems.append('empty or missing "suffix"')
    elif isinstance(prefix, str):
        # <bos> prefix "\n" suffix <eos>: the text part of the sequence
        length = len(pipe.processor.prompt_ids(prefix, 0)) + len(pipe.processor.suffix_ids(suffix))
        if max_len is not None and length > max_len:
            problems.append(f"{length} text tokens, more than max_len={max_len}")
    if not images:
        return None, problems
    texts = (x if isinstance(x, str) else "" for x in (prefix, suffix))
    return Example(n, tuple(root / i for i in images), *texts), problems


def check_images(paths: list[Path], progress: bool = False) -> dict[Path, str]:
    """The problem of each image in `paths` that cannot be used, found by decoding every one in
    full, as the run will (in threads: PIL decodes without holding the GIL)."""
    from PIL import Image
    from tqdm import tqdm

    if not paths:
        return {}
    workers = max(1, min(8, torch.get_num_threads(), len(paths)))
    # The threads' own catch_warnings (in load_image) race on the global filters; this one
    # restores them once all are done.
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        problems = tqdm(
            pool.map(_image_problem, paths),
            total=len(paths),
            desc="checking images",
            unit="image",
            file=sys.stderr,
            disable=not progress or len(paths) < BAR_FROM,
        )
        return {p: problem for p, problem in zip(paths, problems, strict=True) if problem}


def _image_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"no such image {path}"
    try:
        load_image(path)
    except ImageError as e:
        return str(e)
    except Exception as e:  # anything else a broken file makes PIL raise is a problem too
        return f"cannot read image {path}: {type(e).__name__}: {e}"
    return None


def _shown(problems: list[str], problems_file: str | os.PathLike | None) -> str:
    """`problems` for a message: all of them, or over SHOWN the first SHOWN and the file that
    holds them all (one a line)."""
    if len(problems) <= SHOWN or problems_file is None:
        return "; ".join(problems)
    file = Path(problems_file)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(p + "\n" for p in problems))
    return "; ".join(problems[:SHOWN]) + f"; ... all {len(problems)} listed in {file}"


class RecordFailed(DataError):
    """A record whose image no longer loads during the run (changed on disk after the check)."""

    step = 0  # the step (from 0) that drew it


def draw(
    order: ExampleOrder,
    n: int,
    dropped: dict[int, str],
    skip_bad: bool,
    log: Callable[[str], None] = say,
) -> tuple[list[Example], list[list]]:
    """The next `n` examples of `order` and their images, loaded. One whose image fails raises
    RecordFailed, or with `skip_bad` is logged, added to `dropped` (line -> why) and passed
    over from then on."""
    examples, images = [], []
    while len(examples) < n:
        [e] = order.take(1)
        if e.line in dropped:
            continue
        try:
            images.append([load_image(p) for p in e.images])
        except (ImageError, OSError) as err:
            if not skip_bad:
                raise RecordFailed(f"line {e.line}: {err}") from None
            dropped[e.line] = str(err)
            log(f"record skipped during the run: line {e.line}: {err}")
            if len(dropped) == len(order.examples):
                raise DataError("no record left that loads") from None
            continue
        examples.append(e)
    return examples, images


class ExampleOrder:
    """The order examples are drawn in: each epoch a permutation seeded by (seed, epoch).
    `pos` counts the examples drawn so far; a checkpoint keeps it, so a resumed run draws
    what the uninterrupted run would have."""

    def __init__(self, examples: list[Example], seed: int, pos: int = 0) -> None:
        self.examples, self.seed, self.pos = examples, seed, pos
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation)

    def take(self, n: int) -> list[Example]:
        picked = []
        for _ in range(n):
            epoch, index = divmod(self.pos, len(self.examples))
            if self._order is None or self._order[0] != epoch:
                g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                self._order = epoch, torch.randperm(len(self.examples), generator=g)
            picked.append(self.examples[int(self._order[1][index])])
            self.pos += 1
        return picked


def batch_of(
    pipe: Pipeline, examples: list[Example], images: list[list] | None = None
) -> dict[str, torch.Tensor]:
    """The processor's batch of `examples`, from their image files or from `images` (one list
    of loaded images per example)."""
    return pipe.processor(
        images=images or [list(e.images) for e in examples],
        text=[e.prefix for e in examples],
        suffix=[e.suffix for e in examples],
    )
