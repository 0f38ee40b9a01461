"""Train the embedded demo model from scratch, on synthetic scenes, with one command:

    python -m paligemma.demo.train --out runs/embedded          # add --resume after a stop

(The shipped weights are this command's output, seed 0; the model card has the run.)

Stages, each skipped when its output exists: the tokenizer (SentencePiece, Gemma's special-token
layout), the mask VQ-VAE (published architecture, trained on the generator's masks), then the
model (EMBEDDED preset) with the project's loss and checkpoints; a kill at any moment loses at
most `save_every` steps, and `--resume` continues bit for bit. With the same seed, torch build
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
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.load import save_model
from ..checkpoints.safetensors_io import write_safetensors
from ..config import EMBEDDED, PaliGemmaConfig
from ..model import PaliGemma
from ..pipeline import Pipeline, default_device
from ..processor import IGNORE, ImageTransform, Processor
from ..tasks.vqvae import MaskVAE, crop_mask
from ..tokenizer import NUM_LOC, NUM_SEG, Tokenizer
from ..train.finetune import suffix_loss
from ..train.state import latest_checkpoint, load_state, save_state, saved_log_state, trim_log
from . import synthetic
from .evaluate import EVAL_SEED, evaluate

ASSETS = Path(__file__).parents[1] / "assets"
TOKENIZER_VOCAB = 1536


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_sentencepiece(
    path: Path, sentences: list[str], specials: list[str], vocab_size: int
) -> None:
    """A BPE SentencePiece model in Gemma's layout: <pad>=0 <eos>=1 <bos>=2 <unk>=3, then
    `specials` in order, byte fallback, no dummy prefix, identity normaliser, split digits."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=specials,
        add_dummy_prefix=False,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def train_tokenizer(path: Path, seed: int = 0, lines: int = 20_000) -> None:
    """tokenizer.model: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <image>=4, <loc0000..1023>,
    <seg000..127>, then BPE pieces learnt from the generator's task texts."""
    rng = np.random.default_rng([seed, 7])
    corpus = []
    for _ in range(lines // 4):
        scene = synthetic.make_scene(rng, size=(64, 64))
        for kind in ("caption", "answer", "detect"):
            ex = synthetic.make_example(scene, kind, rng)
            corpus += [ex["prefix"], ex["suffix"]]
    specials = ["<image>", *(f"<loc{i:04d}>" for i in range(NUM_LOC))]
    specials += [f"<seg{i:03d}>" for i in range(NUM_SEG)]
    train_sentencepiece(path, corpus, specials, TOKENIZER_VOCAB)


# ---------------------------------------------------------------------------------------------
# Mask VQ-VAE


def object_masks(rng: np.random.Generator, n: int) -> torch.Tensor:
    """float[n, 64, 64]: generator objects cropped to their boxes, as segmentation targets are."""
    out: list[torch.Tensor] = []
    while len(out) < n:
        scene = synthetic.make_scene(rng)
        out += [crop_mask(t.mask, t.box) for t in scene.things]
    return torch.stack(out[:n])


def train_mask_vae(
    path: Path,
    steps: int = 600,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """VQ-VAE (published layout) trained on generator masks: MSE on the [-1, 1] scale, codebook
    and 0.25 x commitment losses, straight-through codes; codebook seeded from encoder outputs.
    Writes `path` (.safetensors, the npz's key names); returns the held-out mask IoU."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    vae = MaskVAE().to(device)
    with torch.no_grad():  # seed the codebook with encoder outputs of real masks
        z = vae.encoder(2 * object_masks(rng, 64)[:, None].to(device) - 1).permute(0, 2, 3, 1)
        z = z.reshape(-1, vae.codebook.shape[1])
        vae.codebook.copy_(z[torch.randperm(len(z))[: vae.codebook.shape[0]]])
    opt = torch.optim.Adam(vae.parameters(), lr=3e-4)
    for step in tqdm(range(steps), desc="mask VQ-VAE", disable=not progress):
        masks = object_masks(rng, batch).to(device)
        target = 2 * masks[:, None] - 1
        z = vae.encoder(target)  # (B, 512, 4, 4)
        codes = vae.quantize(z.detach())
        e = vae.lookup(codes)
        quantized = z + (e - z).detach()  # straight-through
        recon = vae.decoder(quantized)
        loss = (
            F.mse_loss(recon, target) + F.mse_loss(e, z.detach()) + 0.25 * F.mse_loss(z, e.detach())
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 99:  # revive unused codes at encoder outputs
            with torch.no_grad():
                used = torch.zeros(vae.codebook.shape[0], dtype=torch.bool, device=device)
                used[codes.flatten()] = True
                dead = (~used).nonzero()[:, 0]
                zs = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                vae.codebook[dead] = zs[torch.randint(len(zs), (len(dead),))]
    vae = vae.eval().cpu()
    with torch.no_grad():
        masks = object_masks(np.random.default_rng([seed, 13]), 256)
        recon = vae.decode(vae.encode(masks)) > 0
        truth = masks > 0.5
        iou = ((recon & truth).sum((1, 2)) / (recon | truth).sum((1, 2)).clamp(min=1)).mean()
    write_safetensors({k: v.contiguous() for k, v in vae.state_dict().items()}, path)
    return {"mask_iou": float(iou)}


# ---------------------------------------------------------------------------------------------
# Model


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
        skip = {"steps", "save_every", "eval_every", "eval_scenes"}  # --steps may grow on resume
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = min((step - self.warmup_steps) / max(1, self.steps - self.warmup_steps), 1.0)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))

    def aux_at(self, step: int) -> float:
        a, b = self.aux_weight
        return a + (b - a) * min(step / self.steps, 1.0)


def sincos_2d(side: int, width: int) -> torch.Tensor:
    """float[side*side, width]: 2D sin-cos position features (MoCo v3 / big_vision 'sincos2d')."""
    quarter = width // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter) / quarter)
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ys = y.flatten()[:, None].float() * omega
    xs = x.flatten()[:, None].float() * omega
    return torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=1)


def sincos_1d(n: int, width: int) -> torch.Tensor:
    """float[n, width]: sin-cos features of 0..n-1, periods from 2n down to 2, std 1/sqrt(2)
    per column (so row k and row k+1 are near, row k and row k+n/2 far)."""
    half = width // 2
    omega = (2 * math.pi / (2 * n)) * n ** (torch.arange(half) / (half - 1))
    angle = torch.arange(n)[:, None].float() * omega
    return torch.cat([angle.sin(), angle.cos()], dim=1)


def new_model(cfg: PaliGemmaConfig, seed: int, loc_ids: list[int] | None = None) -> PaliGemma:
    """Random init: linear / conv weights N(0, 0.02), zero biases, embeddings N(0, 0.02), unit
    norms, 2D sin-cos position table. `loc_ids` (the ids of <loc0000>..<loc1023>, in order):
    those embedding rows -- tied with the output head -- start as 1D sin-cos features of the
    coordinate, scaled to std 0.02, so that the decoder starts knowing which coordinates are
    near each other (without it, writing positions as tokens came ~2,000 steps later in one of
    two runs: see the model card)."""
    torch.manual_seed(seed)
    model = PaliGemma(cfg)
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    with torch.no_grad():
        side = cfg.image_size // cfg.vision.patch_size
        model.vision.pos_embed.copy_(sincos_2d(side, cfg.vision.width))
        if loc_ids is not None:
            embed = model.decoder.embed.weight
            table = sincos_1d(len(loc_ids), embed.shape[1]) * (0.02 / math.sqrt(0.5))
            embed.index_copy_(0, torch.tensor(loc_ids), table)
    return model


class AuxHead(nn.Module):
    """Training aid: per patch, shape x colour logits and the object's box (thrown away)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, synthetic.NUM_PATCH_CLASSES + 4)

    def loss(self, feats: torch.Tensor, classes: torch.Tensor, boxes: torch.Tensor):
        """feats float[B, P, D]; classes int[B, P]; boxes float[B, P, 4] in [0, 1]."""
        out = self.proj(feats).float()
        ce = F.cross_entropy(out[..., :-4].flatten(0, 1), classes.flatten())
        fg = classes > 0
        l1 = F.l1_loss(out[..., -4:][fg].sigmoid(), boxes[fg]) if fg.any() else out.sum() * 0
        return ce + 5 * l1


class Stream:
    """The training data: step s always gets the same examples (seeded by (seed, s))."""

    def __init__(self, run: RunConfig, processor: Processor, vae: MaskVAE, grid: int):
        self.run, self.processor, self.vae, self.grid = run, processor, vae, grid
        self.kinds = [k for k, _ in run.mix]
        weights = np.array([w for _, w in run.mix])
        self.weights = weights / weights.sum()

    def encode(self, mask: np.ndarray, box: tuple[int, int, int, int]) -> list[int]:
        with torch.no_grad():
            return self.vae.encode(crop_mask(mask, box)[None])[0].tolist()

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        rng = np.random.default_rng([self.run.seed, step])
        single = step < self.run.single_object_steps
        scenes, examples = [], []
        for _ in range(self.run.batch_size):
            scene = synthetic.make_scene(rng, num_things=1 if single else None)
            kind = self.kinds[int(rng.choice(len(self.kinds), p=self.weights))]
            scenes.append(scene)
            examples.append(synthetic.make_example(scene, kind, rng, self.encode))
        batch = self.processor(
            images=[s.image for s in scenes],
            text=[e["prefix"] for e in examples],
            suffix=[e["suffix"] for e in examples],
        )
        targets = [synthetic.patch_targets(s, self.grid) for s in scenes]
        batch["patch_classes"] = torch.from_numpy(np.stack([c for c, _ in targets]))
        batch["patch_boxes"] = torch.from_numpy(np.stack([b for _, b in targets]))
        return batch, [e["kind"] for e in examples]


def processor_for(tokenizer_path: Path, cfg: PaliGemmaConfig) -> Processor:
    tok = Tokenizer(tokenizer_path)
    if tok.image_id != cfg.image_token_id or tok.vocab_size > cfg.text.vocab_size:
        raise ValueError(f"{tokenizer_path} does not fit the EMBEDDED config")
    return Processor(tok, ImageTransform(cfg.image_size), cfg.num_image_tokens)


class Steps(torch.utils.data.Dataset):
    """Batches of steps `first`.. as a dataset, so that worker processes can make them ahead."""

    def __init__(self, stream: Stream, first: int, end: int) -> None:
        self.stream, self.first, self.end = stream, first, end

    def __len__(self) -> int:
        return max(0, self.end - self.first)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        return self.stream.batch(self.first + i)


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
    from tqdm import tqdm

    from ..tasks.vqvae import load_mask_vae

    cfg = EMBEDDED
    if not resume and latest_checkpoint(out):
        raise ValueError(f"{out} holds a run already: pass --resume to continue it")
    processor = processor_for(out / "tokenizer.model", cfg)
    vae = load_mask_vae(out / "mask_vae.safetensors")
    loc_ids = [processor.tokenizer.loc_id(k) for k in range(NUM_LOC)]
    device = torch.device(device)
    model = new_model(cfg, run.seed, loc_ids).to(device)
    aux = AuxHead(cfg.vision.width).to(device)
    grid = cfg.image_size // cfg.vision.patch_size
    trainable = [*model.named_parameters(), *(("aux." + n, p) for n, p in aux.named_parameters())]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": run.weight_decay}, {"params": no_decay}],
        lr=run.lr,
        betas=(0.9, 0.98),
        weight_decay=0.0,
    )
    start, _ = load_state(out, trainable, optimizer, run.fingerprint()) if resume else (0, 0)
    log_path = out / "metrics.jsonl"
    trim_log(log_path, start)
    end = run.steps if until is None else min(until, run.steps)
    stream = Stream(run, processor, vae, grid)
    batches = iter(  # the workers make batches on the CPU and never touch the accelerator
        torch.utils.data.DataLoader(
            Steps(stream, start, end),
            batch_size=None,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            generator=torch.Generator(),  # its seed draw leaves the checkpointed RNG alone
        )
    )
    feats: dict[str, torch.Tensor] = {}
    model.vision.register_forward_hook(lambda m, i, o: feats.__setitem__("v", o))
    # Running averages of the logged losses, carried across a resume like the weights.
    ema: dict[str, float] = dict(saved_log_state(out).get("ema", {})) if resume else {}
    record: dict[str, Any] = {}
    model.train()
    bar = tqdm(total=run.steps, initial=start, desc="embedded", unit="step", disable=not progress)
    with open(log_path, "a") as log:
        for step in range(start, end):
            began = time.perf_counter()
            for g in optimizer.param_groups:
                g["lr"] = run.lr_at(step)
            batch, kinds = next(batches)
            batch = {k: v.to(device) for k, v in batch.items()}
            denom = int((batch["labels"][:, 1:] != IGNORE).sum())
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.autocast):
                loss, _ = suffix_loss(model, batch, "token", 0.0, denom)
                aux_loss = aux.loss(feats.pop("v"), batch["patch_classes"], batch["patch_boxes"])
            (loss + run.aux_at(step) * aux_loss).backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                per_kind = _per_kind_loss(model, batch, kinds) if step % 10 == 0 else {}
            for k, v in {"loss": loss.item(), "aux": aux_loss.item(), **per_kind}.items():
                ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
            seconds = time.perf_counter() - began
            record = {"step": step + 1, "lr": run.lr_at(step), "seconds": round(seconds, 3)}
            record |= {k: round(v, 4) for k, v in ema.items()}
            if run.eval_every and (step + 1) % run.eval_every == 0 and step + 1 < run.steps:
                model.eval()
                pipe = Pipeline(model, processor, vae)
                record["eval"] = evaluate(pipe, run.eval_scenes, progress=False)["summary"]
                model.train()
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{ema['loss']:.3f}", aux=f"{ema['aux']:.3f}")
            bar.update(1)
            if (step + 1) % run.save_every == 0 or step + 1 == end:
                save_state(
                    out, step + 1, step + 1, trainable, optimizer, run.fingerprint(), {"ema": ema}
                )
    bar.close()
    model.eval().cpu()
    return record


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


def main(argv: list[str] | None = None) -> None:
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
    args = p.parse_args(argv)
    if args.seed < 0 or args.seed == EVAL_SEED:
        p.error(f"--seed must be >= 0 and not {EVAL_SEED} (the held-out scenes' seed)")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    if args.eval_every < 0:
        p.error("--eval-every must be >= 0")
    try:
        device = default_device() if args.device == "auto" else torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        p.error(f"--device {args.device}: {e}")
    workers = args.workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 1))
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
