"""`paligemma eval` on the embedded model's held-out scenes written out as COCO / VQAv2 /
RefCOCO files: the Contract keys, resuming after an interruption, COCO results that
pycocotools takes unchanged, and per-token log-probs / object scores from the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import paligemma
from paligemma.cli import main
from paligemma.demo import export_scenes
from paligemma.pipeline import Pipeline

SCENES = 4


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return export_scenes(tmp_path_factory.mktemp("scenes"), SCENES)


@pytest.fixture(scope="module")
def pipe():
    return paligemma.load(dtype=torch.float32)


@pytest.fixture
def cli_pipe(pipe, monkeypatch):
    """The CLI, with the embedded pipeline loaded once for the module."""
    monkeypatch.setattr("paligemma.cli.eval.load_pipeline", lambda args: (pipe, 0.0))
    return pipe


def run_eval(out, *args) -> dict:
    assert main(["eval", *map(str, args), "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "scores.json").read_text())


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").open()]


@pytest.fixture(scope="module")
def det_run(scenes, tmp_path_factory):
    """The Contract's coco-det command, no --model (the real load of the embedded model)."""
    out = tmp_path_factory.mktemp("det")
    images = scenes["detect"].parent
    scores = run_eval(out, "--task", "coco-det", "--data", scenes["detect"], "--images", images)
    return out, scores


def test_coco_det_writes_the_contract_keys_and_a_report(det_run, scenes):
    out, scores = det_run
    assert 0 <= scores["mAP"] <= 1 and 0 <= scores["mAP50"] <= 1 and scores["mAP50"] > 0
    assert scores["settings"]["model"] == "embedded" and scores["counts"]["examples"] == SCENES
    assert scores["time_s"] > 0 and "per_class" in scores
    first = rows(out)[0]
    assert first["prompt"].startswith("detect ") and first["id"] == 1
    assert {"text", "objects", "coco", "score"} <= set(first)
    assert "| mAP (headline) |" in (out / "summary.md").read_text()
    assert (out / "worst.png").stat().st_size > 0


