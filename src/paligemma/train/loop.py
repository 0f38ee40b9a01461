"""The training loop every run shares (fine-tuning and the demo model's training): the learning
rate schedule, the settings fingerprint a resumed run must match, running averages, the
metrics.jsonl log and the progress bar, the save cadence, and resuming through `state`.

What differs between runs is passed in as a `Stepper`: the optimiser step itself, the log line,
the evaluations and the state that goes into a checkpoint beside the weights.

    loop = Loop(out, trainable, optimizer, schedule, fingerprint, save_every, desc="finetune")
    start, pos, log_state = loop.restore(resume)       # (0, 0, {}) for a new run
    last_record = loop.run(stepper, start, end, total=steps, progress=True)

Each step: set the learning rate, `stepper.step`, time it, `stepper.record` the log line (plus
`stepper.evaluate`), append it to metrics.jsonl (and to TensorBoard when `tensorboard` names a
directory), advance the bar, and every `save_every` steps (and after the last one) write a
checkpoint, so a kill loses at most `save_every` steps. curves.png (curves.py) is redrawn at a
checkpoint when `REDRAW_S` seconds have passed since the run started or last drew it, and at the
end of `run` (so at every checkpoint of a run whose checkpoints are 10 s or more apart, but only
at the end of a test's run of tiny steps; a drawing takes about 0.2 s of CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .curves import TensorBoard, draw_curves
from .state import latest_checkpoint, load_state, save_state, saved_log_state, trim_log

REDRAW_S = 10.0  # the least time between two drawings of curves.png within a run


def learning_rate(
    step: int,
    peak: float,
    steps: int,
    warmup_steps: int = 0,
    floor: float = 0.0,
    decay: str = "cosine",
) -> float:
    """The learning rate of step `step` (from 0): linear warmup to `peak` over `warmup_steps`,
    then "cosine" decay from `peak` to `floor` at step `steps` (and `floor` after it), or
    "constant" at `peak`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if decay == "constant":
        return peak
    t = min((step - warmup_steps) / max(1, steps - warmup_steps), 1.0)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def fingerprint(settings: Any, ignore: Iterable[str], later: Iterable[str] = ()) -> dict[str, Any]:
    """The fields of a settings dataclass that a resumed run must share with the run it
    continues: all but `ignore` (run length, cadences, output places). A field in `later`
    (added after checkpoints were written without it) is left out while it holds its default,
    so such a checkpoint still resumes, and one that sets it is still told apart."""
    skip, later = set(ignore), set(later)
    defaults = {f.name: f.default for f in dataclasses.fields(settings)}
    return {
        k: v
        for k, v in dataclasses.asdict(settings).items()
        if k not in skip and not (k in later and v == defaults[k])
    }


def refuse_to_overwrite(out: Path, resume: bool) -> None:
    """A new run (not `resume`) must not start over a run directory that holds a checkpoint."""
    if not resume and latest_checkpoint(out):
        raise ValueError(
            f"{out} holds a run already: pass --resume to continue it, or another --out"
        )


def apply_gradients(
    optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], clip: float | None
) -> None:
    """The update after the backward passes: clip the gradients' global norm to `clip` (None:
    no clipping; over `params`, in their order), step, and drop the gradients."""
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class RunningMeans:
    """Running averages of logged values, 0.95 x the average + 0.05 x the new value (a value's
    first sighting starts its average). `values` is JSON-able, so that a checkpoint carries it
    and a resumed run logs exactly what an uninterrupted one does."""

    def __init__(self, values: dict[str, float] | None = None) -> None:
        self.values = dict(values or {})

    def update(self, new: dict[str, float]) -> dict[str, float]:
        for k, v in new.items():
            self.values[k] = v if k not in self.values else 0.95 * self.values[k] + 0.05 * v
        return self.values


