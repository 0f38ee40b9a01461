"""Train the embedded demo model from scratch, on synthetic scenes, with one command:

    python -m paligemma.demo.train --out runs/embedded          # add --resume after a stop

(The shipped weights are this command's output, seed 0; the model card has the run.)

Stages, each skipped when its output exists: the tokenizer (demo/tokenizer.py: SentencePiece,
Gemma's special-token layout), the mask VQ-VAE (demo/mask_vae.py: published architecture, trained
on the generator's masks), then the model (EMBEDDED preset, initialised by demo/init.py) in the
loop fine-tuning shares (train/loop.py), with its loss and checkpoints; a kill loses at most
`save_every` steps, and `--resume` continues bit for bit. With the same seed, torch build
and thread count, every stage repeats bit for bit. The result is exported to OUT/model as a
checkpoint directory `paligemma.load` reads; `--install` also copies it into the package
(src/paligemma/assets). Evaluate with `python -m paligemma.demo.evaluate OUT/model`. On a GPU
(`--device`, by default the GPU when there is one), `--workers` processes make the batches ahead
(each batch depends on its step alone, so the data are the same as on the CPU).

What makes a model this small learn to localise from scratch on 2 CPU cores (the vision tower is
the bottleneck): a 2D sin-cos initialised position table, a single-object curriculum at the
start, a detection-heavy task mix, and an auxiliary dense loss on the image encoder (each
patch predicts the shape x colour under its centre and that object's box), kept on all run long
with a decaying weight; its head is thrown away, the exported model is a plain PaliGemma. And
for the decoder, `<loc>` embeddings (tied with the output head) that start ordered, as 1D
sin-cos features of the coordinate. The step at which a run starts writing positions as `<loc>`
tokens still varies between runs (2,300 to 4,000 steps in four runs); with an 8,800-step cosine
schedule the later starters ended 9 to 27 points behind the earliest on detection, so the
schedule is 12,000 steps, with the learning rate still at 0.78e-3 of its 1e-3 peak at step
4,000. The forward passes run under bfloat16 autocast (weights, optimiser and loss in float32):
a median 0.70 s per step on 2 CPU cores with bfloat16 instructions (AVX512-BF16), against 1.15 s
in float32 (`--float32`), so the whole run takes about 2 hours 36 minutes.

Shapes: B examples, P image patches, D vision width.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints.load import save_model
from ..checkpoints.safetensors_io import write_safetensors
from ..config import EMBEDDED, PaliGemmaConfig
from ..model import PaliGemma
from ..pipeline import Pipeline, resolve_device
from ..processor import IGNORE, ImageTransform, Processor
from ..tasks.vqvae import load_mask_vae
from ..tokenizer import NUM_LOC, Tokenizer
from ..train.finetune import suffix_loss
from ..train.loop import (
    Loop,
    RunningMeans,
    apply_gradients,
    refuse_to_overwrite,
)
from ..train.state import latest_checkpoint
from .batches import SceneBatches
from .evaluate import EVAL_SEED, evaluate
from .init import AuxHead, new_model
from .mask_vae import train_mask_vae
from .recipe import RunConfig
from .tokenizer import train_tokenizer

ASSETS = Path(__file__).parents[1] / "assets"


def processor_for(tokenizer_path: Path, cfg: PaliGemmaConfig) -> Processor:
    tok = Tokenizer(tokenizer_path)
    if tok.image_id != cfg.image_token_id or tok.vocab_size > cfg.text.vocab_size:
        raise ValueError(f"{tokenizer_path} does not fit the EMBEDDED config")
    return Processor(tok, ImageTransform(cfg.image_size), cfg.num_image_tokens)


def train_model(
    out: Path,
    run: RunConfig,
    resume: bool = False,
    progress: bool = True,
    until: int | None = None,
    device: str | torch.device = "cpu",
    workers: int = 0,
) -> dict[str, Any]:
    """Train EMBEDDED from scratch into `out` (metrics.jsonl, checkpoints/); returns the last
    log record. Needs out/tokenizer.model and out/mask_vae.safetensors. `until`: stop after
    that step (a checkpoint is written), to continue later with `resume`. `workers`: processes
    that make the batches ahead (each batch depends on its step alone, so the data are the
    same); 0 makes them in this process. Checkpoints are device-independent."""
    refuse_to_overwrite(out, resume)
    processor = processor_for(out / "tokenizer.model", EMBEDDED)
    vae = load_mask_vae(out / "mask_vae.safetensors")
    loc_ids = [processor.tokenizer.loc_id(k) for k in range(NUM_LOC)]
    device = torch.device(device)
    model = new_model(EMBEDDED, run.seed, loc_ids).to(device)
    aux = AuxHead(EMBEDDED.vision.width).to(device)
    trainable = [*model.named_parameters(), *(("aux." + n, p) for n, p in aux.named_parameters())]
    optimizer = _optimizer(run, trainable)
    loop = Loop(out, trainable, optimizer, run.lr_at, run.fingerprint(), run.save_every, "embedded")
    start, _, log_state = loop.restore(resume)
    end = run.steps if until is None else min(until, run.steps)
    grid = EMBEDDED.image_size // EMBEDDED.vision.patch_size
    batches = iter(  # the workers make batches on the CPU and never touch the accelerator
        torch.utils.data.DataLoader(
            SceneBatches(run, processor, vae, grid, start, end),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            generator=torch.Generator(),  # its seed draw leaves the checkpointed RNG alone
        )
    )
    params = [p for _, p in trainable]
    means = RunningMeans(log_state.get("ema"))  # carried across a resume like the weights
    steps = DemoSteps(run, Pipeline(model, processor, vae), aux, optimizer, params, batches, means)
    model.train()
    record = loop.run(steps, start, end, run.steps, progress)
    model.eval().cpu()
    return record


def _optimizer(run: RunConfig, trainable: list[tuple[str, nn.Parameter]]) -> torch.optim.AdamW:
    """AdamW, with weight decay on the matrices but the embeddings."""
    decay = [p for n, p in trainable if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "embed" not in n)]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": run.weight_decay}, {"params": no_decay}],
        lr=run.lr,
        betas=(0.9, 0.98),
        weight_decay=0.0,
    )


class DemoSteps:
    """The demo model's part of the loop (a `train.loop.Stepper`): the token loss plus the
    decaying auxiliary dense loss, running averages of the losses (per task every 10 steps) in
    the log, and a held-out evaluation every `eval_every` steps for the learning curve."""

    bar_keys = ("loss", "aux")

    def __init__(
        self,
        run: RunConfig,
        pipeline: Pipeline,
        aux: AuxHead,
        optimizer: torch.optim.Optimizer,
        params: list[nn.Parameter],
        batches: Iterator[tuple[dict[str, torch.Tensor], list[str]]],
        means: RunningMeans,
    ) -> None:
        self.run, self.pipeline, self.model, self.aux = run, pipeline, pipeline.model, aux
        self.optimizer, self.params, self.batches, self.means = optimizer, params, batches, means
        self.feats: dict[str, torch.Tensor] = {}  # the image encoder's output, float[B, P, D]
        self.model.vision.register_forward_hook(lambda m, i, o: self.feats.__setitem__("v", o))

    def step(self, step: int) -> dict[str, float]:
        run, model, device = self.run, self.model, self.model.device
        batch, kinds = next(self.batches)
        batch = {k: v.to(device) for k, v in batch.items()}
        denom = int((batch["labels"][:, 1:] != IGNORE).sum())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.autocast):
            loss, _ = suffix_loss(model, batch, "token", 0.0, denom)
            feats = self.feats.pop("v")
            aux_loss = self.aux.loss(feats, batch["patch_classes"], batch["patch_boxes"])
        (loss + run.aux_at(step) * aux_loss).backward()
        apply_gradients(self.optimizer, self.params, 1.0)
        with torch.no_grad():
            per_kind = _per_kind_loss(model, batch, kinds) if step % 10 == 0 else {}
        return {"loss": loss.item(), "aux": aux_loss.item(), **per_kind}

    def record(self, step: int, lr: float, seconds: float, metrics: dict) -> dict[str, Any]:
        means = self.means.update(metrics)
        record = {"step": step + 1, "lr": lr, "seconds": round(seconds, 3)}
        return record | {k: round(v, 4) for k, v in means.items()}

    def evaluate(self, done: int) -> dict[str, Any]:
        every = self.run.eval_every
        if not (every and done % every == 0 and done < self.run.steps):
            return {}
        self.model.eval()
        summary = evaluate(self.pipeline, self.run.eval_scenes, progress=False)["summary"]
        self.model.train()
        return {"eval": summary}

    def checkpoint(self, done: int) -> tuple[int, dict[str, Any]]:
        return done, {"ema": self.means.values}


def _per_kind_loss(model, batch, kinds: list[str]) -> dict[str, float]:
    """Mean suffix-token loss per task (for the learning curves), from a no-grad pass."""
    out = {}
    for kind in sorted(set(kinds)):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        sub = {k: v[rows] for k, v in batch.items() if k != "pixel_values"}
        sub["pixel_values"] = batch["pixel_values"][rows]
        denom = int((sub["labels"][:, 1:] != IGNORE).sum())
        out[f"loss_{kind}"] = float(suffix_loss(model, sub, "token", 0.0, max(denom, 1))[0])
    return out


def export(out: Path, dest: Path, dtype: torch.dtype = torch.bfloat16) -> None:
    """The trained weights (from the latest checkpoint) as a checkpoint directory at `dest`:
    config.json + model.safetensors, tokenizer.model, mask_vae.safetensors (both in `dtype`),
    and the model card."""
    import shutil

    from safetensors.torch import load_file

    ck = latest_checkpoint(out)
    if ck is None:
        raise FileNotFoundError(f"{out} has no checkpoint to export")
    tensors = load_file(str(ck / "state.safetensors"))
    model = PaliGemma(EMBEDDED)
    model.load_state_dict({n: tensors[f"param/{n}"] for n in model.state_dict()}, strict=True)
    dest.mkdir(parents=True, exist_ok=True)
    save_model(model.to(dtype), dest)
    shutil.copy(out / "tokenizer.model", dest / "tokenizer.model")
    vae = load_file(str(out / "mask_vae.safetensors"))
    write_safetensors({k: v.to(dtype) for k, v in vae.items()}, dest / "mask_vae.safetensors")
    card = ASSETS / "MODEL_CARD.md"
    if card.is_file() and dest.resolve() != card.parent.resolve():
        shutil.copy(card, dest / "MODEL_CARD.md")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m paligemma.demo.train", description=__doc__)
    p.add_argument("--out", default="runs/embedded", help="run directory (default runs/embedded)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--steps", type=int, default=RunConfig.steps)
    p.add_argument("--seed", type=int, default=RunConfig.seed, help="seeds every stage (default 0)")
    p.add_argument("--until", type=int, help="stop after this step (resume later)")
    p.add_argument("--install", action="store_true", help="also copy the model into the package")
    p.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, ... (default: cuda if there is one)"
    )
    p.add_argument(
        "--workers",
        type=int,
        help="processes making batches ahead (default: 0 on the CPU, else min(8, cores - 1))",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=RunConfig.eval_every,
        help=f"steps between learning-curve evaluations, 0: none (default {RunConfig.eval_every})",
    )
    p.add_argument(
        "--float32",
        action="store_true",
        help="no bfloat16 autocast (about 1.5x slower on a CPU with bfloat16 instructions)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _arguments(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device, int]:
    """The command's arguments, checked before anything is written; the device and the number
    of batch-making workers they come to."""
    p = _parser()
    args = p.parse_args(argv)
    if args.seed < 0 or args.seed == EVAL_SEED:
        p.error(f"--seed must be >= 0 and not {EVAL_SEED} (the held-out scenes' seed)")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    if args.eval_every < 0:
        p.error("--eval-every must be >= 0")
    try:
        device = resolve_device(None if args.device == "auto" else args.device)
    except ValueError as e:
        p.error(f"--device {args.device}: {e}")
    workers = args.workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
    return args, device, workers


def main(argv: list[str] | None = None) -> None:
    args, device, workers = _arguments(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer.model").is_file():
        train_tokenizer(out / "tokenizer.model", seed=args.seed)
    if not (out / "mask_vae.safetensors").is_file():
        stats = train_mask_vae(
            out / "mask_vae.safetensors",
            seed=args.seed,
            progress=not args.no_progress,
            device=device,
        )
        (out / "mask_vae.json").write_text(json.dumps(stats))
        print(f"mask VQ-VAE: held-out mask IoU {stats['mask_iou']:.3f}")
    run = RunConfig(
        steps=args.steps, seed=args.seed, eval_every=args.eval_every, autocast=not args.float32
    )
    last = train_model(out, run, args.resume, not args.no_progress, args.until, device, workers)
    if last.get("step", run.steps) < run.steps:
        print(f"stopped after step {last['step']}; continue with --resume")
        return
    export(out, out / "model")
    print(f"model written to {out / 'model'}")
    if args.install:
        export(out, ASSETS)
        print(f"installed into {ASSETS}")


if __name__ == "__main__":
    main()
