"""`video_url` content parts -> frames: the video's bytes come through the image URL rules
(images.read_url: data: URLs, file:// inside --allow-dir, http(s) only with remote images allowed
and through fetch.py's SSRF checks, all within the body-size limit); frames are sampled
uniformly (tasks/video.py) and each must be within `Settings.max_pixels`."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..tasks.video import DEFAULT_FRAMES, VideoError, read_frames
from .errors import APIError
from .images import read_url
from .settings import Settings


@dataclass(frozen=True)
class VideoPart:
    url: str
    frames: int

    @classmethod
    def of(cls, part, s: Settings) -> VideoPart:
        """A request's video_url part, checked: a URL, and frames within the server's limit."""
        if part is None:
            raise APIError(400, "a video_url part needs video_url.url")
        frames = part.frames or min(DEFAULT_FRAMES, s.max_video_frames)
        if frames > s.max_video_frames:
            raise APIError(400, f"{frames} frames; the limit is {s.max_video_frames}")
        return cls(part.url, frames)


def decode_video(video: VideoPart, s: Settings) -> list[Image.Image]:
    """The video part's frames as RGB images, or an APIError (400 unreadable, 413 too large)."""
    raw = read_url(video.url, s)
    try:
        return read_frames(raw, video.frames, max_pixels=s.max_pixels)
    except ImportError as e:
        raise APIError(501, str(e), code="not_implemented") from None
    except VideoError as e:
        status = 413 if "px" in str(e) or "longer than" in str(e) else 400
        message = str(e).replace("video bytes", "video")
        raise APIError(status, message, code="too_large" if status == 413 else None) from None
    except Exception:  # a decoder surprise on hostile bytes is the client's bad input
        raise APIError(400, "video data is unreadable, truncated or corrupt") from None
