"""Seeded synthetic scenes for the embedded demo model: coloured shapes with exact boxes and masks,
and the four tasks rendered in PaliGemma's own prompt formats.

A scene holds 1-3 non-overlapping objects, each a circle, square or triangle in red, green, blue or
yellow, 10-50% of the image's shorter side, over a white, plain-coloured or textured background.
Images come at many sizes and aspect ratios, drawn with or without anti-aliasing, so a model
trained on them also reads shapes drawn by other programs. Boxes are the exact pixel extent of
each mask; objects are listed left to right (by box x_min), the order every target text uses.

    scene = make_scene(np.random.default_rng(0))
    ex = make_example(scene, "detect", rng)   # {"kind", "prefix", "suffix", "things"}

Everything here is numpy + PIL; `make_example(..., encode=)` takes the mask VQ-VAE encoder as a
function so this module stays free of the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..tasks.objects import loc_string, seg_string

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 35, 35),
    "green": (35, 165, 60),
    "blue": (35, 75, 225),
    "yellow": (240, 205, 25),
}
COLOUR_NAMES = tuple(COLOURS)
KINDS = ("caption", "answer", "detect", "segment")
NUM_PATCH_CLASSES = 1 + len(SHAPES) * len(COLOURS)  # background + shape x colour
NUMBERS = ("0", "1", "2", "3")


@dataclass
class Thing:
    shape: str
    colour: str
    box: tuple[int, int, int, int]  # x_min, y_min, x_max, y_max in pixels (max exclusive)
    mask: np.ndarray  # bool[H, W]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass
class Scene:
    image: Image.Image  # RGB
    things: list[Thing]  # left to right

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size  # (width, height)


# ---------------------------------------------------------------------------------------------
# Drawing


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """uint8[H, W, 3]: white, a plain colour, or a light texture (noise, stripes, checks, ramp)."""
    kind = rng.choice(["white", "plain", "dark", "texture"], p=[0.35, 0.25, 0.1, 0.3])
    if kind == "white":
        return np.full((h, w, 3), 255, np.uint8)
    if kind == "dark":  # a grey, far from every shape colour
        return np.full((h, w, 3), rng.integers(20, 90), np.uint8)
    light = lambda: rng.integers(175, 256, size=3)  # noqa: E731
    if kind == "plain":
        return np.broadcast_to(light(), (h, w, 3)).astype(np.uint8)
    a, b = light(), light()
    yy, xx = np.mgrid[0:h, 0:w]
    pattern = rng.choice(["noise", "stripes", "checks", "ramp"])
    if pattern == "noise":
        img = a + rng.normal(0, 12, size=(h, w, 3))
    elif pattern == "ramp":
        t = (xx if rng.random() < 0.5 else yy) / max(w, h)
        img = a * (1 - t[..., None]) + b * t[..., None]
    else:
        period = int(rng.integers(4, 17))
        if pattern == "stripes":
            on = ((xx if rng.random() < 0.5 else yy) // period) % 2 == 0
        else:
            on = ((xx // period) + (yy // period)) % 2 == 0
        img = np.where(on[..., None], a, b)
    return np.clip(img, 0, 255).astype(np.uint8)


def _outline(shape: str, x0: float, y0: float, side: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":  # upright isosceles, base at the bottom
        return [(x0 + side / 2, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    if shape == "square":
        return [(x0, y0), (x0 + side, y0), (x0 + side, y0 + side), (x0, y0 + side)]
    return None  # circle


def _draw_mask(shape: str, x0: float, y0: float, side: float, scale: int):
    """One shape's coverage: (float32[h, w] in [0, 1], left, top) over the pixel window it
    touches; drawn at `scale` x resolution and averaged down (scale 1: aliased, hard edges)."""
    left, top = int(x0), int(y0)
    w = h = int(np.ceil(x0 + side)) - left + 1
    h = int(np.ceil(y0 + side)) - top + 1
    canvas = Image.new("L", (w * scale, h * scale), 0)
    draw = ImageDraw.Draw(canvas)
    ox, oy = (x0 - left) * scale, (y0 - top) * scale
    outline = _outline(shape, ox, oy, side * scale)
    if outline is None:
        s = side * scale
        draw.ellipse([ox, oy, ox + s - 1, oy + s - 1], fill=255)
    else:
        draw.polygon(outline, fill=255)
    cover = np.asarray(canvas, np.float32) / 255
    if scale > 1:
        cover = cover.reshape(h, scale, w, scale).mean(axis=(1, 3))
    return cover, left, top


def make_scene(
    rng: np.random.Generator,
    num_things: int | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool | None = None,
) -> Scene:
    """A random scene; `num_things` (1-3), `size` (width, height) and `antialias` are drawn
    at random unless given."""
    if size is None:
        side = int(rng.integers(64, 257))
        w = h = side
        if rng.random() < 0.25:  # another aspect ratio
            h = int(np.clip(side * rng.uniform(0.6, 1.6), 64, 320))
        size = (w, h)
    w, h = size
    if antialias is None:
        antialias = bool(rng.random() < 0.5)
    wanted = int(rng.integers(1, 4)) if num_things is None else num_things
    short = min(w, h)
    placed: list[tuple[float, float, float]] = []  # x0, y0, side
    for _ in range(wanted):
        for _attempt in range(50):
            side = rng.uniform(0.10, 0.50) * short
            x0 = rng.uniform(0, w - side)
            y0 = rng.uniform(0, h - side)
            if all(
                x0 + side + 2 < px or px + ps + 2 < x0 or y0 + side + 2 < py or py + ps + 2 < y0
                for px, py, ps in placed
            ):
                placed.append((x0, y0, side))
                break
    image = _background(rng, w, h).astype(np.float32)
    things = []
    for x0, y0, side in placed:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        rgb = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, size=3), 0, 255)
        cover, left, top = _draw_mask(shape, x0, y0, side, 4 if antialias else 1)
        cover = cover[: h - top, : w - left]  # the window may overhang by a pixel
        window = image[top : top + cover.shape[0], left : left + cover.shape[1]]
        window *= 1 - cover[..., None]
        window += rgb * cover[..., None]
        mask = np.zeros((h, w), bool)
        mask[top : top + cover.shape[0], left : left + cover.shape[1]] = cover >= 0.5
        if not mask.any():
            continue
        ys, xs = np.nonzero(cover >= 0.5)
        box = (
            left + int(xs.min()),
            top + int(ys.min()),
            left + int(xs.max()) + 1,
            top + int(ys.max()) + 1,
        )
        things.append(Thing(shape, colour, box, mask))
    things.sort(key=lambda t: (t.box[0], t.box[1]))
    return Scene(Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8)), things)


# ---------------------------------------------------------------------------------------------
# Tasks


def caption(scene: Scene) -> str:
    """ "a red circle", "a red circle and a blue square", "a red circle, a blue square and a
    yellow triangle": left to right."""
    names = [f"a {t.name}" for t in scene.things]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _matches(thing: Thing, query: str) -> bool:
    return query in (thing.shape, thing.name)


