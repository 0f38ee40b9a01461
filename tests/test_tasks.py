"""pipe.detect / pipe.segment and `paligemma detect|segment`: structured results and pictures.

A random tiny model cannot be asked for a real detection, so these tests fix the model's answer
(Pipeline.generate is replaced) and check everything from the prompt to the picture."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_vqvae import random_weights

import paligemma
from paligemma.cli import main
from paligemma.pipeline import Pipeline, Result

SEGS = "".join(f"<seg{c:03d}>" for c in (5, 9, 77, 3, 0, 127, 64, 12, 5, 5, 5, 5, 100, 1, 2, 3))
ANSWER = f"<loc0512><loc0500><loc0900><loc0950>{SEGS} cat ; <loc0100><loc0100><loc0050> dog"


@pytest.fixture
def answer(monkeypatch):
    """Fix what the model answers; record the prompts it was given."""
    prompts = []

    def fake_generate(self, images, prompt, **kwargs):
        prompts.append(prompt)
        return Result(ANSWER, [], "stop", {})

    monkeypatch.setattr(Pipeline, "generate", fake_generate)
    return prompts


@pytest.fixture(scope="module")
def task_dir(pipeline_dir, tmp_path_factory):
    """The tiny checkpoint with a mask VQ-VAE beside it (found by name, like vae-oid.npz)."""
    path = tmp_path_factory.mktemp("task") / "ckpt"
    shutil.copytree(pipeline_dir, path)
    np.savez(path / "vae-oid.npz", **random_weights())
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "gray.png"
    Image.new("RGB", (200, 160), (128, 128, 128)).save(path)
    return path


def test_detect(task_dir, image_file, answer):
    pipe = paligemma.load(task_dir)
    objs = pipe.detect(str(image_file), ["cat", "dog"])
    assert answer == ["detect cat ; dog"]
    assert objs.text == ANSWER and (objs.width, objs.height) == (200, 160)
    cat, dog = objs
    assert (
        cat.label == "cat"
        and cat.valid
        and cat.box
        == (
            int(500 / 1023 * 200),
            int(512 / 1023 * 160),
            int(950 / 1023 * 200),
            int(900 / 1023 * 160),
        )
    )
    assert not dog.valid and "truncated" in dog.problem
    assert cat.mask is None  # detect does not decode masks
    with pytest.raises(ValueError, match="';'"):
        pipe.detect(image_file, ["cat ; dog"])
    with pytest.raises(ValueError, match="at least one"):
        pipe.detect(image_file, [])


def test_segment(task_dir, image_file, answer):
    pipe = paligemma.load(task_dir)
    assert pipe.mask_vae is not None
    objs = pipe.segment(image_file, "cat")
    assert answer == ["segment cat"]
    cat = objs[0]
    assert cat.mask.shape == (160, 200) and cat.mask.dtype == bool
    assert cat.soft_mask.shape == (160, 200)
    x0, y0, x1, y1 = cat.box
    assert not cat.mask[:y0].any() and not cat.mask[:, :x0].any()  # only inside the box
    with torch.no_grad():
        m64 = pipe.mask_vae.decode(torch.tensor([cat.seg_codes]))[0]
    want, _ = paligemma.tasks.vqvae.paste_mask(m64, cat.box, 160, 200)
    assert np.array_equal(cat.mask, want)
    coco = objs.to_coco()
    assert coco[0]["bbox"] == [x0, y0, x1 - x0, y1 - y0] and "segmentation" in coco[0]


def test_segment_without_vae_is_a_clear_error(pipeline_dir, image_file, answer):
    pipe = paligemma.load(pipeline_dir)
    with pytest.raises(ValueError, match="mask VQ-VAE"):
        pipe.segment(image_file, "cat")


def test_cli_detect_draws_a_picture(task_dir, image_file, tmp_path, answer, capsys):
    out = tmp_path / "annotated.png"
    code = main(
        [
            "detect",
            "--model",
            str(task_dir),
            "--image",
            str(image_file),
            "--label",
            "cat",
            "--label",
            "dog",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["text"] == ANSWER and record["objects"][0]["label"] == "cat"
    assert record["coco"][0]["bbox"][2] > 0 and record["objects"][1]["valid"] is False
    before = np.asarray(Image.open(image_file).convert("RGB")).astype(int)
    after = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert after.shape == before.shape
    x0, y0, x1, y1 = record["objects"][0]["box"]
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    assert np.abs(after[cy, cx] - before[cy, cx]).sum() > 10  # tinted inside the box
    assert np.array_equal(after[:20, :20], before[:20, :20])  # untouched far away


def test_cli_segment(task_dir, image_file, tmp_path, answer, capsys):
    out = tmp_path / "seg.png"
    code = main(
        [
            "segment",
            "--model",
            str(task_dir),
            "--image",
            str(image_file),
            "--label",
            "cat",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert text.startswith("cat: x0=") and "mask" in text and "invalid" in text
    assert out.is_file()