def test_coco_results_load_in_pycocotools_unchanged(det_run, scenes):
    """The results in predictions.jsonl, as written, through COCO.loadRes + COCOeval give the
    mAP of scores.json; every result has a score from the token probabilities in (0, 1]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out, scores = det_run
    results = [r for row in rows(out) for r in row["coco"]]
    assert results and all(0 < r["score"] <= 1 for r in results)
    assert len({r["score"] for r in results}) > 1  # real confidences, not a constant
    gt = COCO(str(scenes["detect"]))
    names = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    assert all(names[r["label"]] == r["category_id"] for r in results)  # the dataset's ids
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(scores["mAP"])
    assert evaluator.stats[1] == pytest.approx(scores["mAP50"])


def test_interrupted_run_resumes_to_the_same_scores(det_run, scenes, cli_pipe, monkeypatch):
    out, tmp = det_run[0].parent / "resumed", det_run[1]
    calls, real = [], Pipeline.generate

    def stop_on_second_batch(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Pipeline, "generate", stop_on_second_batch)
    args = ["--task", "coco-det", "--data", scenes["detect"], "--batch-size", 2]
    assert main(["eval", *map(str, args), "--out", str(out), "--quiet"]) == 130
    assert len(rows(out)) == 2 and not (out / "scores.json").exists()
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"index": 2, "id": 3, "te')  # a line cut short by the interruption
    monkeypatch.setattr(Pipeline, "generate", real)
    scores = run_eval(out, *args)
    assert len(calls) == 2  # the finished rows were not generated again
    keep = lambda s: {k: v for k, v in s.items() if k not in ("time_s", "examples_per_s")}  # noqa: E731
    settings = {k: v for k, v in scores.pop("settings").items()}
    assert keep(scores) == keep({k: v for k, v in tmp.items() if k != "settings"})
    assert settings["task"] == "coco-det" and [r["index"] for r in rows(out)] == [0, 1, 2, 3]
    assert main(["eval", *map(str, args), "--prompt", "detect {q} ;", "--out", str(out)]) == 1


def test_refcoco_seg_and_vqav2_write_their_contract_keys(scenes, cli_pipe, tmp_path):
    seg = run_eval(
        tmp_path / "seg",
        *("--task", "refcoco-seg", "--data", scenes["refs"], "--annotations", scenes["segment"]),
    )
    assert 0 <= seg["mIoU"] <= 1 and 0 <= seg["cIoU"] <= 1 and seg["mIoU"] > 0.3
    first = rows(tmp_path / "seg")[0]
    assert first["prompt"].startswith("segment ") and first["mask_rle"] is not None
    vqa = run_eval(
        tmp_path / "vqa",
        *("--task", "vqav2", "--data", scenes["vqa_questions"]),
        *("--annotations", scenes["vqa_annotations"], "--images", scenes["refs"].parent / "vqa"),
    )
    exact = run_eval(tmp_path / "exact", "--task", "exact", "--data", scenes["answer"])
    # ten equal answers per question: VQA accuracy (percent) is exact match x 100
    assert vqa["accuracy"] == pytest.approx(100 * exact["exact_match"]) and vqa["accuracy"] > 50
    assert rows(tmp_path / "vqa")[0]["prompt"].startswith("answer en ")
    answers = json.loads((tmp_path / "vqa" / "vqa_results.json").read_text())
    assert [a["question_id"] for a in answers] == [r["id"] for r in rows(tmp_path / "vqa")]
    test_split = run_eval(  # no answers (as test-dev / test-std): predictions, no scores
        tmp_path / "vqa-test",
        *("--task", "vqav2", "--data", scenes["vqa_questions"], "--limit", 2),
        *("--images", scenes["refs"].parent / "vqa"),
    )
    assert test_split["counts"]["unscored"] == 2


def test_engine_returns_log_probs_and_objects_get_scores(pipe, scenes):
    image = str(scenes["detect"].parent / "images" / "detect_00000.png")
    greedy = pipe.generate(image, "caption en", logprobs=True)
    assert pipe.generate(image, "caption en").logprobs == []  # not computed unless asked
    assert len(greedy.logprobs) == len(greedy.token_ids) > 0
    inputs = pipe.processor(images=[image], text=["caption en"])
    with torch.no_grad():
        ids = torch.cat([inputs["input_ids"], torch.tensor([greedy.token_ids[:1]])], 1)
        logits = pipe.model(ids, inputs["pixel_values"].float())[0, -2].float()
    first = logits[: pipe.num_real_ids].log_softmax(-1)[greedy.token_ids[0]]
    assert greedy.logprobs[0] == pytest.approx(float(first), abs=1e-4)
    beams = pipe.generate(image, "caption en", num_beams=2)
    assert len(beams.logprobs) == len(beams.token_ids) and max(beams.logprobs) <= 0
    objects = pipe.detect(image, ["circle", "square", "triangle"])
    valid = [o for o in objects if o.valid]
    assert valid and all(0 < o.score <= 1 for o in valid)
    coco = objects.to_coco(7, {"square": 1, "circle": 2, "triangle": 3})
    assert [(a["image_id"], a["score"]) for a in coco] == [(7, o.score) for o in valid]


def test_compressed_rle_is_pycocotools_own():
    from pycocotools import mask as mask_utils

    from paligemma.tasks.objects import mask_to_rle

    rng = np.random.default_rng(0)
    for shape in ((7, 5), (120, 90)):
        mask = rng.random(shape) < 0.3
        mask[: shape[0] // 2, : shape[1] // 3] = True
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = mask_to_rle(mask, compressed=True)
        assert ours["counts"] == theirs["counts"].decode()
        assert np.array_equal(paligemma.rle_to_mask(ours), mask)


def test_pope_from_parquet_with_image_bytes(scenes, cli_pipe, tmp_path):
    """A Hugging Face-style parquet file (images as bytes, question / answer columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = [json.loads(x) for x in scenes["answer"].read_text().splitlines()]
    root = scenes["answer"].parent
    table = {
        "question": [x["prefix"].removeprefix("answer en ") for x in lines],
        "answer": [x["suffix"] for x in lines],
        "image": [{"bytes": (root / x["image"]).read_bytes(), "path": None} for x in lines],
    }
    pq.write_table(pa.table(table), tmp_path / "pope.parquet")
    scores = run_eval(tmp_path / "out", "--task", "pope", "--data", tmp_path / "pope.parquet")
    assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(scores)
    assert 0 <= scores["accuracy_exact_match"] <= 1 and scores["counts"]["examples"] == SCENES