def _random_query(rng: np.random.Generator, scene: Scene, present: bool) -> str:
    """A thing to look for: a shape ("circle") or a colour + shape ("red circle")."""
    if present and scene.things:
        t = scene.things[int(rng.integers(len(scene.things)))]
        return t.shape if rng.random() < 0.5 else t.name
    for _ in range(100):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        query = shape if rng.random() < 0.3 else f"{rng.choice(COLOUR_NAMES)} {shape}"
        if not any(_matches(t, query) for t in scene.things):
            return query
    return "purple circle"  # every shape and colour is present: nothing purple is


def question(rng: np.random.Generator, scene: Scene) -> tuple[str, str]:
    """(question, answer) about colour, count, existence or position."""
    things = scene.things
    w, _ = scene.size
    kinds = ["count", "exists"]
    unique = [t for t in things if sum(u.shape == t.shape for u in things) == 1]
    if unique:
        kinds.append("colour")
    sided = [
        t
        for t in things
        if abs(t.centre[0] / w - 0.5) > 0.12 and sum(u.name == t.name for u in things) == 1
    ]
    if sided:
        kinds.append("side")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "colour":
        t = unique[int(rng.integers(len(unique)))]
        return f"what color is the {t.shape}?", t.colour
    if kind == "side":
        t = sided[int(rng.integers(len(sided)))]
        return f"is the {t.name} on the left or on the right?", (
            "left" if t.centre[0] < w / 2 else "right"
        )
    if kind == "exists":
        query = _random_query(rng, scene, present=bool(rng.random() < 0.5))
        if " " not in query:
            query = f"{rng.choice(COLOUR_NAMES)} {query}"
        found = any(t.name == query for t in things)
        return f"is there a {query}?", "yes" if found else "no"
    r = rng.random()
    if r < 0.4:
        return "how many shapes are there?", NUMBERS[len(things)]
    if r < 0.7:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        return f"how many {shape}s are there?", NUMBERS[sum(t.shape == shape for t in things)]
    colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    n = sum(t.colour == colour for t in things)
    return f"how many {colour} shapes are there?", NUMBERS[n]


