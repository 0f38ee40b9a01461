"""Fine-tuning: the loss mask, learning a small task, PEFT interop, merging, resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import paligemma
from paligemma.lora import apply_lora_, lora_modules, merge_lora_, save_adapter
from paligemma.processor import IGNORE
from paligemma.train import data, finetune

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 50, 220),
    "yellow": (230, 220, 30),
}


def write_colour_task(root, n: int, seed: int, name: str) -> str:
    """JSONL of noisy solid-colour images: "answer en what colour is it?" -> colour name."""
    rng = np.random.RandomState(seed)
    (root / "img").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        colour = list(COLORS)[i % len(COLORS)]
        pixels = np.clip(np.array(COLORS[colour]) + rng.randint(-40, 40, (28, 28, 3)), 0, 255)
        path = root / "img" / f"{name}-{i}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        lines.append(
            {
                "image": f"img/{path.name}",
                "prefix": "answer en what colour is it?",
                "suffix": colour,
            }
        )
    out = root / f"{name}.jsonl"
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(out)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return write_colour_task(root, 48, 0, "train"), write_colour_task(root, 16, 1, "eval")


def cfg_for(tmp_path, data, **kw) -> finetune.TrainConfig:
    return finetune.TrainConfig(data=data, out=str(tmp_path / "run"), **kw)


# -- the loss ---------------------------------------------------------------------------------


def test_loss_equals_transformers_and_ignores_prefix_and_padding(pipeline_dir, task):
    from transformers import PaliGemmaForConditionalGeneration

    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    examples = data.read_examples(task[0], pipe, None, False)[:3]
    examples[1] = dataclasses.replace(examples[1], prefix="a much longer prompt with more words")
    batch = data.batch_of(pipe, examples)
    labels = batch["labels"]
    suffix = batch["token_type_ids"] == 1
    assert torch.equal(labels != IGNORE, suffix)  # only suffix tokens (answer + <eos>) count
    tokens = int(suffix[:, 1:].sum())
    loss, n = finetune.suffix_loss(pipe.model, batch, "token", 0.0, tokens)
    assert n == tokens
    hf = PaliGemmaForConditionalGeneration.from_pretrained(
        pipeline_dir, attn_implementation="eager"
    )
    want = hf(**{k: v for k, v in batch.items()}).loss
    assert abs(float(loss.detach()) - float(want.detach())) < 1e-5

    # Perturbing padding ids or prefix positions' labels changes nothing.
    perturbed = dict(batch)
    perturbed["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 77)
    perturbed["labels"] = labels.masked_fill(~suffix, IGNORE)
    again = finetune.suffix_loss(pipe.model, perturbed, "token", 0.0, tokens)[0]
    assert float(again.detach()) == float(loss.detach())

    # Gradients reach the model only through suffix positions.
    h = (
        pipe.model.hidden(
            batch["input_ids"],
            batch["pixel_values"],
            batch["attention_mask"],
            batch["token_type_ids"],
        )
        .detach()
        .requires_grad_(True)
    )
    original = pipe.model.hidden
    pipe.model.hidden = lambda *a, **k: h
    try:
        finetune.suffix_loss(pipe.model, batch, "token", 0.0, tokens)[0].backward()
    finally:
        pipe.model.hidden = original
    predicts_suffix = torch.zeros_like(suffix)
    predicts_suffix[:, :-1] = suffix[:, 1:]
    assert h.grad[~predicts_suffix].abs().max() == 0
    assert h.grad[predicts_suffix].abs().sum(-1).min() > 0


def test_example_mean_and_accumulation(pipeline_dir, task):
    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    examples = data.read_examples(task[0], pipe, None, False)[:4]
    examples[0] = dataclasses.replace(examples[0], suffix="a longer answer than the others")
    batch = data.batch_of(pipe, examples)
    loss, _ = finetune.suffix_loss(pipe.model, batch, "example", 0.0, 4)
    per_example = [
        finetune.suffix_loss(
            pipe.model,
            data.batch_of(pipe, [e]),
            "token",
            0.0,
            int((data.batch_of(pipe, [e])["labels"][:, 1:] != IGNORE).sum()),
        )[0]
        for e in examples
    ]
    assert abs(float(loss.detach()) - float(sum(per_example).detach() / 4)) < 1e-5
    # Two micro-batches with the whole batch's denominator give the whole batch's gradient.
    tokens = int((batch["labels"][:, 1:] != IGNORE).sum())
    params = [p for p in pipe.model.parameters()]
    grads = torch.autograd.grad(
        finetune.suffix_loss(pipe.model, batch, "token", 0.0, tokens)[0], params[:3]
    )
    halves = [data.batch_of(pipe, examples[:2]), data.batch_of(pipe, examples[2:])]
    acc = [
        torch.autograd.grad(
            finetune.suffix_loss(pipe.model, b, "token", 0.0, tokens)[0], params[:3]
        )
        for b in halves
    ]
    for g, a, b in zip(grads, *acc, strict=True):
        assert torch.allclose(g, a + b, atol=1e-6)


# -- learning ---------------------------------------------------------------------------------


def test_training_learns_a_small_task(pipeline_dir, task, tmp_path):
    cfg = cfg_for(
        tmp_path,
        task[0],
        eval_data=task[1],
        mode="full",
        steps=60,
        batch_size=16,
        lr=3e-3,
        warmup_steps=5,
        eval_max_new_tokens=4,
        save_every=1000,
    )
    before = finetune.evaluate(
        paligemma.load(pipeline_dir, dtype=torch.float32),
        data.read_examples(task[1], paligemma.load(pipeline_dir, dtype=torch.float32), None, False),
        4,
    )
    result = finetune.train(pipeline_dir, cfg, progress=False)
    print(f"held-out exact match: {before:.2f} -> {result['eval_exact_match']:.2f}")
    assert before <= 0.1
    assert result["eval_exact_match"] >= 0.9
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 61)) and log[-1]["loss"] < log[0]["loss"] / 2
    # A full fine-tune is a complete checkpoint that transformers loads with identical logits.
    from transformers import PaliGemmaForConditionalGeneration

    out = tmp_path / "run" / "model"
    ours = paligemma.load(out, dtype=torch.float32)
    hf = PaliGemmaForConditionalGeneration.from_pretrained(out, attn_implementation="eager")
    batch = ours.processor(
        images=[Image.new("RGB", (28, 28), (200, 30, 30))], text=["answer en what colour is it?"]
    )
    with torch.no_grad():
        assert torch.equal(ours.model(**batch), hf(**batch).logits)  # same ops, same rounding


# -- LoRA -------------------------------------------------------------------------------------


def lora_model(pipeline_dir, seed=0):
    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    apply_lora_(pipe.model, rank=4, alpha=8)
    with torch.no_grad():  # a trained-looking adapter: B no longer zero
        for m in lora_modules(pipe.model).values():
            m.lora_B.normal_(0, 0.05)
    return pipe


def test_lora_at_init_equals_base_and_merge_equals_unmerged(pipeline_dir):
    base = paligemma.load(pipeline_dir, dtype=torch.float32)
    batch = base.processor(
        images=[Image.new("RGB", (28, 28), "red")] * 2, text=["caption en", "ocr"]
    )
    with torch.no_grad():
        want = base.model(**batch)
        fresh = paligemma.load(pipeline_dir, dtype=torch.float32)
        names = apply_lora_(fresh.model, rank=4, alpha=8)
        assert len(names) == 7 * fresh.model.cfg.text.depth
        assert torch.equal(fresh.model(**batch), want)
        pipe = lora_model(pipeline_dir)
        unmerged = pipe.model(**batch)
        assert not torch.allclose(unmerged, want)
        merge_lora_(pipe.model)
        assert not lora_modules(pipe.model)
        assert torch.allclose(pipe.model(**batch), unmerged, atol=1e-5)
        assert set(pipe.model.state_dict()) == set(base.model.state_dict())


def test_lora_wraps_each_base_and_merging_puts_a_layer_back():
    """LoRALinear(base) holds the very layer it wraps (float, matrix-vector or quantised);
    the adapter's names stay `<layer>.lora_A/B` (training checkpoints, PEFT); merging replaces
    the wrapper by the base (a quantised base: a float nn.Linear); quantising a wrapped model
    quantises the bases and keeps the adapters."""
    from paligemma.lora import LoRALinear
    from paligemma.quant.linear import Int8Linear, quantize_
    from paligemma.quant.matvec import MatVecLinear, install_matvec_

    torch.manual_seed(0)
    model = install_matvec_(paligemma.PaliGemma(paligemma.TINY).eval())
    keys = set(model.state_dict())
    x = torch.randn(1, 5, paligemma.TINY.text.width)
    blocks = model.decoder.blocks
    q_proj = blocks[0].attn.q_proj
    apply_lora_(model, rank=2, alpha=4)
    wrapper = blocks[0].attn.q_proj
    assert type(wrapper) is LoRALinear and wrapper.base is q_proj
    assert "decoder.blocks.0.attn.q_proj.lora_A" in dict(model.named_parameters())
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.normal_(0, 0.05)
        lora_out = blocks[0].mlp.up_proj(x)
    quantize_(model, "int8", head=False)
    assert type(blocks[0].mlp.up_proj.base) is Int8Linear
    with torch.no_grad():
        assert (blocks[0].mlp.up_proj(x) - lora_out).abs().max() < 0.02
    merge_lora_(model)
    assert type(blocks[0].attn.q_proj) is nn.Linear and not lora_modules(model)
    assert set(model.state_dict()) == keys
    again = install_matvec_(paligemma.PaliGemma(paligemma.TINY))
    apply_lora_(again, rank=2, alpha=4)
    with torch.no_grad():
        again.decoder.blocks[0].attn.q_proj.lora_B.fill_(0.1)
        unmerged = again.decoder.blocks[0].attn.q_proj(x)
        merge_lora_(again)
        assert type(again.decoder.blocks[0].attn.q_proj) is MatVecLinear
        assert torch.allclose(again.decoder.blocks[0].attn.q_proj(x), unmerged, atol=1e-5)


def test_adapter_loads_in_peft_with_the_same_logits(pipeline_dir, tmp_path):
    from peft import PeftModel
    from transformers import PaliGemmaForConditionalGeneration

    pipe = lora_model(pipeline_dir)
    save_adapter(pipe.model, tmp_path / "adapter", base=str(pipeline_dir))
    batch = pipe.processor(
        images=[Image.new("RGB", (30, 20), "blue")] * 2, text=["caption en", "detect cat"]
    )
    hf = PaliGemmaForConditionalGeneration.from_pretrained(
        pipeline_dir, attn_implementation="eager"
    )
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        ours = pipe.model(**batch)
        theirs = peft_model(**batch).logits
        assert (ours - theirs).abs().max() < 1e-4
        # ... and paligemma.load(base, adapter=...) gives the same model back.
        again = paligemma.load(pipeline_dir, dtype=torch.float32, adapter=tmp_path / "adapter")
        assert torch.allclose(again.model(**batch), ours, atol=1e-6)
        # An adapter written by peft itself loads into ours.
        peft_model.save_pretrained(tmp_path / "by-peft")
        from_peft = paligemma.load(pipeline_dir, dtype=torch.float32, adapter=tmp_path / "by-peft")
        assert torch.allclose(from_peft.model(**batch), ours, atol=1e-6)


def test_lora_and_qlora_runs_write_adapters(pipeline_dir, task, tmp_path):
    for mode, quant in (("lora", "int8"), ("qlora", "int8"), ("qlora", "int4")):
        out = tmp_path / f"{mode}-{quant}"
        cfg = finetune.TrainConfig(
            data=task[0],
            out=str(out),
            mode=mode,
            quantize=quant,
            steps=3,
            batch_size=4,
            grad_accum=2,
            lr=1e-2,
            merge=True,
            checkpointing=True,
        )
        record = finetune.train(pipeline_dir, cfg, progress=False)
        assert record["step"] == 3 and np.isfinite(record["loss"])
        tensors = load_file(out / "adapter" / "adapter_model.safetensors")
        assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in tensors.items())
        assert (out / "merged" / "model.safetensors").is_file() and (
            out / "merged" / "tokenizer.model"
        ).is_file()


def test_qlora_learns_a_repeated_batch_and_leaves_the_base_alone(pipeline_dir, task):
    """QLoRA steps on one batch: its loss goes down, the adapters move, and the quantised base
    (codes, scales, every frozen tensor) stays exactly as quantised."""
    from paligemma.train.loop import apply_gradients

    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    cfg = finetune.TrainConfig(data=task[0], out="unused", mode="qlora", quantize="int4")
    named = finetune.prepare_(pipe, cfg)
    assert all(".lora_A" in n or ".lora_B" in n for n, _ in named)
    params = [p for _, p in named]
    state = pipe.model.state_dict(keep_vars=True)
    frozen = {k: v.clone() for k, v in state.items() if not v.requires_grad}
    assert any(v.dtype in (torch.int8, torch.uint8) for v in frozen.values())
    adapters = {id(p): p.detach().clone() for p in params}
    batch = data.batch_of(pipe, data.read_examples(task[0], pipe, None, False)[:4])
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(4):
        loss, _ = finetune.suffix_loss(pipe.model, batch, "token", 0.0, 4.0)
        loss.backward()
        apply_gradients(optimizer, params, None)
        losses.append(float(loss.detach()))
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.95 * losses[0], losses
    assert all(not torch.equal(p, adapters[id(p)]) for p in params)
    state = pipe.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())


def test_attention_only_and_frozen_vision_train_what_they_say(pipeline_dir, task, tmp_path):
    for mode, extra in (
        ("attention", {}),
        ("full", {"freeze_vision": True, "freeze_projector": True}),
    ):
        pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
        cfg = finetune.TrainConfig(data=task[0], out=str(tmp_path / mode), mode=mode, **extra)
        names = [n for n, _ in finetune.prepare_(pipe, cfg)]
        assert not any(n.startswith(("vision.", "projector.")) for n in names)
        if mode == "attention":
            assert names and all(".attn." in n for n in names)
        else:
            assert "decoder.embed.weight" in names


def test_resampling_the_position_table(pipeline_dir):
    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    finetune.resize_images_(pipe, 56)
    assert pipe.model.cfg.num_image_tokens == 16 and pipe.model.vision.pos_embed.shape[0] == 16
    r = pipe.generate(Image.new("RGB", (50, 40), "red"), "caption en", max_new_tokens=3)
    assert len(r.token_ids) == 3
    batch = pipe.processor(images=[Image.new("RGB", (9, 9))], text=["x"])
    assert batch["pixel_values"].shape[-1] == 56


def test_bad_data_is_reported_with_line_numbers(pipeline_dir, task, tmp_path):
    good = json.loads(Path(task[0]).read_text().splitlines()[0])
    good["image"] = os.path.join(os.path.dirname(task[0]), good["image"])
    lines = [
        good,
        {**good, "image": "missing.png"},
        {**good, "suffix": ""},
        "{broken",
        {**good, "suffix": "word " * 300},
        good,
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    with pytest.raises(data.DataError) as err:
        data.read_examples(bad, pipe, 64, skip_bad=False)
    message = str(err.value)
    assert "4 bad record(s)" in message
    for fragment in ("line 2: no such image", "line 3: empty", "line 4:", "line 5:", "max_len=64"):
        assert fragment in message, fragment
    kept = data.read_examples(bad, pipe, 64, skip_bad=True)
    assert [e.line for e in kept] == [1, 6]


def test_data_refuses_huge_images_with_the_shared_pixel_guard(tmp_path):
    from test_cli_generate import png_header_only

    (tmp_path / "bomb.png").write_bytes(png_header_only(12_000, 12_000))  # header only: 144 Mpx
    (tmp_path / "data.jsonl").write_text(json.dumps({"image": "bomb.png", "suffix": "x"}) + "\n")
    with pytest.raises(data.DataError, match="12000x12000 = 144,000,000 pixels, above the limit"):
        data.read_examples(tmp_path / "data.jsonl", paligemma.load(), None, skip_bad=False)


# -- training curves --------------------------------------------------------------------------


@pytest.mark.parametrize("pipeline_dir", [True], ids=["pg2"], indirect=True)
def test_finetune_draws_curves_and_logs_to_tensorboard(pipeline_dir, task, tmp_path):
    """`finetune --tensorboard DIR` (two LoRA steps): every loss of metrics.jsonl is a scalar
    in DIR's event file, and OUT/curves.png is an 800 x 800 PNG."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from paligemma.cli.commands import build_parser

    out, board_dir = tmp_path / "run", tmp_path / "tb"
    argv = ["finetune", "--model", str(pipeline_dir), "--data", task[0], "--out", str(out)]
    argv += ["--tensorboard", str(board_dir), "--steps", "2", "--batch-size", "2"]
    args = build_parser().parse_args(argv)
    args.run(args)  # not cli.main: the test process's thread count stays as it is
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    board = EventAccumulator(str(board_dir))
    board.Reload()
    assert [(e.step, e.value) for e in board.Scalars("loss")] == [
        (r["step"], pytest.approx(r["loss"])) for r in rows
    ]
    assert [e.step for e in board.Scalars("lr")] == [1, 2]
    with Image.open(out / "curves.png") as picture:
        assert picture.format == "PNG" and picture.size == (800, 800)
        picture.load()  # the whole file decodes


