"""The training loop skeleton both runs share (train/loop.py), on a toy model: schedule,
fingerprint, save cadence, resume with running averages, refusal to overwrite."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import pairwise

import pytest
import torch

from paligemma.train import loop


def test_learning_rate_warms_up_then_decays_to_the_floor():
    lr = [loop.learning_rate(s, 1.0, 10, warmup_steps=2, floor=0.1) for s in range(12)]
    assert lr[:2] == [0.5, 1.0]  # linear warmup, the peak at the last warmup step
    assert lr[2] == 1.0 and all(a > b for a, b in pairwise(lr[2:11]))
    assert lr[10] == lr[11] == pytest.approx(0.1)  # the floor at `steps`, and after
    assert loop.learning_rate(5, 1.0, 10, warmup_steps=2, decay="constant") == 1.0
    assert loop.learning_rate(6, 2.0, 10) == pytest.approx(1 + math.cos(math.pi * 0.6))
    # The demo model's schedule (1e-3 peak, 5e-5 floor, 200 warmup, 12,000 steps) is still at
    # 0.78e-3 at step 4,000, as its docstring says.
    assert loop.learning_rate(4000, 1e-3, 12_000, 200, 5e-5) == pytest.approx(0.78e-3, abs=0.005e-3)


@dataclass(frozen=True)
class Settings:
    lr: float = 0.1
    steps: int = 6
    save_every: int = 2


def test_fingerprint_leaves_out_what_may_change_on_resume():
    assert loop.fingerprint(Settings(), ("steps", "save_every")) == {"lr": 0.1}


class ToySteps:
    """A `Stepper`: least squares on fixed random data, a noisy step (the RNG must resume
    too), running averages of the loss."""

    bar_keys = ("loss",)

    def __init__(self, model, optimizer, means: loop.RunningMeans) -> None:
        self.model, self.optimizer, self.means = model, optimizer, means
        self.x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))

    def step(self, step: int) -> dict[str, float]:
        noise = torch.randn(8, 1)  # the global RNG, restored by a resume
        loss = ((self.model(self.x) - noise) ** 2).mean()
        loss.backward()
        loop.apply_gradients(self.optimizer, list(self.model.parameters()), 1.0)
        return {"loss": loss.item()}

    def record(self, step: int, lr: float, seconds: float, metrics: dict) -> dict:
        return {"step": step + 1, "lr": lr} | self.means.update(metrics)

    def evaluate(self, done: int) -> dict:
        return {"eval": done} if done % 3 == 0 else {}

    def checkpoint(self, done: int) -> tuple[int, dict]:
        return 10 * done, {"means": self.means.values}


def toy_run(out, resume: bool, until: int, tensorboard=None) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = lambda s: loop.learning_rate(s, 0.1, 6, warmup_steps=1)  # noqa: E731
    trainable = list(model.named_parameters())
    toy_loop = loop.Loop(
        out, trainable, optimizer, schedule, loop.fingerprint(Settings(), ()), 2, "toy", tensorboard
    )
    loop.refuse_to_overwrite(out, resume)
    start, pos, log_state = toy_loop.restore(resume)
    steps = ToySteps(model, optimizer, loop.RunningMeans(log_state.get("means")))
    toy_loop.run(steps, start, until, total=6, progress=False)
    return model, pos


def test_a_stopped_and_resumed_run_equals_a_straight_one(tmp_path):
    straight, _ = toy_run(tmp_path / "straight", resume=False, until=6)
    toy_run(tmp_path / "stopped", resume=False, until=3)  # a checkpoint at 2 and at the stop
    assert (tmp_path / "stopped/checkpoints/latest").read_text() == "step-0000003"
    with pytest.raises(ValueError, match="--resume"):
        toy_run(tmp_path / "stopped", resume=False, until=6)
    resumed, pos = toy_run(tmp_path / "stopped", resume=True, until=6)
    assert pos == 30  # the data position the stepper saved
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)
    logs = [(tmp_path / d / "metrics.jsonl").read_text() for d in ("straight", "stopped")]
    assert logs[0] == logs[1]  # running averages and evaluations continue across the stop
    rows = [json.loads(x) for x in logs[0].splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r.get("eval") for r in rows] == [None, None, 3, None, None, 6]
    assert rows[0]["lr"] == 0.1 and rows[5]["lr"] < rows[1]["lr"]
    with pytest.raises(ValueError, match="other settings"):
        loop.Loop(tmp_path / "stopped", [], None, None, {"lr": 0.2}, 2, "toy").restore(True)


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG file, after checking that PIL decodes it whole."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_curves_are_redrawn_and_the_log_goes_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from paligemma.train import curves

    out = tmp_path / "run"
    toy_run(out, resume=False, until=3)
    first = (out / "curves.png").read_bytes()
    assert png_size(out / "curves.png") == (800, 800)  # curves.FIGSIZE x curves.DPI
    toy_run(out, resume=True, until=6, tensorboard=tmp_path / "tb")
    assert (out / "curves.png").read_bytes() != first  # redrawn with steps 4-6
    assert png_size(out / "curves.png") == (800, 800)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left
    board = EventAccumulator(str(tmp_path / "tb"))
    board.Reload()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [(e.step, e.value) for e in board.Scalars("loss")]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in rows[3:]]
    assert [e.step for e in board.Scalars("eval")] == [6]
    assert {"loss", "lr", "eval"} <= set(board.Tags()["scalars"])
    assert curves.scalars({"step": 2, "loss": 1, "ok": True, "eval": {"a": 0.5, "s": "x"}}) == {
        "loss": 1.0,
        "eval/a": 0.5,
    }


def test_curves_read_a_log_cut_short_and_draw_nested_scores(tmp_path):
    from paligemma.train import curves

    log = tmp_path / "metrics.jsonl"
    rows = [
        {"step": s, "loss": 2.0 / s, "aux": 1.0, "loss_caption": 1.0 / s, "lr": 1e-3}
        | ({"eval": {"vqa_accuracy": s / 4, "segmentation_miou": 0.5}} if s % 2 == 0 else {})
        for s in range(1, 5)
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    assert curves.read_log(log) == rows  # the line a kill cut short is left out
    assert set(curves._series(rows)) == {
        "loss",
        "aux",
        "loss_caption",
        "lr",
        "eval/vqa_accuracy",
        "eval/segmentation_miou",
    }
    curves.draw_curves(log, tmp_path / "pictures" / "curves.png", title="embedded")
    assert png_size(tmp_path / "pictures" / "curves.png") == (800, 800)


def test_a_resumed_runs_tensorboard_hides_what_a_killed_one_logged_past_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from paligemma.train import curves

    killed = curves.TensorBoard(tmp_path)
    for step in range(1, 6):  # steps 4 and 5 were logged, then the kill; the checkpoint was 3
        killed.add({"step": step, "loss": 1.0})
    killed.close()
    resumed = curves.TensorBoard(tmp_path, first_step=4)
    for step in range(4, 7):
        resumed.add({"step": step, "loss": 2.0})
    resumed.close()
    board = EventAccumulator(str(tmp_path))
    board.Reload()
    assert [(e.step, e.value) for e in board.Scalars("loss")] == [
        (1, 1.0),
        (2, 1.0),
        (3, 1.0),
        (4, 2.0),
        (5, 2.0),
        (6, 2.0),
    ]
