"""The `paligemma eval` loop: read a dataset, generate in batches (progress bar with ETA),
append each prediction to OUT/predictions.jsonl as its batch finishes, then score the set and
write OUT/scores.json, OUT/summary.md and (detection / segmentation) OUT/worst.png.

Resumable: a run that stops (Ctrl-C, a crash, a lost machine) leaves predictions.jsonl with the
examples done; the same command continues from there (a half-written last line is dropped) and
gives the same scores as an uninterrupted run, since every row is generated alone-equivalent
(a batch's rows get the same tokens as alone). OUT/settings.json records what the predictions
were made with; a run with other settings is refused rather than mixed in.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ..data import read_dataset
from ..processor import load_image
from ..tasks.video import DEFAULT_FRAMES, is_video, read_frames
from . import objects as obj_tasks
from .report import write_report
from .tasks import TASKS, EvalTask

PREDICTIONS, SETTINGS, SCORES = "predictions.jsonl", "settings.json", "scores.json"


def evaluate_dataset(
    pipe,
    task: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = "embedded",
    annotations: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    fmt: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    prompt: str | None = None,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    frames: int = DEFAULT_FRAMES,
    progress: bool = True,
) -> dict[str, Any]:
    """Score `pipe` on `data` for `task` (a TASKS name); returns what scores.json holds. A
    record's video file (an image path with a video suffix: .mp4, .webm, ...) is read as
    `frames` frames sampled uniformly, each an image of the prompt (tasks/video.py)."""
    spec = TASKS[task]
    if spec.masks and pipe.mask_vae is None:
        raise ValueError(
            f"{task} needs the mask VQ-VAE (vae-oid.npz): put it in the checkpoint directory "
            "or pass --mask-vae PATH"
        )
    dataset = read_dataset(
        fmt or spec.fmt,
        data,
        images=Path(images) if images else None,
        annotations=Path(annotations) if annotations else None,
        split=split,
        limit=limit,
    )
    settings = {
        "task": task,
        "model": model,
        "data": str(data),
        "annotations": str(annotations) if annotations else None,
        "format": fmt or spec.fmt,
        "split": split,
        "limit": limit,
        "prompt": prompt or spec.prompt,
        "max_new_tokens": max_new_tokens or spec.max_new_tokens,
        "num_beams": num_beams or spec.num_beams,
        "frames": frames,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out / SETTINGS, settings)
    done = read_predictions(out / PREDICTIONS)
    start = time.perf_counter()
    _predict_all(pipe, spec, dataset, settings, out / PREDICTIONS, done, batch_size, progress)
    elapsed = time.perf_counter() - start
    return _finish(out, spec, dataset, [done[i] for i in range(len(dataset))], settings, elapsed)


def _finish(out: Path, spec: EvalTask, dataset, rows: list[dict], settings: dict, elapsed):
    """Score the set; write predictions.jsonl again (with the set's per-example scores, e.g.
    CIDEr), scores.json, the report and, for VQA, the answers file the VQA servers take."""
    scores = aggregate(spec, rows, dataset)
    _write_jsonl(out / PREDICTIONS, rows)
    if spec.name in ("vqav2", "textvqa"):
        answers = [{"question_id": r["id"], "answer": r["answer"]} for r in rows]
        (out / "vqa_results.json").write_text(json.dumps(answers) + "\n")
    record = {**scores, "settings": settings, "counts": _counts(spec, rows, dataset)}
    record |= {"model": settings["model"], "data": settings["data"], "time_s": round(elapsed, 3)}
    record["examples_per_s"] = round(len(rows) / elapsed, 3) if elapsed > 0 else None
    (out / SCORES).write_text(json.dumps(record, indent=1) + "\n")
    write_report(out, spec, record, rows, dataset)
    return record


def _check_settings(path: Path, settings: dict) -> None:
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            raise ValueError(
                f"{path.parent} holds predictions made with other settings ({', '.join(changed)}"
                " differ); use another --out, or delete it to start over"
            )
    else:
        path.write_text(json.dumps(settings, indent=1) + "\n")


def read_predictions(path: Path) -> dict[int, dict]:
    """The rows already written (index -> row); an unfinished last line is dropped (and cut
    from the file, so that new rows follow whole ones)."""
    rows: dict[int, dict] = {}
    if not path.is_file():
        return rows
    lines = path.read_text().splitlines(keepends=True)
    for n, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                _write_jsonl(path, list(rows.values()))
                break
            raise ValueError(f"{path}:line {n + 1}: not a JSON prediction row") from None
        rows[row["index"]] = row
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def _predict_all(pipe, spec, dataset, settings, path, done, batch_size, progress) -> None:
    from tqdm import tqdm

    todo = [i for i in range(len(dataset)) if i not in done]
    bar = tqdm(
        total=len(dataset), initial=len(dataset) - len(todo), desc=spec.name, disable=not progress
    )
    with path.open("a") as f:
        for k in range(0, len(todo), batch_size):
            chunk = todo[k : k + batch_size]
            for i, row in zip(chunk, predict(pipe, spec, dataset, chunk, settings), strict=True):
                done[i] = row
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(chunk))
    bar.close()


def task_prompt(spec: EvalTask, template: str, record, dataset, own: dict) -> str:
    """The prompt of one record: the template with {q} the question / expression / labels
    (`own`: the images' own label lists, objects.image_labels)."""
    if spec.kind in ("detect", "segment"):
        q = " ; ".join(obj_tasks.prompt_labels(record, dataset, own))
    else:
        q = (record.prompt or "").strip()
    return template.replace("{q}", q)


def predict(pipe, spec: EvalTask, dataset, indices: list[int], settings: dict) -> list[dict]:
    """One batch: generate, then each row's parsed answer and per-example score."""
    records = [dataset[i] for i in indices]
    images = [record_images(r, settings.get("frames", DEFAULT_FRAMES)) for r in records]
    own = obj_tasks.image_labels(dataset) if spec.kind in ("detect", "segment") else {}
    prompts = [task_prompt(spec, settings["prompt"], r, dataset, own) for r in records]
    results = pipe.generate(
        [ims if len(ims) > 1 else ims[0] for ims in images],
        prompts,
        max_new_tokens=settings["max_new_tokens"],
        num_beams=settings["num_beams"],
        batch_size=len(records),
        logprobs=spec.kind != "text",  # object scores (COCO AP ranks by them)
    )
    categories = {name: k for k, name in dataset.categories.items()}
    rows = []
    for i, record, ims, text_prompt, result in zip(
        indices, records, images, prompts, results, strict=True
    ):
        row = {"index": i, "id": record.id, "prompt": text_prompt, "text": result.text}
        row.update(_score_row(pipe, spec, record, ims[0], result, categories))
        rows.append(row)
    return rows


def record_images(record, frames: int) -> list:
    """A record's images (PIL), a video among them as its `frames` sampled frames."""
    out = []
    for image in record.images:
        out += read_frames(image, frames) if is_video(image) else [load_image(image)]
    return out


def _score_row(pipe, spec: EvalTask, record, image, result, categories: dict) -> dict:
    if spec.kind == "text":
        answer = result.text.strip()
        known = spec.score is not None and record.answers  # test splits have no answers
        score = spec.score(answer, record) if known else None
        return {"answer": answer, "references": list(record.answers), "score": score}
    width, height = image.size
    record.width, record.height = record.width or width, record.height or height
    kind = spec.objects
    objects = pipe.read_objects(kind, result.text, width, height, result=result)
    if spec.kind == "refexp":
        return obj_tasks.refexp_row(pipe, kind, record, objects, width, height)
    return obj_tasks.coco_row(kind, record, objects, categories)


def aggregate(spec: EvalTask, rows: list[dict], dataset) -> dict:
    """The set's metrics (and, for CIDEr, each row's score)."""
    if spec.kind == "text":
        return spec.aggregate(rows, list(dataset))
    kind = spec.objects
    if spec.kind == "refexp":
        return obj_tasks.refexp_aggregate(kind, rows, list(dataset))
    return obj_tasks.coco_aggregate(kind, rows, dataset)


def _counts(spec: EvalTask, rows: list[dict], dataset) -> dict:
    counts = {"examples": len(rows)}
    if spec.kind == "text":
        counts["unscored"] = sum(r["score"] is None for r in rows)
    if spec.kind != "text":
        objects = [o for r in rows for o in r["objects"]]
        counts["objects_predicted"] = len(objects)
        counts["objects_invalid"] = sum(not o["valid"] for o in objects)
        counts["objects_true"] = sum(len(rec.objects) for rec in dataset)
    return counts
