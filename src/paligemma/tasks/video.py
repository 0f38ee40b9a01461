"""Short videos as PaliGemma input: N frames sampled uniformly, each then an image of its own.

PaliGemma's video transfers (paper §3.2.4; big_vision `transfers/msrvtt_cap.py` and the other
video configs) feed 16 frames at 224 px: every frame is encoded separately by the image encoder
and the frames' image tokens are concatenated, with no separator, before the prompt (16 x 256 =
4096 image tokens, as one 896 px image). big_vision's readers take 16 frames at a stride of 9;
for a clip of any length we take N frames at the centres of N equal segments of the clip,
frame i = floor((i + 1/2) * total / N), which repeats frames when the clip has fewer than N
(as big_vision's `video_replicate_img` pads short clips). Decoding is PyAV's (the `video` extra).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

DEFAULT_FRAMES = 16  # big_vision's video transfers
MAX_DECODED_FRAMES = 20_000  # a "short video" guard: frames decoded to count a clip's length
_INSTALL = "reading videos needs PyAV: pip install 'paligemma[video]'"


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".gif")


def is_video(path: Any) -> bool:
    """Whether `path` (a str / Path; bytes are never taken for one) names a video file."""
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoError(ValueError):
    """A video that cannot be read, or a frame request that cannot be met."""


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return av


def frame_indices(total: int, n: int) -> list[int]:
    """The N frame numbers sampled uniformly from a clip of `total` frames (segment centres)."""
    if n < 1:
        raise VideoError(f"frames must be >= 1, got {n}")
    if total < 1:
        raise VideoError("the video has no frames")
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def _open(av, source: Any):
    name = "video bytes" if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)) and not Path(source).is_file():
        raise VideoError(f"cannot read video {name}: no such file")
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        container = av.open(stream)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"cannot read video {name}: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{name} has no video stream")
    return container, name


def _count(av, source: Any) -> int:
    container, name = _open(av, source)
    with container:
        total = 0
        try:
            for _ in container.decode(video=0):
                total += 1
                if total > MAX_DECODED_FRAMES:
                    raise VideoError(f"{name} is longer than {MAX_DECODED_FRAMES} frames")
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode video {name}: {e}") from None
    return total


def _pick(av, source: Any, wanted: list[int], max_pixels: int | None) -> list[Image.Image]:
    container, name = _open(av, source)
    picked: dict[int, Image.Image] = {}
    with container:
        ctx = container.streams.video[0].codec_context
        if max_pixels is not None and ctx.width * ctx.height > max_pixels:
            raise VideoError(f"{name}: {ctx.width}x{ctx.height} frames are over {max_pixels} px")
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    picked[i] = frame.to_image().convert("RGB")
                if i >= max(wanted):
                    break
        except (av.FFmpegError, ValueError) as e:  # ValueError: a frame format PIL lacks
            raise VideoError(f"cannot decode video {name}: {e}") from None
    return [picked[i] for i in wanted if i in picked]


def read_frames(
    source: str | Path | bytes, frames: int = DEFAULT_FRAMES, *, max_pixels: int | None = None
) -> list[Image.Image]:
    """N RGB frames sampled uniformly from a video file (path) or its bytes, in time order.

    The clip's length is the container's frame count when it has one, else (or when that count
    proves wrong) counted by decoding. `max_pixels` bounds a frame's width x height."""
    av = _av()
    container, _ = _open(av, source)
    with container:
        total = container.streams.video[0].frames
    wanted = frame_indices(total, frames) if total > 0 else []
    images = _pick(av, source, wanted, max_pixels) if wanted else []
    if len(images) < len(wanted) or not wanted:
        wanted = frame_indices(_count(av, source), frames)
        images = _pick(av, source, wanted, max_pixels)
    return images
