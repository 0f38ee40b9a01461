"""The synthetic scene generator: determinism, exact boxes and masks, and task texts that agree
with the scene."""

from __future__ import annotations

import numpy as np
import pytest

from paligemma.demo import synthetic
from paligemma.tasks.objects import parse_objects


def scenes(n: int, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    return [synthetic.make_scene(rng, **kw) for _ in range(n)]


def test_same_seed_same_scene():
    a, b = scenes(5, 3), scenes(5, 3)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert [(t.name, t.box) for t in x.things] == [(t.name, t.box) for t in y.things]
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(scenes(1, 4)[0].image))


@pytest.mark.parametrize("antialias", [False, True])
def test_boxes_masks_sizes_and_order(antialias):
    for scene in scenes(60, 1, antialias=antialias):
        w, h = scene.size
        assert 1 <= len(scene.things) <= 3
        union = np.zeros((h, w), int)
        for t in scene.things:
            assert t.mask.shape == (h, w) and t.mask.dtype == bool
            ys, xs = np.nonzero(t.mask)
            assert t.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # exact extent
            side = max(t.box[2] - t.box[0], t.box[3] - t.box[1])
            assert 0.1 * min(w, h) - 2 <= side <= 0.5 * min(w, h) + 2
            assert t.shape in synthetic.SHAPES and t.colour in synthetic.COLOURS
            union += t.mask
        assert union.max() <= 1  # objects never overlap
        xs = [t.box[0] for t in scene.things]
        assert xs == sorted(xs)  # left to right


def test_objects_have_their_colour_and_aliased_scenes_are_hard_edged():
    scene = scenes(1, 5, num_things=1, antialias=False)[0]
    t = scene.things[0]
    pixels = np.asarray(scene.image)[t.mask].astype(int)
    target = np.array(synthetic.COLOURS[t.colour])
    assert np.abs(pixels - target).max() <= 20  # the colour jitter, nothing blended


def test_sizes_and_aspect_ratios_vary():
    sizes = {s.size for s in scenes(40, 2)}
    assert len(sizes) > 20 and any(w != h for w, h in sizes)
    assert scenes(1, 2, size=(300, 120))[0].size == (300, 120)


def test_caption_lists_objects_left_to_right():
    for scene in scenes(30, 6):
        words = synthetic.caption(scene).replace(",", "").replace(" and ", " ").split()
        names = [" ".join(words[i + 1 : i + 3]) for i in range(0, len(words), 3)]
        assert names == [t.name for t in scene.things]
        assert all(w == "a" for w in words[::3])


def test_answers_agree_with_the_scene():
    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(300):
        scene = synthetic.make_scene(rng)
        q, a = synthetic.question(rng, scene)
        things = scene.things
        if q == "how many shapes are there?":
            assert a == str(len(things))
        elif q.startswith("how many") and q.split()[3] == "shapes":
            assert a == str(sum(t.colour == q.split()[2] for t in things))
        elif q.startswith("how many"):
            assert a == str(sum(t.shape + "s" == q.split()[2] for t in things))
        elif q.startswith("what color is the"):
            shape = q.split()[-1].rstrip("?")
            assert [t.colour for t in things if t.shape == shape] == [a]
        elif q.startswith("is there a"):
            name = q[len("is there a ") : -1]
            assert a == ("yes" if any(t.name == name for t in things) else "no")
        else:
            name = q[len("is the ") : q.index(" on the")]
            (t,) = [t for t in things if t.name == name]
            assert a == ("left" if t.centre[0] < scene.size[0] / 2 else "right")
        seen.add(q.split()[0] + q.split()[1])
    assert len(seen) >= 4  # every kind of question is asked


def test_detect_and_segment_targets_parse_back_to_the_boxes():
    rng = np.random.default_rng(8)
    codes = lambda mask, box: list(range(16))  # noqa: E731
    for _ in range(100):
        scene = synthetic.make_scene(rng)
        w, h = scene.size
        for kind in ("detect", "segment"):
            ex = synthetic.make_example(scene, kind, rng, codes)
            assert ex["prefix"] == f"{kind} " + " ; ".join(ex["queries"])
            parsed = parse_objects(ex["suffix"], w, h)
            expected = [
                t for t in scene.things if any(q in (t.shape, t.name) for q in ex["queries"])
            ]
            assert len(parsed) == len(expected)
            for obj, t in zip(parsed, expected, strict=True):
                assert obj.label in (t.shape, t.name)
                assert np.abs(np.array(obj.box) - np.array(t.box)).max() <= 1
                assert (obj.seg_codes is not None) == (kind == "segment")


def test_segment_needs_the_encoder_and_unknown_tasks_fail():
    scene = scenes(1)[0]
    with pytest.raises(ValueError, match="VQ-VAE"):
        synthetic.make_example(scene, "segment", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown task"):
        synthetic.make_example(scene, "count", np.random.default_rng(0))


def test_patch_targets_mark_objects_and_their_boxes():
    scene = scenes(1, 9, num_things=1, size=(96, 96))[0]
    classes, boxes = synthetic.patch_targets(scene, 8)
    assert classes.shape == (64,) and boxes.shape == (64, 4)
    t = scene.things[0]
    expected = 1 + synthetic.SHAPES.index(t.shape) * 4 + synthetic.COLOUR_NAMES.index(t.colour)
    assert set(classes.tolist()) <= {0, expected}
    centres = (np.arange(8) + 0.5) * 12
    inside = t.mask[np.ix_(centres.astype(int), centres.astype(int))].reshape(-1)
    assert np.array_equal(classes > 0, inside)
    assert np.allclose(boxes[inside], np.array(t.box) / 96)
    assert (boxes[~inside] == 0).all()
