"""The demo model's training data: a batch of synthetic scenes per step, each step's examples
seeded by (seed, step) alone, so that batches can be made in any order, in worker processes,
and a resumed run gets the same data.

Shapes: B examples (batch_size), P image patches (grid x grid).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from ..processor import Processor
from ..tasks.vqvae import MaskVAE, mask_to_codes
from . import synthetic
from .recipe import RunConfig


class SceneBatches(torch.utils.data.Dataset):
    """The training data: step s always gets the same examples (seeded by (seed, s)). As a
    dataset, item i is the batch of step `first` + i, so that worker processes can make the
    batches of steps `first`..`end` - 1 ahead."""

    def __init__(
        self,
        run: RunConfig,
        processor: Processor,
        vae: MaskVAE,
        grid: int,
        first: int = 0,
        end: int = 0,
    ) -> None:
        self.run, self.processor, self.vae, self.grid = run, processor, vae, grid
        self.first, self.end = first, end
        self.kinds = [k for k, _ in run.mix]
        weights = np.array([w for _, w in run.mix])
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return max(0, self.end - self.first)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        return self.batch(self.first + i)

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The processor's batch of step `step` plus the aux head's per-patch targets
        (patch_classes int[B, P], patch_boxes float[B, P, 4]), and each example's task."""
        rng = np.random.default_rng([self.run.seed, step])
        single = step < self.run.single_object_steps
        encode = partial(mask_to_codes, self.vae)
        scenes, examples = [], []
        for _ in range(self.run.batch_size):
            scene = synthetic.make_scene(rng, num_things=1 if single else None)
            kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
            scenes.append(scene)
            examples.append(synthetic.make_example(scene, kind, rng, encode))
        batch = self.processor(
            images=[s.image for s in scenes],
            text=[e["prefix"] for e in examples],
            suffix=[e["suffix"] for e in examples],
        )
        targets = [synthetic.patch_targets(s, self.grid) for s in scenes]
        batch["patch_classes"] = torch.from_numpy(np.stack([c for c, _ in targets]))
        batch["patch_boxes"] = torch.from_numpy(np.stack([b for _, b in targets]))
        return batch, [e["kind"] for e in examples]
