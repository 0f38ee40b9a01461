"""What `paligemma eval` writes beside its scores: OUT/summary.md (Markdown tables of the
metrics and settings) and, for detection / segmentation / referring expressions, OUT/worst.png:
a grid of the lowest-scoring examples, true boxes and masks in white, predictions in colour.

Axis letters: H, W image height and width in pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..processor import load_image
from ..tasks.draw import draw_objects
from ..tasks.objects import DetectedObject, rle_to_mask

WORST = 8  # examples in worst.png
CELL = 256  # pixels per grid cell (longest side)


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "–" if v is None else str(v)


def summary_markdown(spec, record: dict) -> str:
    """The summary: what was run, then one table of the metrics (nested ones as their own)."""
    settings, counts = record["settings"], record["counts"]
    lines = [
        f"# paligemma eval: {spec.name}",
        "",
        f"model `{settings['model']}`, data `{settings['data']}` ({settings['format']}), "
        f"prompt `{settings['prompt']}`, {settings['num_beams']} beam(s), "
        f"max {settings['max_new_tokens']} new tokens; {counts['examples']} examples in "
        f"{record['time_s']} s",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    skip = {"settings", "counts", "time_s", "examples_per_s", "model", "data"}
    nested = {}
    for key, value in record.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            nested[key] = value
        else:
            lines.append(
                f"| {key}{' (headline)' if key == spec.headline else ''} | {_value(value)} |"
            )
    for key, table in nested.items():
        lines += ["", f"| {key} | value |", "|---|---|"]
        lines += [f"| {k} | {_value(v)} |" for k, v in table.items()]
    lines += ["", "| count | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    if spec.notes:
        lines += ["", f"Note: {spec.notes}."]
    return "\n".join(lines) + "\n"


def write_report(out: Path, spec, record: dict, rows: list[dict], dataset) -> None:
    (out / "summary.md").write_text(summary_markdown(spec, record))
    if spec.kind != "text" and rows:
        worst_grid(rows, dataset).save(out / "worst.png")


def _predicted(row: dict, size: tuple[int, int]) -> list[DetectedObject]:
    """The objects scored for a row (COCO results, or a referring expression's first one)."""
    out = []
    if "coco" in row:
        for r in row["coco"]:
            x, y, w, h = r["bbox"]
            mask = rle_to_mask(r["segmentation"]) if "segmentation" in r else None
            out.append(DetectedObject(r["label"], (x, y, x + w, y + h), None, (), None, mask=mask))
        return out
    first = next((o for o in row["objects"] if o["valid"]), None)
    if first is not None:
        mask = rle_to_mask(row["mask_rle"]) if row.get("mask_rle") else None
        box = tuple(first["box"])
        out.append(DetectedObject(first["label"], box, None, (), None, mask=mask))
    return out


def _cell(row: dict, record) -> Image.Image:
    image = load_image(record.images[0]).convert("RGB")
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for t in record.objects:
        mask = t.mask  # decoded once (a reader's mask may be lazy)
        if mask is not None:
            tint = np.zeros((*mask.shape, 4), dtype=np.uint8)
            tint[mask] = (255, 255, 255, 90)
            overlay = Image.alpha_composite(overlay, Image.fromarray(tint, "RGBA"))
            draw = ImageDraw.Draw(overlay)
        x0, y0, x1, y1 = t.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255, 255), width=2)
    truth = Image.alpha_composite(base, overlay).convert("RGB")
    drawn = draw_objects(truth, _predicted(row, image.size))
    drawn.thumbnail((CELL, CELL))
    return drawn


def worst_grid(rows: list[dict], dataset, count: int = WORST, columns: int = 4) -> Image.Image:
    """The `count` lowest-scoring rows side by side, captioned with their id and score."""
    worst = sorted(rows, key=lambda r: (r["score"] is None, r["score"] or 0.0))[:count]
    cells = [(_cell(r, dataset[r["index"]]), r) for r in worst]
    rows_n = (len(cells) + columns - 1) // columns
    caption = 18
    grid = Image.new("RGB", (columns * CELL, rows_n * (CELL + caption)), (32, 32, 32))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=12)
    for k, (cell, row) in enumerate(cells):
        x, y = (k % columns) * CELL, (k // columns) * (CELL + caption)
        grid.paste(cell, (x, y + caption))
        text = f"id {row['id']}  score {_value(row['score'])}"
        draw.text((x + 4, y + 3), text, fill=(255, 255, 255), font=font)
    return grid
