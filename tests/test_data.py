"""Dataset readers (paligemma.data): each format from small files written here, each kind of
malformed record as one clear error naming it, the converter's examples, `paligemma data
convert` read back by fine-tuning's reader, and fine-tuning straight from COCO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paligemma.data import DataFormatError, read_dataset, to_examples
from paligemma.tasks.objects import mask_to_rle, parse_objects

W, H = 40, 30


def _image(path: Path, color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), color).save(path)
    return path


def _coco(tmp_path: Path, **change) -> Path:
    """A COCO instances file: two images; a polygon cat, an RLE dog, a crowd dog, a box-only
    bird on image 1; nothing on image 2."""
    for name in ("a.png", "b.png"):
        _image(tmp_path / "img" / name)
    dog = np.zeros((H, W), bool)
    dog[5:15, 20:35] = True
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},
        ],
        "categories": [
            {"id": 3, "name": "cat"},
            {"id": 5, "name": "dog"},
            {"id": 7, "name": "bird"},
            {"id": 9, "name": "cow"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 4, 10, 12], "iscrowd": 0,
             "segmentation": [[2, 4, 12, 4, 12, 16, 2, 16]]},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [20, 5, 15, 10], "iscrowd": 0,
             "segmentation": mask_to_rle(dog)},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1,
             "segmentation": mask_to_rle(dog)},
            {"id": 4, "image_id": 1, "category_id": 7, "bbox": [30, 20, 6, 6], "iscrowd": 0},
        ],
    }  # fmt: skip
    for key, value in change.items():
        section, index, field = key.split("__")
        data[section][int(index)][field] = value
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_instances_boxes_polygon_and_rle_masks(tmp_path):
    ds = read_dataset("coco-instances", _coco(tmp_path), images=tmp_path / "img")
    assert ds.format == "coco-instances" and ds.categories == {
        3: "cat",
        5: "dog",
        7: "bird",
        9: "cow",
    }
    assert ds.coco["images"][0]["id"] == 1
    a, b = ds
    assert (a.id, a.width, a.height, a.images) == (1, W, H, (tmp_path / "img" / "a.png",))
    assert b.objects == []
    cat, dog, crowd, bird = a.objects
    assert cat.box == (2, 4, 12, 16) and cat.category_id == 3 and not cat.iscrowd
    assert cat.mask.shape == (H, W) and cat.mask[10, 7] and not cat.mask[20, 30]
    assert 100 <= cat.mask.sum() <= 150  # the 10 x 12 polygon
    expected = np.zeros((H, W), bool)
    expected[5:15, 20:35] = True
    assert np.array_equal(dog.mask, expected)
    assert crowd.iscrowd and bird.mask is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"annotations__1__image_id": 99}, "annotations record 1: image_id 99 is not in images"),
        ({"annotations__0__category_id": 4}, "annotations record 0: category_id 4"),
        ({"annotations__2__bbox": [1, 2, 3]}, 'annotations record 2: "bbox" must be'),
        ({"annotations__0__segmentation": [[1, 2, 3]]}, "annotations record 0: a polygon"),
        ({"annotations__1__segmentation": {"size": [3, 3], "counts": [9]}}, "record 1: RLE size"),
        ({"images__1__file_name": 7}, 'images record 1: "file_name" must be str'),
        ({"images__0__id": "x"}, 'images record 0: "id" must be int'),
    ],
)
def test_coco_instances_errors_name_the_record(tmp_path, change, message):
    path = _coco(tmp_path, **change)
    with pytest.raises(DataFormatError, match=str(path).replace("\\", "\\\\")) as e:
        read_dataset("coco-instances", path)
    assert message in str(e.value)


def test_not_json_names_the_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"images": [\n  {"id": 1,\n  oops}')
    with pytest.raises(DataFormatError, match=r"x.json:line 3: not JSON"):
        read_dataset("coco-instances", path)


def test_detect_examples_order_cap_and_negatives(tmp_path):
    ds = read_dataset("coco-instances", _coco(tmp_path), images=tmp_path / "img")
    [ex] = to_examples(ds, "detect", seed=1)  # image 2 has no object: no example
    assert ex["image"] == tmp_path / "img" / "a.png" and ex["id"] == 1
    labels = ex["prefix"].removeprefix("detect ").split(" ; ")
    assert sorted(labels) == ["bird", "cat", "dog"]  # the crowd dog is not a target
    found = parse_objects(ex["suffix"], W, H)
    assert sorted(o.label for o in found) == ["bird", "cat", "dog"]
    cat = next(o for o in found if o.label == "cat")
    assert np.allclose(np.multiply(cat.box_normalized, (W, H, W, H)), (2, 4, 12, 16), atol=0.05)
    orders = {tuple(o.label for o in parse_objects(e["suffix"], W, H))
              for s in range(8) for e in to_examples(ds, "detect", seed=s)}  # fmt: skip
    assert len(orders) > 1  # random order, seeded
    assert to_examples(ds, "detect", seed=3) == to_examples(ds, "detect", seed=3)
    [capped] = to_examples(ds, "detect", max_objects=1, seed=2)
    [kept] = parse_objects(capped["suffix"], W, H)
    assert capped["prefix"] == f"detect {kept.label}"
    [neg] = to_examples(ds, "detect", negatives=True, max_objects=1, seed=2)
    labels = neg["prefix"].removeprefix("detect ").split(" ; ")
    assert len(labels) == 2 and kept.label in labels
    assert set(labels) - {kept.label} <= {"cow", "bird", "cat"}  # never the crowd-only dog


def test_segment_examples_codes_from_the_mask_vae(tmp_path):
    from paligemma.checkpoints.assets import find_mask_vae
    from paligemma.data.examples import EMBEDDED_ASSETS
    from paligemma.tasks.vqvae import load_mask_vae, mask_to_codes

    ds = read_dataset("coco-instances", _coco(tmp_path), images=tmp_path / "img")
    with pytest.raises(
        DataFormatError, match=r"instances\.json: images record 0: an object of 'bird' has no mask"
    ):
        to_examples(ds, "segment")
    a = ds[0]
    a.objects = a.objects[:2]
    [ex] = to_examples(ds, "segment", seed=0)
    found = parse_objects(ex["suffix"], W, H)
    assert sorted(o.label for o in found) == ["cat", "dog"]
    vae = load_mask_vae(find_mask_vae(EMBEDDED_ASSETS))
    dog = next(o for o in found if o.label == "dog")
    assert list(dog.seg_codes) == mask_to_codes(vae, a.objects[1].mask, (20, 5, 35, 15))


def _captions(tmp_path: Path) -> Path:
    _image(tmp_path / "a.png")
    data = {
        "images": [{"id": 4, "file_name": "a.png", "width": W, "height": H}],
        "annotations": [
            {"id": 1, "image_id": 4, "caption": "A red square. "},
            {"id": 2, "image_id": 4, "caption": "a red box"},
        ],
    }
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_captions(tmp_path):
    [rec] = read_dataset("coco-captions", _captions(tmp_path))
    assert rec.id == 4 and rec.answers == ["A red square.", "a red box"]
    assert rec.images == (tmp_path / "a.png",)
    examples = to_examples([rec], "caption")
    assert [(e["prefix"], e["suffix"]) for e in examples] == [
        ("caption en", "A red square."),
        ("caption en", "a red box"),
    ]
    bad = json.loads(_captions(tmp_path).read_text())
    bad["annotations"][1]["caption"] = None
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataFormatError, match=r'bad\.json: annotations record 1: "caption" must'):
        read_dataset("coco-captions", tmp_path / "bad.json")


def _vqa(tmp_path: Path) -> tuple[Path, Path]:
    _image(tmp_path / "coco" / "COCO_val2014_000000000042.jpg")
    questions = {
        "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "What color?", "question_id": 420}],
    }
    answers = ["red"] * 6 + ["maroon"] * 4
    annotations = {
        "annotations": [
            {"question_id": 420, "image_id": 42, "answer_type": "other",
             "answers": [{"answer": a, "answer_id": i} for i, a in enumerate(answers)]},
        ]
    }  # fmt: skip
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return tmp_path / "q.json", tmp_path / "a.json"


def test_vqav2_official_files(tmp_path):
    q, a = _vqa(tmp_path)
    [rec] = read_dataset("vqav2", q, annotations=a, images=tmp_path / "coco")
    assert rec.id == 420 and rec.prompt == "What color?" and len(rec.answers) == 10
    assert rec.images == (tmp_path / "coco" / "COCO_val2014_000000000042.jpg",)
    assert rec.meta["image_id"] == 42 and rec.meta["answer_type"] == "other"
    [ex] = to_examples([rec], "answer")
    assert (ex["prefix"], ex["suffix"]) == ("answer en What color?", "red")
    [unanswered] = read_dataset("vqav2", q)  # test questions: no annotations
    assert unanswered.answers == []
    data = json.loads(q.read_text())
    del data["data_subtype"]
    q.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r'q\.json: missing "data_subtype"'):
        read_dataset("vqav2", q)
    q, a = _vqa(tmp_path)
    data = json.loads(a.read_text())
    data["annotations"][0]["answers"][3] = {"answer": 3}
    a.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r'a\.json: annotations record 0 answer 3: "answer"'):
        read_dataset("vqav2", q, annotations=a)


def test_refcoco_refs_json_with_instances(tmp_path):
    instances = _coco(tmp_path)
    refs = [
        {"ref_id": 8, "image_id": 1, "ann_id": 2, "category_id": 5, "split": "val",
         "sentences": [{"sent": "the dog on the right", "sent_id": 80}, {"sent": "brown dog"}]},
        {"ref_id": 9, "image_id": 1, "ann_id": 1, "category_id": 3, "split": "train",
         "sentences": [{"sent": "left cat", "sent_id": 90}]},
    ]  # fmt: skip
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    ds = read_dataset(
        "refcoco", tmp_path / "refs.json", annotations=instances, images=tmp_path / "img"
    )
    assert [r.id for r in ds] == [80, "8/1", 90]
    assert [r.prompt for r in ds] == ["the dog on the right", "brown dog", "left cat"]
    first = ds[0]
    assert first.objects[0].box == (20, 5, 35, 15) and first.objects[0].mask.sum() == 150
    assert first.meta == {
        "ref_id": 8, "ann_id": 2, "image_id": 1, "split": "val", "category": "dog"
    }  # fmt: skip
    val = read_dataset("refcoco", tmp_path / "refs.json", annotations=instances, split="val")
    assert len(val) == 2
    [ex] = to_examples(val[:1], "detect")
    assert ex["prefix"] == "detect the dog on the right"
    assert ex["suffix"].endswith("> the dog on the right") and ex["suffix"].count("<loc") == 4
    [seg] = to_examples(val[:1], "segment")
    assert seg["prefix"] == "segment the dog on the right" and seg["suffix"].count("<seg") == 16
    (tmp_path / "refs(unc).p").write_bytes(b"\x80\x04.")
    with pytest.raises(DataFormatError, match="is a pickle, which we never load"):
        read_dataset("refcoco", tmp_path / "refs(unc).p", annotations=instances)
    with pytest.raises(DataFormatError, match="need the COCO instances file"):
        read_dataset("refcoco", tmp_path / "refs.json")
    refs[1]["ann_id"] = 77
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    with pytest.raises(DataFormatError, match=r"refs\.json: record 1: ann_id 77 is not"):
        read_dataset("refcoco", tmp_path / "refs.json", annotations=instances)


def _png_bytes(color=(10, 200, 10)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (W, H), color).save(buf, format="PNG")
    return buf.getvalue()


def test_refcoco_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "question_id": ["q1"],
        "image": [{"bytes": _png_bytes(), "path": "x.png"}],
        "question": ["Please describe the region."],
        "answer": [["green thing", "the left one"]],
        "bbox": [[2.0, 4.0, 10.0, 12.0]],
        "segmentation": [[2.0, 4.0, 12.0, 4.0, 12.0, 16.0, 2.0, 16.0]],
        "iscrowd": [0],
    }
    pq.write_table(pa.table(rows), tmp_path / "val.parquet")
    ds = read_dataset("refcoco", tmp_path / "val.parquet")
    assert [r.id for r in ds] == ["q1/0", "q1/1"] and ds[1].prompt == "the left one"
    assert isinstance(ds[0].images[0], bytes) and (ds[0].width, ds[0].height) == (W, H)
    assert ds[0].objects[0].box == (2, 4, 12, 16) and ds[0].objects[0].mask[10, 7]
    rows["bbox"] = [[1.0, 2.0]]
    pq.write_table(pa.table(rows), tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r'bad\.parquet: record 0: "bbox" must be'):
        read_dataset("refcoco", tmp_path / "bad.parquet")


def test_folder_with_csv_and_jsonl(tmp_path):
    _image(tmp_path / "pics" / "one.png")
    (tmp_path / "pics" / "data.csv").write_text(
        'image,question,answer\none.png,"How many, roughly?",two\n'
    )
    [rec] = read_dataset("folder", tmp_path / "pics")
    assert rec.images == (tmp_path / "pics" / "one.png",) and rec.prompt == "How many, roughly?"
    assert to_examples([rec], "answer")[0]["suffix"] == "two"
    (tmp_path / "pics" / "data.csv").write_text("image,caption\none.png,a cat\none.png\n")
    with pytest.raises(DataFormatError, match=r"data\.csv:line 3: 2 columns"):
        read_dataset("folder", tmp_path / "pics")
    (tmp_path / "pics" / "data.csv").unlink()
    row = {"file_name": "one.png", "question": "colour?", "answers": ["red", "dark red", "red"]}
    (tmp_path / "pics" / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    [rec] = read_dataset("folder", tmp_path / "pics")  # Hugging Face imagefolder layout
    assert rec.images == (tmp_path / "pics" / "one.png",) and len(rec.answers) == 3
    assert to_examples([rec], "answer")[0]["suffix"] == "red"
    table = tmp_path / "train.jsonl"
    table.write_text(
        json.dumps({"image": "pics/one.png", "prefix": "caption en", "suffix": "red"})
        + "\n\n"
        + json.dumps({"image": "pics/one.png", "caption": "x"})
        + "\n"
    )
    first, second = read_dataset("jsonl", table)
    assert first.prompt == "caption en" and first.answers == ["red"] and second.answers == ["x"]
    assert to_examples([first], "prefix")[0] | {"id": 0} == {
        "image": tmp_path / "pics/one.png", "prefix": "caption en", "suffix": "red", "id": 0
    }  # fmt: skip
    table.write_text(table.read_text() + '{"image": "pics/one.png", "prefix": "x"}\n')
    with pytest.raises(DataFormatError, match=r'train\.jsonl:line 4: empty or missing "suffix"'):
        read_dataset("jsonl", table)
    table.write_text('{"image": 3, "caption": "x"}\n')
    with pytest.raises(DataFormatError, match=r"train\.jsonl:line 1: an image must be a path"):
        read_dataset("jsonl", table)


def test_hf_saved_dataset_and_parquet(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    _image(tmp_path / "disk.png")
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"),
         "answers": datasets.Sequence(datasets.Value("string"))}
    )  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {
            "image": [str(tmp_path / "disk.png"), {"bytes": _png_bytes(), "path": None}],
            "question": ["what?", "which?"],
            "answers": [["a", "b", "a"], ["c"]],
        },
        features=features,
    )
    datasets.DatasetDict({"validation": ds}).save_to_disk(tmp_path / "saved")
    first, second = read_dataset("hf", tmp_path / "saved")
    assert isinstance(first.images[0], bytes) and second.prompt == "which?"
    assert to_examples([first], "answer")[0]["suffix"] == "a"
    assert "saved/validation: record 1" in second.where
    images = [{"bytes": _png_bytes(), "path": None}, {"bytes": None, "path": "p.png"}]
    pq.write_table(
        pa.table({"image": images, "caption": ["green", None]}), tmp_path / "caps.parquet"
    )
    with pytest.raises(
        DataFormatError, match=r'caps\.parquet: record 1: empty or missing "caption"'
    ):
        read_dataset("hf", tmp_path / "caps.parquet")
    [green] = read_dataset("hf", tmp_path / "caps.parquet", limit=1)
    assert green.answers == ["green"] and green.images[0].startswith(b"\x89PNG")


def test_data_convert_is_read_back_by_finetunes_reader(tmp_path, embedded_pipe, capsys):
    from paligemma.cli import main
    from paligemma.train.data import read_examples

    coco = _coco(tmp_path)
    out = tmp_path / "out" / "train.jsonl"
    args = ["data", "convert", str(coco), "--format", "coco-instances", "--images"]
    assert main([*args, str(tmp_path / "img"), "--out", str(out), "--seed", "4"]) == 0
    assert "1 detect examples from 2 records" in capsys.readouterr().err
    [example] = read_examples(out, embedded_pipe, None, False)
    assert example.images == (tmp_path / "img" / "a.png",)
    ds = read_dataset("coco-instances", coco, images=tmp_path / "img")
    [expected] = to_examples(ds, "detect", seed=4)
    assert (example.prefix, example.suffix) == (expected["prefix"], expected["suffix"])
    # image bytes (parquet) are written out beside --out, once per distinct image
    import pyarrow as pa
    import pyarrow.parquet as pq

    png = {"bytes": _png_bytes(), "path": None}
    table = {"image": [png, png], "prefix": ["caption en"] * 2, "suffix": ["green", "lime"]}
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    out = tmp_path / "pq" / "train.jsonl"
    assert (
        main(["data", "convert", str(tmp_path / "t.parquet"), "--format", "hf", "--out", str(out)])
        == 0
    )
    examples = read_examples(out, embedded_pipe, None, False)
    assert [e.suffix for e in examples] == ["green", "lime"]
    assert examples[0].images == examples[1].images
    assert examples[0].images[0].parent == tmp_path / "pq" / "train_images"
    assert main(["data", "convert", str(coco), "--format", "vqav2", "--out", str(out)]) == 1
    assert 'instances.json: missing "data_subtype"' in capsys.readouterr().err


def test_finetune_straight_from_coco_instances(tmp_path, capsys):
    from paligemma.cli import main

    coco = _coco(tmp_path)
    out = tmp_path / "run"
    args = ["finetune", "--data", str(coco), "--data-format", "coco-instances"]
    run = ["--steps", "2", "--batch-size", "1", "--save-every", "2"]  # task: detect (default)
    assert main([*args, "--images", str(tmp_path / "img"), "--out", str(out), *run]) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    [line] = (out / "data" / "train.jsonl").read_text().splitlines()
    assert json.loads(line)["prefix"].startswith("detect ")
    assert json.loads(line)["suffix"].count("<loc") == 12  # the cat, the dog and the bird


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch):
    import builtins

    from paligemma.data import MissingExtra

    real = builtins.__import__

    def no_pycocotools(name, *args, **kwargs):
        if name.startswith("pycocotools"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pycocotools)
    monkeypatch.delitem(__import__("sys").modules, "pycocotools.mask", raising=False)
    ds = read_dataset("coco-instances", _coco(tmp_path))  # boxes need no extra
    assert ds[0].objects[0].box == (2, 4, 12, 16)
    with pytest.raises(MissingExtra, match=r"pip install 'paligemma\[coco\]'"):
        _ = ds[0].objects[0].mask


def test_hf_splits_and_unknown_format(tmp_path):
    import datasets

    one = datasets.Dataset.from_dict({"image": ["a.png"], "caption": ["x"]})
    datasets.DatasetDict({"val": one, "test": one}).save_to_disk(tmp_path / "two")
    with pytest.raises(DataFormatError, match=r"choose a split with --split \(val, test\)"):
        read_dataset("hf", tmp_path / "two")
    [rec] = read_dataset("hf", tmp_path / "two", split="test")
    assert rec.images == (tmp_path / "two" / "a.png",) and rec.answers == ["x"]
    with pytest.raises(DataFormatError, match="unknown data format 'yolo'"):
        read_dataset("yolo", tmp_path)
