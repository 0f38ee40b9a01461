"""Structured routes: POST /v1/detect and /v1/segment answer with boxes, labels and masks as
JSON (boxes in pixels of the image; masks as COCO RLE and/or PNG data URLs)."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image

from ..tasks.objects import mask_to_rle, task_prompt
from .batcher import Job
from .checks import check_model, check_prompt
from .errors import APIError, cancelled
from .images import decode_image
from .jobs import deadline, submit, wait
from .schemas import TaskRequest

router = APIRouter()


@router.post("/v1/detect")
async def detect(body: TaskRequest, request: Request) -> dict:
    """Boxes (x_min, y_min, x_max, y_max in pixels) and labels for `labels`."""
    return await _task("detect", body, request)


@router.post("/v1/segment")
async def segment(body: TaskRequest, request: Request) -> dict:
    """As /v1/detect, plus each object's mask (COCO RLE and/or a PNG data URL)."""
    if request.app.state.pipe.mask_vae is None:
        raise APIError(400, "this model has no mask VQ-VAE: segmentation is unavailable")
    return await _task("segment", body, request)


async def _task(kind: str, body: TaskRequest, request: Request) -> dict:
    s, pipe = request.app.state.settings, request.app.state.pipe
    adapter = check_model(body.model, s, request.app.state.adapters)
    until = deadline(request, body.timeout)
    try:
        labels = body.labels.split(";") if isinstance(body.labels, str) else body.labels
        prompt = task_prompt(kind, labels)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    max_tokens = body.max_tokens or min(256, s.max_tokens)
    prompt_tokens = check_prompt(prompt, 1, max_tokens, pipe, s)
    image = await asyncio.to_thread(decode_image, body.image, s)
    w, h = image.size
    after = lambda text: pipe.read_objects(kind, text, w, h)  # noqa: E731
    job = Job([image], prompt, max_tokens, after=after, adapter=adapter, deadline=until)
    job = submit(job, request, prompt_tokens)
    if not await wait(job, request):
        return cancelled()
    objects = job.extra
    return {
        "model": adapter or s.model_name,
        "prompt": prompt,
        "text": objects.text,
        "width": w,
        "height": h,
        "objects": [_object(o, kind, body.mask_format) for o in objects if o.valid],
        "invalid": [{"problem": o.problem} for o in objects if not o.valid],
    }


def _object(o, kind: str, mask_format: str) -> dict[str, Any]:
    """One valid object as JSON; a segment's mask in `mask_format` (None when it has none)."""
    out: dict[str, Any] = {
        "label": o.label,
        "box": list(o.box),
        "box_normalized": [round(v, 6) for v in o.box_normalized],
        "score": None,
    }
    if kind == "segment":
        mask: dict[str, Any] | None = None
        if o.mask is not None and mask_format != "none":
            mask = {}
            if mask_format in ("rle", "both"):
                mask["rle"] = mask_to_rle(o.mask)
            if mask_format in ("png", "both"):
                buf = io.BytesIO()
                Image.fromarray(o.mask.astype("uint8") * 255).save(buf, format="PNG")
                mask["png"] = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        out["mask"] = mask
    return out