def test_tensorboard_without_its_package_names_the_extra(task, tmp_path, monkeypatch, capsys):
    from paligemma.cli import commands

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    monkeypatch.setattr(commands, "set_threads", lambda threads: threads)
    argv = ["finetune", "--data", task[0], "--out", str(tmp_path / "run")]
    assert commands.main([*argv, "--tensorboard", str(tmp_path / "tb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("paligemma: error: --tensorboard needs the tensorboard package")
    assert "pip install 'paligemma[tensorboard]'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before loading anything
    with pytest.raises(ImportError, match=r"paligemma\[tensorboard\]"):
        finetune.train(None, cfg_for(tmp_path, task[0], tensorboard=str(tmp_path / "tb")))


# -- crash safety -----------------------------------------------------------------------------


def run_finetune(pipeline_dir, data, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "paligemma.cli",
        "finetune",
        "--model",
        str(pipeline_dir),
        "--data",
        data,
        "--out",
        str(out),
        "--mode",
        "lora",
        "--lora-dropout",
        "0.1",
        "--steps",
        "16",
        "--batch-size",
        "8",
        "--save-every",
        "4",
        "--lr",
        "1e-2",
        *extra,
    ]
    return cmd


# Every process of the resume test does the same arithmetic whatever the machine's core count:
# one intra-op thread and MKL's reproducible code path.
PINNED_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}


def finetune_losses(run_dir) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_identical_weights(pipeline_dir, task, tmp_path):
    env = os.environ | PINNED_ENV

    def straight_run(out):
        done = subprocess.run(
            run_finetune(pipeline_dir, task[0], out),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]

    def killed_and_resumed(out):
        proc = subprocess.Popen(
            run_finetune(pipeline_dir, task[0], out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        log = out / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline:  # wait until a checkpoint exists and the run is past it
            rows = log.read_text().splitlines() if log.is_file() else []
            if len(rows) >= 6 or proc.poll() is not None:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
        latest = (out / "checkpoints" / "latest").read_text()
        assert latest.startswith("step-") and int(latest[5:]) < 16
        assert not (out / "adapter").exists()
        again = subprocess.run(
            run_finetune(pipeline_dir, task[0], out, "--resume"),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 17))
        return latest

    def parted(a: Path, b: Path) -> int | None:
        pairs = zip(finetune_losses(a), finetune_losses(b), strict=True)
        return next((i + 1 for i, (x, y) in enumerate(pairs) if x != y), None)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight_run(straight)
    latest = killed_and_resumed(killed)
    # Runs that part at or before the step the kill resumed from did different arithmetic before
    # any resume (seen twice on CI, at step 1, 19 ulps apart; the cause is not found), which
    # says nothing about resuming, so both are made once more. A resume that misses some state
    # parts the runs after that step, every time.
    first = parted(straight, killed)
    if first is not None and first <= int(latest[5:]):
        straight, killed = tmp_path / "straight-2", tmp_path / "killed-2"
        straight_run(straight)
        latest = killed_and_resumed(killed)
        first = parted(straight, killed)
    assert first is None, (
        f"resumed from {latest}; losses part at step {first}: "
        f"{finetune_losses(straight)} vs {finetune_losses(killed)}"
    )
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} (resumed from {latest})"  # bit-identical

    # Starting over in a directory that holds a run is refused without --resume.
    refused = subprocess.run(
        run_finetune(pipeline_dir, task[0], killed), capture_output=True, text=True
    )
    assert refused.returncode == 1 and "--resume" in refused.stderr


def test_lora_linear_wraps_a_layer_as_the_issue_writes_it():
    """`LoRALinear(base)`: the defaults of apply_lora_ (rank 8, alpha 16); a fresh adapter
    computes what its base does, and merging gives back a layer of the base's own class."""
    from paligemma.lora import LoRALinear

    base = torch.nn.Linear(16, 4)
    layer = LoRALinear(base)
    assert (layer.lora_rank, layer.lora_alpha) == (8, 16.0) and layer.base is base
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), base(x))
    assert type(layer.merged()) is torch.nn.Linear


