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
