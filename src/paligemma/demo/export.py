"""The embedded model's held-out scenes (demo/evaluate.py, `EVAL_SEED`) written out in the
formats people have, so that `paligemma eval` scores the demo model as it scores a real one:

    python -m paligemma.demo.export DIR [--scenes 200]

DIR/caption.jsonl, DIR/answer.jsonl   our JSONL (prefix, suffix): `--task exact`
DIR/captions.json                     COCO captions: `--task cococap`
DIR/vqa_questions.json + vqa_annotations.json, DIR/vqa/COCO_embedded_{id:012d}.jpg
                                      VQAv2's official files (ten equal answers per question):
                                      `--task vqav2`
DIR/detect.json, DIR/segment.json     COCO instances (boxes; masks as RLE): `--task coco-det`,
                                      `--task coco-seg`. Each image entry lists its scene's
                                      queries under "labels" (the prompt asks for those), and
                                      only the things a query names are annotated, with it as
                                      their category, as the demo's own evaluation counts them.
DIR/refs.json (+ segment.json)        RefCOCO refs: the segmentation scenes whose query names
                                      exactly one thing: `--task refcoco-seg`

Images are PNG (lossless: the model sees the scenes' exact pixels). The VQA images keep the
official `.jpg` names that the VQAv2 reader looks for, with PNG content (Pillow reads the
content, not the name).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..tasks.objects import mask_to_rle
from . import synthetic

EVAL_SEED = 90_210  # training seeds are (seed, step) pairs; this one is never used there
VQA_SUBTYPE = "embedded"


def held_out_scenes(kind: str, n: int, seed: int = EVAL_SEED, encode=None):
    """The first `n` held-out (scene, example) pairs of one task; `encode` as make_example."""
    rng = np.random.default_rng([seed, synthetic.KINDS.index(kind)])
    for _ in range(n):
        scene = synthetic.make_scene(rng)
        yield scene, synthetic.make_example(scene, kind, rng, encode)


def label_of(thing: synthetic.Thing, queries: list[str]) -> str | None:
    """The first query that names `thing` (its shape or colour + shape), else None."""
    return next((q for q in queries if q in (thing.shape, thing.name)), None)


def _no_codes(mask, box) -> list[int]:
    """Stands in for the mask VQ-VAE's encoder: the scenes and queries do not depend on it."""
    return [0] * 16


def _image(directory: Path, name: str, scene) -> dict:
    scene.image.save(directory / name)
    w, h = scene.size
    return {"file_name": name, "width": w, "height": h}


def _text_files(directory: Path, n: int, seed: int) -> dict[str, Path]:
    out = {}
    for kind in ("caption", "answer"):
        lines = []
        for i, (scene, e) in enumerate(held_out_scenes(kind, n, seed)):
            name = f"images/{kind}_{i:05d}.png"
            _image(directory, name, scene)
            lines.append(json.dumps({"image": name, "prefix": e["prefix"], "suffix": e["suffix"]}))
        out[kind] = directory / f"{kind}.jsonl"
        out[kind].write_text("\n".join(lines) + "\n")
    images = [{"id": i + 1, "file_name": f"images/caption_{i:05d}.png"} for i in range(n)]
    captions = [
        {"id": i + 1, "image_id": i + 1, "caption": json.loads(line)["suffix"]}
        for i, line in enumerate(out["caption"].read_text().splitlines())
    ]
    out["captions"] = directory / "captions.json"
    out["captions"].write_text(json.dumps({"images": images, "annotations": captions}))
    return out


def _vqa_files(directory: Path, n: int, seed: int) -> dict[str, Path]:
    (directory / "vqa").mkdir(exist_ok=True)
    questions, answers = [], []
    for i, (scene, e) in enumerate(held_out_scenes("answer", n, seed)):
        image_id, qid = i + 1, 1000 + i
        scene.image.save(directory / "vqa" / f"COCO_{VQA_SUBTYPE}_{image_id:012d}.jpg", "PNG")
        question = e["prefix"].removeprefix("answer en ")
        questions.append({"question_id": qid, "image_id": image_id, "question": question})
        ten = [{"answer": e["suffix"], "answer_id": k + 1} for k in range(10)]
        answers.append(
            {"question_id": qid, "image_id": image_id, "answers": ten, "answer_type": "other"}
        )
    files = {"questions": directory / "vqa_questions.json"}
    files["annotations"] = directory / "vqa_annotations.json"
    files["questions"].write_text(json.dumps({"data_subtype": VQA_SUBTYPE, "questions": questions}))
    files["annotations"].write_text(json.dumps({"annotations": answers}))
    return files


def _instances(directory: Path, kind: str, n: int, seed: int) -> tuple[dict, list]:
    """COCO instances of the `kind` scenes, and per image (image_id, query, annotation ids)."""
    images, annotations, queries = [], [], []
    found: list[tuple[int, str, list[int]]] = []
    encode = _no_codes if kind == "segment" else None
    for i, (scene, e) in enumerate(held_out_scenes(kind, n, seed, encode)):
        entry = {"id": i + 1, **_image(directory, f"images/{kind}_{i:05d}.png", scene)}
        images.append(entry | {"labels": e["queries"]})
        queries += [q for q in e["queries"] if q not in queries]
        ids = []
        for t in scene.things:
            label = label_of(t, e["queries"])
            if label is None:
                continue
            x0, y0, x1, y1 = t.box
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "label": label}
            ann |= {"bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
            ann["area"] = int(t.mask.sum()) if kind == "segment" else (x1 - x0) * (y1 - y0)
            if kind == "segment":
                ann["segmentation"] = mask_to_rle(t.mask, compressed=True)
            annotations.append(ann)
            ids.append(ann["id"])
        found.append((i + 1, e["queries"][0], ids))
    ids = {q: k + 1 for k, q in enumerate(sorted(queries))}
    for ann in annotations:
        ann["category_id"] = ids[ann.pop("label")]
    categories = [{"id": k, "name": q} for q, k in ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories}, found


def export_scenes(directory: str | Path, n: int = 200, seed: int = EVAL_SEED) -> dict[str, Path]:
    """Write the first `n` held-out scenes per task under `directory` (see the module
    docstring); returns the files by name."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    files = _text_files(directory, n, seed)
    files |= {f"vqa_{k}": v for k, v in _vqa_files(directory, n, seed).items()}
    for kind in ("detect", "segment"):
        coco, found = _instances(directory, kind, n, seed)
        files[kind] = directory / f"{kind}.json"
        files[kind].write_text(json.dumps(coco))
    refs = [
        {"ref_id": image_id, "image_id": image_id, "ann_id": ids[0], "split": "val"}
        | {"sentences": [{"sent": query, "sent_id": image_id}]}
        for image_id, query, ids in found
        if len(ids) == 1
    ]
    category = {a["id"]: a["category_id"] for a in coco["annotations"]}
    for ref in refs:
        ref["category_id"] = category[ref["ann_id"]]
    files["refs"] = directory / "refs.json"
    files["refs"].write_text(json.dumps(refs))
    return files


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m paligemma.demo.export", description=__doc__)
    p.add_argument("directory")
    p.add_argument("--scenes", type=int, default=200, help="held-out scenes per task")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    args = p.parse_args(argv)
    for name, path in export_scenes(args.directory, args.scenes, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
