"""Pictures of results: boxes, labels and semi-transparent masks drawn over the image."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .objects import DetectedObject

PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
]


def draw_objects(
    image: Image.Image, objects: list[DetectedObject], alpha: float = 0.45
) -> Image.Image:
    """A copy of `image` (RGB) with each valid object's mask, box and label drawn on it."""
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = max(2, min(base.size) // 150)
    font = ImageFont.load_default(size=max(12, min(base.size) // 30))
    for i, obj in enumerate(o for o in objects if o.valid and o.box is not None):
        color = PALETTE[i % len(PALETTE)]
        if obj.mask is not None:
            tint = np.zeros((*obj.mask.shape, 4), dtype=np.uint8)
            tint[obj.mask] = (*color, int(255 * alpha))
            overlay = Image.alpha_composite(overlay, Image.fromarray(tint, "RGBA"))
            draw = ImageDraw.Draw(overlay)
        x0, y0, x1, y1 = obj.box
        fill = None if obj.mask is not None else (*color, int(255 * alpha / 3))  # light box tint
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(*color, 255), fill=fill, width=line)
        if obj.label:
            left, top, right, bottom = draw.textbbox((x0, y0), obj.label, font=font)
            ty = y0 - (bottom - top) - 2 * line if y0 - (bottom - top) - 2 * line >= 0 else y0
            draw.rectangle(
                (x0, ty, x0 + right - left + 2 * line, ty + bottom - top + 2 * line),
                fill=(*color, 220),
            )
            draw.text(
                (x0 + line, ty + line - top + y0), obj.label, fill=(255, 255, 255, 255), font=font
            )
    return Image.alpha_composite(base, overlay).convert("RGB")
