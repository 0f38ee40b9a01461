"""Parsing detect/segment answers, the training-side encoders, and COCO conversion."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import paligemma
from paligemma import loc_string, objects_to_suffix, parse_objects, seg_string

W, H = 640, 480
SEGS = "".join(f"<seg{c:03d}>" for c in range(16))


def test_real_shaped_detection_output():
    text = "<loc0051><loc0309><loc0708><loc0646> shoe ; <loc0100><loc0200><loc1023><loc1023> cat"
    objs = parse_objects(text, W, H)
    assert objs.text == text and len(objs) == 2
    shoe, cat = objs
    assert shoe.label == "shoe" and shoe.valid and shoe.seg_codes is None
    assert shoe.locs == (51, 309, 708, 646)
    assert shoe.box == (
        int(309 / 1023 * W),
        int(51 / 1023 * H),
        int(646 / 1023 * W),
        int(708 / 1023 * H),
    )
    assert cat.box[2:] == (W, H)  # <loc1023> is the image edge in big_vision's convention
    assert cat.box_normalized == pytest.approx((200 / 1023, 100 / 1023, 1.0, 1.0))


def test_hf_demo_convention():
    obj = parse_objects("<loc0000><loc0000><loc1023><loc1023> all", W, H, convention="hf_demo")[0]
    assert obj.box == (0, 0, round(1023 / 1024 * W), round(1023 / 1024 * H))
    with pytest.raises(ValueError, match="convention"):
        parse_objects("", W, H, convention="yolo")


def test_segmentation_output():
    first, second = "<loc0100><loc0100><loc0500><loc0600>", "<loc0600><loc0100><loc0900><loc0300>"
    text = f"{first}{SEGS} cat ; {second}{SEGS}"
    cat, unlabelled = parse_objects(text, W, H)
    assert cat.label == "cat" and cat.seg_codes == list(range(16)) and cat.valid
    assert unlabelled.label is None and unlabelled.valid and unlabelled.seg_codes == list(range(16))


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("Sure! <loc0100><loc0100><loc0500><loc0600> cat ; and more", [("cat", True, None)]),
        ("<loc0100><loc0100><loc0500> cat", [("cat", False, "truncated box")]),
        ("<loc0100><loc0100><loc0500><loc0600><seg001><seg002>", [(None, False, "2 segmentation")]),
        ("<loc0500><loc0100><loc0100><loc0600> upside down", [("upside down", False, "unordered")]),
        ("<loc0100><loc0100><loc0100><loc0600> flat", [("flat", False, "unordered")]),
        ("<loc0100><loc0100><loc0101><loc0101> tiny", [("tiny", False, "empty")]),
        ("<loc0100><loc0100><loc5000><loc0600> far", [("far", False, "out of range")]),
        (
            "<loc0100><loc0100><loc0500><loc0600>" + SEGS.replace("<seg015>", "<seg900>"),
            [(None, False, "out of range")],
        ),
        (
            "<loc0001><loc0002><loc0500><loc0600> a<loc0010><loc0020><loc0500><loc0600> b",
            [("a", True, None), ("b", True, None)],
        ),  # objects not separated by ";"
        (
            "<loc0001><loc0002><loc0500><loc0600><loc0010><loc0020><loc0500><loc0600>",
            [(None, True, None), (None, True, None)],
        ),  # two boxes without labels
        ("just words, no objects", []),
        ("", []),
        ("<seg001> stray code", [("stray code", False, "truncated box")]),
        ("<loc0100><loc0100><loc0500><loc0600>  padded label   ;", [("padded label", True, None)]),
    ],
)
def test_malformed_outputs_never_crash(text, expect):
    objs = parse_objects(text, 100, 100)
    got = [(o.label, o.valid, o.problem) for o in objs]
    assert len(got) == len(expect), got
    for (label, valid, problem), (want_label, want_valid, want_problem) in zip(
        got, expect, strict=True
    ):
        assert (label, valid) == (want_label, want_valid)
        assert (problem is None) if want_problem is None else (want_problem in problem)


def test_encoders():
    assert loc_string((0, 0, W, H), W, H) == "<loc0000><loc0000><loc1023><loc1023>"
    assert loc_string((64, 48, 320, 240), W, H) == "<loc0102><loc0102><loc0512><loc0512>"  # y first
    with pytest.raises(ValueError):
        loc_string((10, 10, 10, 20), W, H)
    assert seg_string([0] * 15 + [127]).endswith("<seg127>")
    with pytest.raises(ValueError):
        seg_string([0] * 15)
    suffix = objects_to_suffix(
        [
            {"box": (64, 48, 320, 240), "label": "cat"},
            {"box": (0, 0, 100, 100), "label": "dog", "seg_codes": list(range(16))},
        ],
        W,
        H,
    )
    assert (
        suffix
        == "<loc0102><loc0102><loc0512><loc0512> cat ; <loc0000><loc0000><loc0213><loc0160>"
        + SEGS
        + " dog"
    )
    objs = parse_objects(suffix, W, H)
    assert [o.label for o in objs] == ["cat", "dog"] and all(o.valid for o in objs)


def test_rle_round_trip_and_coco():
    rng = np.random.RandomState(0)
    for mask in (rng.rand(7, 5) > 0.5, np.ones((3, 4), bool), np.zeros((2, 2), bool)):
        rle = paligemma.mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size
        assert np.array_equal(paligemma.rle_to_mask(rle), mask)
    objs = parse_objects(
        "<loc0000><loc0000><loc0511><loc0511> cat ; <loc0010><loc0000><loc0500> x", 100, 100
    )
    objs[0].mask = np.zeros((100, 100), bool)
    objs[0].mask[:10, :20] = True
    (ann,) = objs.to_coco(image_id=7)  # the truncated second object is left out
    assert ann["bbox"] == [0, 0, 49, 49] and ann["image_id"] == 7 and ann["area"] == 200
    assert np.array_equal(paligemma.rle_to_mask(ann["segmentation"]), objs[0].mask)


sizes = st.integers(min_value=16, max_value=4000)


@st.composite
def boxes(draw):
    w, h = draw(sizes), draw(sizes)
    bw, bh = max(2, w * 3 // 1023 + 1), max(2, h * 3 // 1023 + 1)  # at least ~3 bins wide
    x0 = draw(st.integers(0, w - bw))
    y0 = draw(st.integers(0, h - bh))
    x1 = draw(st.integers(x0 + bw, w))
    y1 = draw(st.integers(y0 + bh, h))
    return (x0, y0, x1, y1), w, h


@settings(max_examples=300, deadline=None)
@given(boxes(), st.sampled_from(["cat", "red square", "a b c"]))
def test_encode_parse_round_trip_within_one_bin(case, label):
    box, w, h = case
    (obj,) = parse_objects(loc_string(box, w, h) + " " + label, w, h)
    assert obj.valid and obj.label == label
    truth = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
    for got, want in zip(obj.box_normalized, truth, strict=True):
        assert abs(got - want) <= 1 / 1023
    for got, want, size in zip(obj.box, box, (w, h, w, h), strict=True):
        assert abs(got - want) <= size / 1023 + 1  # one bin, plus the evaluator's truncation


PIECES = [
    "<loc0001>",
    "<loc0512>",
    "<loc1023>",
    "<loc9999>",
    "<seg005>",
    "<seg127>",
    "<seg999>",
    " ; ",
    ";",
    " cat",
    "<loc",
    "seg>",
    "\n",
    " ",
    "<image>",
    "<eos>",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=40), sizes, sizes)
def test_parser_never_raises(parts, w, h):
    for obj in parse_objects("".join(parts), w, h):
        assert isinstance(obj.valid, bool)
        if obj.valid:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert obj.seg_codes is None or len(obj.seg_codes) == 16
        else:
            assert obj.problem
