"""The demo model's training recipe: every setting of a run, and the schedules derived from
them (learning rate, auxiliary-loss weight). A run's fingerprint is taken from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..train.loop import fingerprint, learning_rate


@dataclass(frozen=True)
class RunConfig:
    steps: int = 12_000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 200
    weight_decay: float = 0.01
    mix: tuple[tuple[str, float], ...] = (
        ("caption", 0.2),
        ("answer", 0.2),
        ("detect", 0.35),
        ("segment", 0.25),
    )
    single_object_steps: int = 700  # curriculum: one object per scene at first
    aux_weight: tuple[float, float] = (1.0, 0.2)  # dense image-encoder loss, start -> end
    seed: int = 0
    autocast: bool = True  # forward passes in bfloat16 (weights, optimiser, loss in float32)
    save_every: int = 200
    eval_every: int = 1000
    eval_scenes: int = 40  # per task, for the learning curve (the final score uses 200)

    def fingerprint(self) -> dict[str, Any]:
        # --steps may grow on resume
        return fingerprint(self, ("steps", "save_every", "eval_every", "eval_scenes"))

    def lr_at(self, step: int) -> float:
        return learning_rate(step, self.lr, self.steps, self.warmup_steps, floor=self.min_lr)

    def aux_at(self, step: int) -> float:
        a, b = self.aux_weight
        return a + (b - a) * min(step / self.steps, 1.0)
