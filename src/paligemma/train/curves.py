"""Training curves from a run's log: a picture (curves.png: loss, learning rate and held-out
scores over steps, drawn with matplotlib's Agg renderer, no display needed) and optional
TensorBoard logging through torch's SummaryWriter.

Both read the log lines the loop writes to metrics.jsonl (dicts with a 1-based "step"): losses
are "loss", "loss_<kind>" and "aux"; held-out scores are "eval_<metric>" numbers or an "eval"
dict of numbers. The picture is redrawn from the whole log at each checkpoint (so a resumed
run draws its earlier steps too) and written atomically; nothing here touches a random number
generator, so a run's numbers are the same with or without it.

    draw_curves(out / "metrics.jsonl", out / "curves.png", title="finetune")
    board = TensorBoard("runs/tb", first_step=start + 1)   # hides steps >= first_step left
    board.add(record); board.flush(); board.close()         # by a killed run
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FIGSIZE = (8.0, 8.0)  # inches; with DPI, the picture is 800 x 800 pixels
DPI = 100
EXTRA = "pip install 'paligemma[tensorboard]'"


class MissingExtra(ImportError, RuntimeError):
    """An optional dependency is not installed; the message names the extra that brings it
    (a RuntimeError too, so the CLI prints it as one `paligemma: error:` line)."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers by name, nested dicts flattened ("eval/vqa_accuracy"); "step" and
    non-numbers left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out |= {f"{key}/{k}": v for k, v in scalars(value).items()}
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
            out[key] = float(value)
    return out


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a metrics.jsonl (a line cut short by a kill is left out)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in rows if isinstance(r, dict) and "step" in r]


def _series(rows: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """name -> (steps, values) over the rows that have it."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for row in rows:
        for name, value in scalars(row).items():
            steps, values = series.setdefault(name, ([], []))
            steps.append(row["step"])
            values.append(value)
    return series


def _is_loss(name: str) -> bool:
    return name in ("loss", "aux") or name.startswith("loss_")


def _is_eval(name: str) -> bool:
    return name.startswith(("eval_", "eval/"))


def draw_curves(log: Path, png: Path, title: str = "") -> None:
    """Draw the log at `log` into the PNG `png` (written to a temporary file, then renamed):
    loss (log scale when it spans a decade), learning rate, held-out scores, over steps."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display
    from matplotlib.ticker import MaxNLocator

    series = _series(read_log(log))
    fig = Figure(figsize=FIGSIZE, dpi=DPI)  # fixed margins: a computed layout doubles the time
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.07, top=0.94, hspace=0.08)
    loss_ax, lr_ax, eval_ax = fig.subplots(3, 1, sharex=True, height_ratios=(2, 1, 1.5))
    for name, (steps, values) in sorted(series.items(), key=lambda kv: kv[0] != "loss"):
        if _is_loss(name):
            main = name == "loss"
            loss_ax.plot(
                steps, values, label=name, lw=1.6 if main else 0.9, alpha=1 if main else 0.8
            )
        elif _is_eval(name):
            eval_ax.plot(steps, values, "o-", ms=3, label=name.removeprefix("eval/"))
    losses = [x for n, (_, v) in series.items() if _is_loss(n) for x in v]
    if losses and min(losses) > 0 and max(losses) >= 10 * min(losses):  # spans a decade
        loss_ax.set_yscale("log")
        loss_ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")  # 0.1, not 10^-1
    if "lr" in series:
        lr_ax.plot(*series["lr"], color="tab:green")
        lr_ax.yaxis.set_major_formatter(lambda v, _: f"{v:.3g}")  # 0.0003, not an offset
    if not any(_is_eval(n) for n in series):
        note = "no held-out evaluations logged"
        eval_ax.text(0.5, 0.5, note, ha="center", va="center", transform=eval_ax.transAxes)
    for ax, label in ((loss_ax, "loss"), (lr_ax, "learning rate"), (eval_ax, "held-out")):
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    eval_ax.set_xlabel("step")
    eval_ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    last = max((s[-1] for s, _ in series.values()), default=0)
    fig.suptitle(f"{title} — step {last:,}" if title else f"step {last:,}")
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, png)


class TensorBoard:
    """Every number of each log line as a TensorBoard scalar at the line's step, in `logdir`.
    `first_step`: the first step this run logs; events a killed run left at or after it are
    hidden (SummaryWriter's purge_step), so a resumed run's curves do not overlap."""

    def __init__(self, logdir: str | os.PathLike, first_step: int = 1) -> None:
        summary_writer = require_tensorboard()
        purge = first_step if first_step > 1 else None
        self.writer = summary_writer(log_dir=str(logdir), purge_step=purge)

    def add(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def require_tensorboard():
    """torch's SummaryWriter class, or MissingExtra naming the extra that installs it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch raises this when the tensorboard package is absent
        raise MissingExtra(f"--tensorboard needs the tensorboard package: {EXTRA}") from e
    return SummaryWriter
