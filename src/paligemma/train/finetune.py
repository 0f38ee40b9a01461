"""Fine-tuning that is correct by construction, and runs that survive being killed.

Data: a JSONL file, one example per line: {"image": path (or list of paths, relative to the
file), "prefix": "answer en what colour?", "suffix": "red"}. Every record is checked before the
run starts (images decoded in full, missing prefix, empty suffix, too long for `max_len`), with
line numbers. A record whose image fails later (changed on disk) is left out with `skip_bad`;
otherwise the run stops, writing a checkpoint first, so that it can be resumed.

Loss: cross-entropy on suffix tokens only; the labels come from the processor, where image,
prefix and padding positions are -100, and logits are computed at suffix positions alone.
"token" averages over all suffix tokens of a batch; "example" (big_vision's) averages per
example first. Gradient accumulation splits a batch into micro-batches with the same result.

Modes: "full" (optionally freezing the vision tower / projector), "attention" (decoder
attention weights only, as big_vision's Colab), "lora", "qlora" (LoRA over an int8 / int4
decoder). Checkpoints hold the trainable tensors, the optimiser state, the data position and
the RNG state; each is written to a temporary directory and renamed, so a kill at any moment
leaves the last complete one, and `resume` continues bit for bit where it stopped. Under
torchrun with several processes, distributed.py shares each step between them (DDP or FSDP2)
and sharded.py writes their checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoints.assets import copy_assets
from ..checkpoints.load import save_model
from ..data import FORMATS
from ..lora import DEFAULT_TARGETS, merge_lora_, save_adapter
from ..pipeline import Pipeline, embedded_source, load
from ..processor import IGNORE, load_image
from .curves import require_tensorboard
from .data import (
    DataError,
    Example,
    ExampleOrder,
    RecordFailed,
    batch_of,
    read_examples,
    training_file,
)
from .distributed import SINGLE, STRATEGIES, Single, join
from .loop import apply_gradients, fingerprint, learning_rate, refuse_to_overwrite
from .prepare import prepare_, resize_images_  # noqa: F401 (finetune.prepare_ is public)
from .sharded import ShardedLoop

MODES = ("full", "attention", "lora", "qlora")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
LOSS_NORMS = ("token", "example")
QUANTIZE = ("int8", "int4")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    eval_data: str | None = None
    data_format: str = "jsonl"  # how to read data (paligemma.data FORMATS)
    images: str | None = None  # data_format != jsonl: the folder image names are relative to
    annotations: str | None = None  # vqav2: answers; refcoco: COCO instances
    task: str | None = None  # data_format != jsonl: what to train (default: by format)
    mode: str = "lora"
    freeze_vision: bool = False  # full mode: keep the image encoder fixed
    freeze_projector: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS
    lora_scope: str = "decoder"
    quantize: str = "int8"  # qlora base: int8 | int4
    steps: int = 100
    batch_size: int = 8  # examples per optimiser step
    grad_accum: int = 1  # micro-batches per step (memory ~ batch_size / grad_accum)
    lr: float = 3e-4
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adamw | sgd
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    clip: float | None = 1.0
    label_smoothing: float = 0.0
    loss_norm: str = "token"  # token | example
    autocast: bool = False  # bfloat16 autocast
    checkpointing: bool = False  # gradient checkpointing
    image_size: int | None = None  # fine-tune at another resolution (position-table resampling)
    max_len: int | None = None  # text tokens per example (prefix + suffix); default: no limit
    seed: int = 0
    save_every: int = 50
    eval_every: int = 0
    eval_max_new_tokens: int = 32
    skip_bad: bool = False
    merge: bool = False  # LoRA: also save the merged model
    tensorboard: str | None = None  # also log to TensorBoard event files in this directory
    strategy: str | None = None  # under torchrun: ddp | fsdp (default: ddp for LoRA, else fsdp)

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}"),
            (self.data_format in FORMATS, f"data_format must be one of {FORMATS}"),
            (self.optimizer in OPTIMIZERS, "optimizer must be adamw or sgd"),
            (self.schedule in SCHEDULES, "schedule must be cosine or constant"),
            (self.loss_norm in LOSS_NORMS, "loss_norm must be token or example"),
            (self.steps >= 1 and self.batch_size >= 1, "steps and batch_size must be >= 1"),
            (
                self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
                "grad_accum must divide batch_size",
            ),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.quantize in QUANTIZE, "quantize must be int8 or int4"),
            (self.strategy in (None, *STRATEGIES), f"strategy must be one of {STRATEGIES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def fingerprint(self) -> dict[str, Any]:
        """Settings a resumed run must share with the run it continues."""
        return fingerprint(self, FREE_ON_RESUME, later=ADDED_LATER)

    def lr_at(self, step: int) -> float:
        return learning_rate(step, self.lr, self.steps, self.warmup_steps, decay=self.schedule)


# Settings added after checkpoints existed without them: left out of the fingerprint while at
# their defaults, so those checkpoints resume.
ADDED_LATER = ("data_format", "images", "annotations", "task")
# Settings that may change when a run is resumed (--steps may grow).
FREE_ON_RESUME = (
    "out",
    "eval_data",
    "save_every",
    "eval_every",
    "eval_max_new_tokens",
    "merge",
    "steps",
    "skip_bad",
    "tensorboard",
    "strategy",
)


def model_id(source: str | os.PathLike | None) -> str:
    """How a run records the model it started from: a local path absolute (the embedded model
    is its directory in the package), anything else (a hub id) as given."""
    source = embedded_source(source)
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


# ---------------------------------------------------------------------------------------------
# Loss


def suffix_loss(
    model, batch: dict[str, torch.Tensor], norm: str, label_smoothing: float, denominator: float
) -> tuple[torch.Tensor, int]:
    """Sum of suffix-token cross-entropies / `denominator` (see `TrainConfig.loss_norm`), and
    the number of suffix tokens. Logits are computed only where a label is set."""
    device = model.device
    h = model.hidden(
        batch["input_ids"].to(device),
        batch["pixel_values"].to(device, model.dtype),
        batch["attention_mask"].to(device),
        batch["token_type_ids"].to(device),
    )
    targets = batch["labels"][:, 1:].to(device)  # position t predicts token t + 1
    mask = targets != IGNORE  # (B, T-1)
    logits = model.decoder.logits(h[:, :-1][mask]).float()  # (N, V) at suffix positions only
    ce = F.cross_entropy(logits, targets[mask], reduction="none", label_smoothing=label_smoothing)
    if norm == "token":
        return ce.sum() / denominator, int(mask.sum())
    rows = mask.nonzero()[:, 0]  # example of each token
    per_token_weight = 1.0 / mask.sum(1).clamp(min=1)[rows]
    return (ce * per_token_weight).sum() / denominator, int(mask.sum())


# ---------------------------------------------------------------------------------------------
# The run


def evaluate(
    pipe: Pipeline, examples: list[Example], max_new_tokens: int, batch_size: int = 8
) -> float:
    """Exact-match accuracy of greedy answers against the suffixes."""
    was_training = pipe.model.training
    pipe.model.eval()
    hits = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        results = pipe.generate(
            [[load_image(p) for p in e.images] for e in chunk],
            [e.prefix for e in chunk],
            max_new_tokens=max_new_tokens,
        )
        hits += sum(r.text.strip() == e.suffix.strip() for r, e in zip(results, chunk, strict=True))
    pipe.model.train(was_training)
    return hits / len(examples)


def train(
    source: str | os.PathLike | None, cfg: TrainConfig, resume: bool = False, progress: bool = True
) -> dict[str, Any] | None:
    """Fine-tune the model at `source`; writes to cfg.out: metrics.jsonl, curves.png,
    checkpoints/, and model/ (full, attention) or adapter/ (+ merged/) (lora, qlora); and
    TensorBoard events to cfg.tensorboard. Returns the final metrics. Under torchrun with
    several processes (train/distributed.py), rank 0 writes the log and outputs and returns
    the metrics; the other ranks return None."""
    world = join()
    try:
        return _train(source, cfg, resume, progress and world.main, world)
    finally:
        world.leave()


def _train(source, cfg: TrainConfig, resume: bool, progress: bool, world) -> dict | None:
    out = Path(cfg.out)
    refuse_to_overwrite(out, resume)
    world.check(cfg)
    if cfg.tensorboard:
        require_tensorboard()  # before the model loads: a missing extra fails at once
    torch.manual_seed(cfg.seed)
    source = embedded_source(source)
    pipe = load(source, dtype=torch.float32, device=world.device)
    # Every process converts the same file (deterministic; written atomically).
    file = training_file(
        cfg.data, cfg.data_format, out, cfg.images, cfg.annotations, cfg.task, cfg.seed, progress
    )
    data = read_examples(file, pipe, cfg.max_len, cfg.skip_bad, out / "data_problems.txt", progress)
    eval_data = None
    if cfg.eval_data:
        eval_problems = out / "eval_data_problems.txt"
        eval_data = read_examples(cfg.eval_data, pipe, None, cfg.skip_bad, eval_problems, progress)
    trainable = prepare_(pipe, cfg)
    forward = world.wrap(pipe.model, suffix_loss, world.strategy, cfg.autocast)
    trainable = [(n, p) for n, p in pipe.model.named_parameters() if p.requires_grad]  # fsdp's
    world.seed(cfg.seed)
    params = [p for _, p in trainable]
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    loop = ShardedLoop(
        out,
        trainable,
        optimizer,
        cfg.lr_at,
        cfg.fingerprint(),
        cfg.save_every,
        "finetune",
        tensorboard=cfg.tensorboard,  # None: no TensorBoard logging
        # a resume continues with these, from this model (train/resume.py)
        settings=dataclasses.asdict(cfg) | {"model": model_id(source)},
        main=world.main,
        world=world,
        model=pipe.model,
    )
    start, pos, _ = loop.restore(resume)
    order = ExampleOrder(data, cfg.seed, pos)
    steps = FinetuneSteps(pipe, cfg, optimizer, params, order, eval_data, world, forward)
    pipe.model.train()
    try:
        record = loop.run(steps, start, cfg.steps, cfg.steps, progress)
    except RecordFailed as e:
        loop.save(steps, e.step)  # as it was before the step that drew the record
        raise DataError(
            f"{cfg.data}: {e}; the run stopped after writing a checkpoint at step {e.step}: fix "
            "the file and --resume (with --skip-bad to leave the record out)"
        ) from None
    return _finish(pipe, source, cfg, world, record, eval_data)


def _finish(pipe, source, cfg, world, record, eval_data) -> dict[str, Any] | None:
    """Save the outputs (and score --eval-data) on rank 0, from the whole model: under fsdp,
    one rebuilt on the CPU from the gathered state (a GPU may not hold it whole)."""
    full = world.full_state(pipe.model)
    # Every rank past the run's last collective before any leaves: a rank that tore its process
    # group down while another still took part in the gather aborted in gloo's threads
    # ("terminate called without an active exception", seen under load about 1 run in 4).
    world.barrier()
    if not world.main:
        return None
    if full is not None:
        pipe = load(source, dtype=torch.float32, device="cpu")
        prepare_(pipe, cfg)
        pipe.model.load_state_dict(full)
    pipe.model.eval()
    _save_outputs(pipe, Path(source), Path(cfg.out), cfg)
    if eval_data:
        record["eval_exact_match"] = evaluate(pipe, eval_data, cfg.eval_max_new_tokens)
    return record


class FinetuneSteps:
    """Fine-tuning's part of the loop (a `loop.Stepper`): a step of `batch_size` examples in
    `grad_accum` micro-batches, the log line of its summed loss, and held-out exact match
    every `eval_every` steps."""

    bar_keys = ("loss", "tokens_per_s")

    def __init__(
        self,
        pipe: Pipeline,
        cfg: TrainConfig,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        order: ExampleOrder,
        eval_data: list[Example] | None,
        world: Single = SINGLE,
        forward: Callable | None = None,  # (batch, norm, smoothing, denominator) -> loss, tokens
    ) -> None:
        self.pipe, self.cfg, self.order, self.world = pipe, cfg, order, world
        self.forward = forward or functools.partial(suffix_loss, pipe.model)
        self.optimizer, self.params = optimizer, params
        self.eval_data = eval_data
        self.dropped: dict[int, str] = {}  # line -> why: records that failed during the run
        self.autocast = torch.autocast(
            pipe.model.device.type, dtype=torch.bfloat16, enabled=cfg.autocast
        )

    def step(self, step: int) -> dict[str, float]:
        cfg, world = self.cfg, self.world
        pos = self.order.pos
        try:
            drawn = [
                world.draw(self.order, cfg.batch_size // cfg.grad_accum, self.dropped, cfg.skip_bad)
                for _ in range(cfg.grad_accum)
            ]
        except RecordFailed as e:
            self.order.pos, e.step = pos, step  # a resume draws this step's examples again
            raise
        batches = [batch_of(self.pipe, examples, images) for examples, images in drawn]
        labels = [b["labels"][:, 1:] != IGNORE for b in batches]
        denom = sum(int(m.sum()) for m in labels) if cfg.loss_norm == "token" else cfg.batch_size
        denom = world.sum(denom) if cfg.loss_norm == "token" else denom  # over all processes
        total, tokens = 0.0, 0
        for i, batch in enumerate(batches):
            with world.accumulating(last=i + 1 == len(batches)):
                with self.autocast:
                    loss, n = self.forward(batch, cfg.loss_norm, cfg.label_smoothing, max(denom, 1))
                world.backward(loss)
            total, tokens = total + float(loss.detach()), tokens + n
        apply_gradients(self.optimizer, self.params, cfg.clip)
        return {"loss": world.sum(total), "tokens": int(world.sum(tokens))}

    def record(self, step: int, lr: float, seconds: float, metrics: dict) -> dict[str, Any]:
        tokens = metrics["tokens"]
        return {
            "step": step + 1,
            "loss": round(metrics["loss"], 6),
            "lr": lr,
            "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "seconds": round(seconds, 4),
        }

    def evaluate(self, done: int) -> dict[str, Any]:
        if not (self.eval_data and self.cfg.eval_every and done % self.cfg.eval_every == 0):
            return {}
        score = evaluate(self.pipe, self.eval_data, self.cfg.eval_max_new_tokens)
        return {"eval_exact_match": score}

    def checkpoint(self, done: int) -> tuple[int, dict[str, Any]]:
        return self.order.pos, {}


def _save_outputs(pipe: Pipeline, source: Path, out: Path, cfg: TrainConfig) -> None:
    if cfg.mode in ("lora", "qlora"):
        save_adapter(pipe.model, out / "adapter", base=str(source))
        if not cfg.merge:
            return
        merge_lora_(pipe.model)
        target = out / "merged"
    else:
        target = out / "model"
    save_model(pipe.model, target)
    copy_assets(source, target)
