"""Fine-tuning data and settings as a user meets them: every image decoded before the run, every
problem listed, --skip-bad saying what it dropped, a record that breaks during the run, --resume
taking its settings from the checkpoint, and `finetune --help`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import paligemma
from paligemma.cli import main
from paligemma.cli.commands import build_parser
from paligemma.train import data, finetune

# One tiny checkpoint (pg1) is enough here: these tests are about data and flags, not the model.
pytestmark = pytest.mark.parametrize("pipeline_dir", [False], indirect=True, ids=["pg1"])


def write_data(root, n: int, truncated: tuple[int, ...] = ()) -> str:
    """data.jsonl of `n` noise images; the images of the records in `truncated` (lines, from 1)
    are PNGs cut in half: their headers read fine, their pixels do not."""
    rng = np.random.RandomState(0)
    lines = []
    for i in range(1, n + 1):
        image = Image.fromarray(rng.randint(0, 255, (28, 28, 3), dtype=np.uint8))
        path = root / f"img-{i}.png"
        image.save(path)
        if i in truncated:
            truncate(path)
        lines.append({"image": path.name, "prefix": "caption en", "suffix": f"shape {i % 2}"})
    (root / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(root / "data.jsonl")


def truncate(path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def finetune_args(model, data_file, out, *extra) -> list[str]:
    run = ["--steps", "1", "--batch-size", "2", "--save-every", "1"]
    return ["finetune", "--model", str(model), "--data", data_file, "--out", str(out), *run, *extra]


def test_a_truncated_image_is_found_before_the_run_or_skipped(pipeline_dir, tmp_path, capsys):
    data_file = write_data(tmp_path, 4, truncated=(3,))
    assert main(finetune_args(pipeline_dir, data_file, tmp_path / "a")) == 1
    err = capsys.readouterr().err
    assert "1 bad record(s): line 3: cannot read image" in err
    assert "img-3.png: image file is truncated" in err
    assert not (tmp_path / "a" / "checkpoints").exists()  # stopped before the first step

    assert main(finetune_args(pipeline_dir, data_file, tmp_path / "b", "--skip-bad")) == 0
    err = capsys.readouterr().err
    assert "1 record skipped: line 3: cannot read image" in err and "truncated" in err
    assert (tmp_path / "b" / "adapter" / "adapter_model.safetensors").is_file()


def test_every_problem_is_listed_and_a_long_list_goes_to_a_file(pipeline_dir, tmp_path):
    pipe = paligemma.load(pipeline_dir, dtype=torch.float32)
    write_data(tmp_path, 1)
    good = json.loads((tmp_path / "data.jsonl").read_text())
    records = [good] + [{**good, "image": f"gone-{i}.png"} for i in range(13)]
    records.append({"image": good["image"], "suffix": "no prefix"})
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(data.DataError) as err:  # no file to write to: all of them in the message
        data.read_examples(tmp_path / "bad.jsonl", pipe, None, skip_bad=False)
    message = str(err.value)
    assert "14 bad record(s)" in message and "line 14: no such image" in message
    assert 'line 15: missing "prefix"' in message  # not an empty prompt

    listing = tmp_path / "run" / "data_problems.txt"
    with pytest.raises(data.DataError) as err:
        data.read_examples(tmp_path / "bad.jsonl", pipe, None, False, problems_file=listing)
    assert f"all 14 listed in {listing}" in str(err.value) and "line 15" not in str(err.value)
    lines = listing.read_text().splitlines()
    assert [x.split(":")[0] for x in lines] == [f"line {n}" for n in range(2, 16)]


def test_a_record_that_breaks_during_the_run(pipeline_dir, tmp_path, monkeypatch, capsys):
    """An image truncated after the pre-run check (changed on disk): --skip-bad leaves it out
    and says so; otherwise the run stops with a checkpoint of the steps before it."""
    data_file = write_data(tmp_path, 4)
    checked = finetune.read_examples

    def check_then_break(*args, **kw):
        examples = checked(*args, **kw)
        truncate(tmp_path / "img-2.png")
        return examples

    monkeypatch.setattr(finetune, "read_examples", check_then_break)
    run = dict(steps=2, batch_size=2, save_every=10)
    cfg = finetune.TrainConfig(data=data_file, out=str(tmp_path / "a"), skip_bad=True, **run)
    finetune.train(pipeline_dir, cfg, progress=False)
    assert "record skipped during the run: line 2: cannot read image" in capsys.readouterr().err

    write_data(tmp_path, 4)
    cfg = finetune.TrainConfig(data=data_file, out=str(tmp_path / "b"), **run)
    with pytest.raises(data.DataError, match="line 2: cannot read image") as err:
        finetune.train(pipeline_dir, cfg, progress=False)
    step = int(str(err.value).split("checkpoint at step ")[1].split(":")[0])
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text() == f"step-{step:07d}"
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == step


def test_resume_takes_the_settings_from_the_checkpoint(pipeline_dir, tmp_path, capsys):
    data_file = write_data(tmp_path, 4)
    out = tmp_path / "run"
    tuned = ["--lr", "0.01", "--lora-rank", "4", "--seed", "3"]
    assert main(finetune_args(pipeline_dir, data_file, out, *tuned)) == 0
    capsys.readouterr()
    resume = ["finetune", "--model", str(pipeline_dir), "--out", str(out), "--resume"]
    assert main([*resume, "--steps", "2"]) == 0, capsys.readouterr().err  # nothing else given
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["lr"] < 0.01  # the saved lr's decay
    settings = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert settings["settings"]["lora_rank"] == 4 and settings["settings"]["batch_size"] == 2

    differ = ["--steps", "3", "--lr", "0.5", "--batch-size", "2", "--lora-rank", "8"]
    assert main([*resume, *differ]) == 1
    err = capsys.readouterr().err
    assert "--lora-rank 8 (checkpoint: 4)" in err and "--lr 0.5 (checkpoint: 0.01)" in err
    assert "--batch-size" not in err.split("cannot change")[0]  # the same value is no change
    assert "cannot change on --resume" in err and "only --eval-data, --save-every" in err


def test_finetune_help_lists_choices_and_describes_every_flag(pipeline_dir, capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for choices in ("full,attention,lora,qlora", "decoder,vision,all", "adamw,sgd"):
        assert "{" + choices + "}" in text
    assert "{cosine,constant}" in text and "{token,example}" in text
    assert "--quantize {int8,int4} qlora only" in text
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undescribed = [a.dest for a in sub.choices["finetune"]._actions if not (a.help or "").strip()]
    assert undescribed == []


def test_resume_takes_the_model_from_the_checkpoint(pipeline_dir, tmp_path, capsys):
    """The run records its model: --resume needs no --model, and refuses another one."""
    data_file = write_data(tmp_path, 2)
    out = tmp_path / "run"
    assert main(finetune_args(pipeline_dir, data_file, out)) == 0
    capsys.readouterr()
    resume = ["finetune", "--out", str(out), "--resume", "--steps", "2"]
    assert main(resume) == 0, capsys.readouterr().err  # no --model: the checkpoint's
    assert main([*resume, "--steps", "3", "--model", "embedded"]) == 1
    err = capsys.readouterr().err
    assert f"was made from --model {Path(pipeline_dir).resolve()}, not embedded" in err