def _queries(rng: np.random.Generator, scene: Scene, most: int) -> list[str]:
    """1..`most` things with distinct shapes, mostly present ones, sometimes an absent one."""
    count = int(rng.integers(1, most + 1))
    queries: list[str] = []
    for _ in range(count * 4):
        q = _random_query(rng, scene, present=bool(rng.random() < 0.8))
        shape = q.split()[-1]
        if all(p.split()[-1] != shape for p in queries):
            queries.append(q)
        if len(queries) == count:
            break
    return queries


def object_suffix(scene: Scene, queries: list[str], codes: Callable | None = None) -> str:
    """Targets for `detect` / `segment`: every thing matching a query, left to right, as
    "<loc>x4[<seg>x16] label", joined by " ; " (empty when nothing matches)."""
    w, h = scene.size
    parts = []
    for t in scene.things:
        label = next((q for q in queries if _matches(t, q)), None)
        if label is None:
            continue
        text = loc_string(t.box, w, h)
        if codes is not None:
            text += seg_string(codes(t.mask, t.box))
        parts.append(f"{text} {label}")
    return " ; ".join(parts)


def make_example(
    scene: Scene, kind: str, rng: np.random.Generator, encode: Callable | None = None
) -> dict:
    """One training / evaluation example: {"kind", "prefix", "suffix", "queries"}. `encode(mask,
    box) -> 16 codes` (the mask VQ-VAE) is needed for "segment"."""
    if kind == "caption":
        return {"kind": kind, "prefix": "caption en", "suffix": caption(scene), "queries": []}
    if kind == "answer":
        q, a = question(rng, scene)
        return {"kind": kind, "prefix": f"answer en {q}", "suffix": a, "queries": []}
    if kind == "detect":
        queries = _queries(rng, scene, most=2)
        suffix = object_suffix(scene, queries)
        return {
            "kind": kind,
            "prefix": "detect " + " ; ".join(queries),
            "suffix": suffix,
            "queries": queries,
        }
    if kind == "segment":
        if encode is None:
            raise ValueError("segment examples need the mask VQ-VAE encoder (encode=...)")
        queries = _queries(rng, scene, most=1)
        suffix = object_suffix(scene, queries, encode)
        return {
            "kind": kind,
            "prefix": f"segment {queries[0]}",
            "suffix": suffix,
            "queries": queries,
        }
    raise ValueError(f"unknown task {kind!r}; known: {', '.join(KINDS)}")


def patch_targets(scene: Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense supervision for the image encoder (training aid): at each patch centre of a
    `grid` x `grid` layout, the class (0 background, else 1 + shape * 4 + colour) and the
    object's box as (x0, y0, x1, y1) / image size (zeros on background).
    Returns (int64[grid*grid], float32[grid*grid, 4])."""
    w, h = scene.size
    centres = (np.arange(grid) + 0.5) / grid
    ys = np.minimum((centres * h).astype(int), h - 1)
    xs = np.minimum((centres * w).astype(int), w - 1)
    classes = np.zeros((grid, grid), np.int64)
    boxes = np.zeros((grid, grid, 4), np.float32)
    for t in scene.things:
        inside = t.mask[np.ix_(ys, xs)]
        classes[inside] = 1 + SHAPES.index(t.shape) * len(COLOURS) + COLOUR_NAMES.index(t.colour)
        x0, y0, x1, y1 = t.box
        boxes[inside] = (x0 / w, y0 / h, x1 / w, y1 / h)
    return classes.reshape(-1), boxes.reshape(-1, 4)