class Stepper(Protocol):
    """What a run does that the loop does not: its step, its log line, its evaluations and
    what a checkpoint keeps besides the trainable tensors, optimiser state and RNG."""

    bar_keys: tuple[str, ...]  # record fields shown on the progress bar

    def step(self, step: int) -> dict[str, float]:
        """One optimiser step (forward, backward, update, zero_grad); its raw metrics."""
        ...

    def record(self, step: int, lr: float, seconds: float, metrics: dict) -> dict[str, Any]:
        """The metrics.jsonl line of step `step` (from 0)."""
        ...

    def evaluate(self, done: int) -> dict[str, Any]:
        """Fields added to the line after `done` steps ({} when no evaluation is due)."""
        ...

    def checkpoint(self, done: int) -> tuple[int, dict[str, Any]]:
        """(data position, JSON-able log state) to save after `done` steps."""
        ...


@dataclass
class Loop:
    out: Path
    trainable: list[tuple[str, torch.nn.Parameter]]
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], float]  # step (from 0) -> learning rate
    fingerprint: dict[str, Any]
    save_every: int
    desc: str
    tensorboard: str | Path | None = None  # a directory for TensorBoard event files
    settings: dict[str, Any] | None = None  # all of the run's settings, kept in checkpoints
    main: bool = True  # False in a process other than rank 0: no log, bar, curves or events
    # time.perf_counter() when curves.png was last drawn (or the current run() began)
    drawn_at: float = field(default=0.0, init=False, repr=False)

    @property
    def log_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def curves_path(self) -> Path:
        return self.out / "curves.png"

    def restore(self, resume: bool) -> tuple[int, int, dict[str, Any]]:
        """(first step, data position, log state): the latest checkpoint's when `resume`
        (loaded into the parameters, optimiser and RNG), else (0, 0, {}). The log keeps the
        rows of the steps before the first step."""
        start, pos, log_state = self.load() if resume else (0, 0, {})
        self.out.mkdir(parents=True, exist_ok=True)
        if self.main:
            trim_log(self.log_path, start)
        return start, pos, log_state

    def load(self) -> tuple[int, int, dict[str, Any]]:
        """(step, data position, log state) of the latest checkpoint, loaded."""
        start, pos = load_state(self.out, self.trainable, self.optimizer, self.fingerprint)
        return start, pos, saved_log_state(self.out)

    def run(
        self, stepper: Stepper, start: int, end: int, total: int, progress: bool = True
    ) -> dict[str, Any]:
        """Steps `start`..`end` - 1 of a `total`-step run; returns the last log line."""
        from tqdm import tqdm

        record: dict[str, Any] = {}
        shown = progress and self.main
        bar = tqdm(total=total, initial=start, desc=self.desc, unit="step", disable=not shown)
        board = None
        if self.tensorboard and self.main:
            board = TensorBoard(self.tensorboard, first_step=start + 1)
        self.drawn_at = time.perf_counter()
        with open(self.log_path if self.main else os.devnull, "a") as log:
            for step in range(start, end):
                began = time.perf_counter()
                lr = self.schedule(step)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                metrics = stepper.step(step)
                record = stepper.record(step, lr, time.perf_counter() - began, metrics)
                record |= stepper.evaluate(step + 1)
                log.write(json.dumps(record) + "\n")
                log.flush()
                if board:
                    board.add(record)
                bar.set_postfix({k: f"{record[k]:.4g}" for k in stepper.bar_keys})
                bar.update(1)
                if (step + 1) % self.save_every == 0 or step + 1 == end:
                    self.save(stepper, step + 1)
                    if self.main and (
                        end == step + 1 or time.perf_counter() - self.drawn_at >= REDRAW_S
                    ):
                        self.draw()
                    if board:
                        board.flush()
        if board:
            board.close()
        bar.close()
        return record

    def save(self, stepper: Stepper, done: int) -> None:
        pos, log_state = stepper.checkpoint(done)
        save_state(
            self.out,
            done,
            pos,
            self.trainable,
            self.optimizer,
            self.fingerprint,
            log_state,
            settings=self.settings,
        )

    def draw(self) -> None:
        """Redraw curves.png from the whole log (earlier sittings included)."""
        draw_curves(self.log_path, self.curves_path, title=f"{self.desc}: {self.out.name}")
        self.drawn_at = time.perf_counter()
