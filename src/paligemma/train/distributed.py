"""Fine-tuning in several processes under torchrun: the process group, how a step's examples
are shared between the processes, and how the model is wrapped (DDP or FSDP2).

A run is distributed when torchrun (or srun, ...) sets WORLD_SIZE > 1 (with RANK and
LOCAL_RANK): `join()` then starts the process group (nccl on GPUs, each process on
cuda:LOCAL_RANK; gloo on the CPU) and returns a `Group`; otherwise a `Single`, whose hooks are
the identity, so that a one-process run does exactly what it did before.

The data order is the one-process order (`ExampleOrder`, seeded by --seed): `--batch-size` is
the global batch, the examples of one optimiser step over all processes. Each micro-batch of
batch_size / grad_accum examples is cut into world-size consecutive shares, one per rank, so a
step trains on the same examples whatever the number of processes, and the data position in a
checkpoint means the same to a resumed run with another number of processes. The loss is
normalised by the global count (suffix tokens of the whole step, or batch_size examples), and
the gradients are summed over the ranks (DDP and FSDP average, so the loss is scaled by the
world size): a step equals one process's step of the same batch up to float rounding.

Strategies: "ddp" (DistributedDataParallel; the default for lora / qlora) keeps a whole model in
every process; "fsdp" (FSDP2 `fully_shard`: one unit per transformer block of either tower, the
rest in the root unit; the default for full / attention) shards parameters, gradients and
optimiser state, with bfloat16 compute (MixedPrecisionPolicy) under --autocast.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..processor import ImageError, load_image
from .data import DataError, Example, ExampleOrder, RecordFailed, draw, say

STRATEGIES = ("ddp", "fsdp")


def launched() -> bool:
    """Whether this process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join() -> Single | Group:
    """The run's processes: a Group (process group started) under torchrun, else a Single."""
    return Group() if launched() else Single()


def default_strategy(mode: str) -> str:
    """ddp for adapters (small gradients, a whole model per process), fsdp for full tuning."""
    return "ddp" if mode in ("lora", "qlora") else "fsdp"


class LossModule(nn.Module):
    """The model with its loss as `forward`, the call DDP and FSDP hook (the loss calls
    `model.hidden` and `model.decoder.logits`, not the model's own forward)."""

    def __init__(self, model: nn.Module, loss: Callable) -> None:
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args: Any) -> Any:
        return self.loss(self.model, *args)


class Single:
    """One process: every hook is the identity and the run is as it always was."""

    rank, size, main = 0, 1, True
    device: str | None = None  # the pipeline's own default
    strategy: str | None = None

    def check(self, cfg: Any) -> None:
        """Settings this world cannot run (none for one process)."""

    def wrap(self, model: nn.Module, loss: Callable, strategy: str | None, autocast: bool):
        """The callable (batch, norm, label_smoothing, denominator) -> (loss, tokens)."""
        return functools.partial(loss, model)

    def draw(
        self, order: ExampleOrder, n: int, dropped: dict[int, str], skip_bad: bool
    ) -> tuple[list[Example], list[list]]:
        """This process's share of the next `n` examples and their images."""
        return draw(order, n, dropped, skip_bad)

    def sum(self, x: float) -> float:
        """`x` summed over the processes."""
        return x

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward; gradients are synchronised on `last`."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def seed(self, seed: int) -> None:
        """Seed the RNG of dropout (rank 0 keeps the one-process stream)."""

    def barrier(self) -> None:
        pass

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's state on rank 0 (None elsewhere); None here: the model is whole."""
        return None

    def leave(self) -> None:
        pass


SINGLE = Single()


class Group(Single):
    """The processes torchrun started (RANK, WORLD_SIZE, LOCAL_RANK in the environment)."""

    def __init__(self) -> None:
        self.rank, self.size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.main = self.rank == 0
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(self.local_rank)
        self.device = f"cuda:{self.local_rank}" if cuda else "cpu"
        self.owned = not dist.is_initialized()
        if self.owned:
            dist.init_process_group("nccl" if cuda else "gloo")
        self.module: nn.Module | None = None

    def check(self, cfg: Any) -> None:
        strategy = cfg.strategy or default_strategy(cfg.mode)
        share = cfg.grad_accum * self.size
        problems = [
            (
                cfg.batch_size % share != 0,
                f"--batch-size {cfg.batch_size} must be a multiple of --grad-accum x processes "
                f"({cfg.grad_accum} x {self.size}): it is the batch of a step over all processes",
            ),
            (strategy == "fsdp" and cfg.mode == "qlora", "qlora needs --strategy ddp"),
            (
                strategy == "fsdp" and bool(cfg.eval_data and cfg.eval_every),
                "--eval-every needs --strategy ddp (with fsdp, --eval-data is scored at the end)",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(message)
        self.strategy = strategy

    def wrap(self, model: nn.Module, loss: Callable, strategy: str | None, autocast: bool):
        module = LossModule(model, loss)
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.local_rank] if self.device != "cpu" else None
            self.module = DistributedDataParallel(
                module, device_ids=ids, forward_sync_buffers=False
            )
            return self.module
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16 if autocast else None,
            reduce_dtype=torch.float32 if autocast else None,
        )
        for block in [*model.vision.blocks, *model.decoder.blocks]:
            fully_shard(block, mp_policy=policy)
        self.module = fully_shard(module, mp_policy=policy)
        return self.module

    def draw(
        self, order: ExampleOrder, n: int, dropped: dict[int, str], skip_bad: bool
    ) -> tuple[list[Example], list[list]]:
        """Every rank walks the same global order and loads only its own share; a record that
        fails on any rank fails on all (and with `skip_bad` the share is drawn again without
        it, as one process would draw past it)."""
        pos = order.pos
        while True:
            chosen: list[Example] = []
            while len(chosen) < n:
                chosen += [e for e in order.take(1) if e.line not in dropped]
            mine = chosen[self.rank * n // self.size : (self.rank + 1) * n // self.size]
            images, failed = [], {}
            for e in mine:
                try:
                    images.append([load_image(p) for p in e.images])
                except (ImageError, OSError) as err:
                    failed[e.line] = str(err)
            everywhere: list[dict[int, str]] = [{} for _ in range(self.size)]
            dist.all_gather_object(everywhere, failed)
            failed = {k: v for part in everywhere for k, v in part.items()}
            if not failed:
                return mine, images
            line = min(failed)
            if not skip_bad:
                raise RecordFailed(f"line {line}: {failed[line]}")
            for line, why in sorted(failed.items()):
                dropped[line] = why
                if self.main:
                    say(f"record skipped during the run: line {line}: {why}")
            if len(dropped) == len(order.examples):
                raise DataError("no record left that loads")
            order.pos = pos

    def sum(self, x: float) -> float:
        t = torch.tensor(float(x), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def accumulating(self, last: bool) -> contextlib.AbstractContextManager:
        if self.strategy == "ddp":
            return contextlib.nullcontext() if last else self.module.no_sync()
        self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.size).backward()  # DDP and FSDP average the ranks' gradients: sum them

    def seed(self, seed: int) -> None:
        if self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank)

    def barrier(self) -> None:
        dist.barrier()

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """Under fsdp, the whole model gathered onto rank 0's CPU (a collective: every rank
        calls it); under ddp, None (every process holds the whole model)."""
        if self.strategy != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        return state if self.main else None

    def leave(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
