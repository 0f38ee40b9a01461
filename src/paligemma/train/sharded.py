"""Checkpoints of a run in several processes, through torch.distributed.checkpoint (DCP).

Every process writes its own part (its shards under fsdp; one copy of what DDP replicates)
into out/checkpoints/.step-N.tmp; after all are done, rank 0 adds state.json (the same fields
as a one-process checkpoint: step, data position, settings, log state), fsyncs, renames the
directory to step-N and switches `latest` (state.publish), so a kill at any moment leaves the
last complete checkpoint. A checkpoint holds the trainable tensors by name, the optimiser
state by parameter name (no pickled objects: the optimiser's settings come from the run) and
each rank's RNG state. DCP reshards on load, so a run resumes with any number of processes,
one included; a one-process run writes today's format (state.py), and a multi-process ddp run
can resume from it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .loop import Loop, Stepper
from .state import checked_meta, latest_checkpoint, publish, staging

METADATA = ".metadata"  # the file DCP writes last, naming every tensor of the checkpoint


def is_sharded(checkpoint: Path) -> bool:
    """Whether a checkpoint directory was written by DCP (a multi-process run)."""
    return (checkpoint / METADATA).is_file()


@dataclass
class ShardedLoop(Loop):
    """The training loop whose checkpoints are DCP's when the run has several processes (and
    which resumes from one whatever its own number of processes)."""

    world: Any = None  # distributed.Single or Group
    model: nn.Module | None = None  # the model whose parameter names key the optimiser state

    def load(self) -> tuple[int, int, dict[str, Any]]:
        ck = latest_checkpoint(self.out)
        if ck is None or not is_sharded(ck):
            if ck is not None and self.world.strategy == "fsdp":
                raise ValueError(
                    f"{ck} was written by one process: resume it with --strategy ddp, or in one "
                    "process"
                )
            return super().load()
        import torch.distributed.checkpoint as dcp

        meta = checked_meta(ck, self.fingerprint)
        stored = dcp.FileSystemReader(str(ck)).read_metadata().state_dict_metadata
        state, groups = self._state(rng=f"rng.{self.world.rank}" in stored)
        dcp.load(state, checkpoint_id=str(ck))
        self._set_optimizer(state["optim"], groups)
        if "rng" in state:
            torch.set_rng_state(state["rng"][str(self.world.rank)])
        return meta["step"], meta["pos"], meta.get("log_state", {})

    def save(self, stepper: Stepper, done: int) -> None:
        if self.world.size == 1:
            return super().save(stepper, done)
        import torch.distributed.checkpoint as dcp

        pos, log_state = stepper.checkpoint(done)
        tmp, final = staging(self.out, done) if self.world.main else (None, None)
        tmp, final = self._broadcast((tmp, final))
        state, _ = self._state(rng=True)
        dcp.save(state, checkpoint_id=str(tmp))
        if self.world.main:
            meta = {"step": done, "pos": pos, "config": self.fingerprint, "world": self.world.size}
            meta |= {"log_state": log_state or {}, "settings": self.settings}
            (tmp / "state.json").write_text(json.dumps(meta, indent=1))
            publish(tmp, final)
        self.world.barrier()

    def _state(self, rng: bool) -> tuple[dict[str, Any], list]:
        """What DCP saves / loads into: trainable tensors, optimiser state (+ this rank's RNG);
        and the optimiser's param_groups (kept out of the checkpoint)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optim = get_optimizer_state_dict(self.model, self.optimizer)
        state: dict[str, Any] = {
            "model": {n: p.detach() for n, p in self.trainable},
            "optim": optim["state"],
        }
        if rng:
            state["rng"] = {str(self.world.rank): torch.get_rng_state()}
        return state, optim["param_groups"]

    def _set_optimizer(self, loaded: dict[str, Any], groups: list) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        optim = {"state": loaded, "param_groups": groups}
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=optim)

    def _broadcast(self, value: Any) -> Any:
        """Rank 0's `value` in every process."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