def test_a_checkpoint_from_before_the_data_formats_still_resumes(pipeline_dir, task, tmp_path):
    """Settings added later (--data-format, --images, --annotations, --task) are left out of the
    fingerprint at their defaults: a checkpoint written without them resumes, and one of a run
    that set them is still told apart."""
    from paligemma.cli.commands import build_parser

    out = tmp_path / "run"
    argv = ["finetune", "--model", str(pipeline_dir), "--data", task[0], "--out", str(out)]
    argv += ["--steps", "2", "--batch-size", "2", "--save-every", "1", "--optimizer", "sgd"]
    args = build_parser().parse_args(argv)
    args.run(args)
    state = out / "checkpoints" / (out / "checkpoints" / "latest").read_text() / "state.json"
    meta = json.loads(state.read_text())
    assert not {"data_format", "images", "annotations", "task"} & meta["config"].keys()
    for key in ("data_format", "images", "annotations", "task"):  # as an older version wrote it
        meta.get("settings", {}).pop(key, None)
    state.write_text(json.dumps(meta))
    args = build_parser().parse_args(["finetune", "--out", str(out), "--resume", "--steps", "3"])
    args.run(args)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    changed = finetune.TrainConfig(data="x", out="y", task="caption").fingerprint()
    assert changed["task"] == "caption"
