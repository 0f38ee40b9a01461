"""Image URLs -> RGB images, checked: data: URLs and plain base64, file:// URLs inside
--allow-dir only, http(s) only when remote images are allowed (then through fetch.py, which
refuses internal addresses); bytes within the body-size
limit, pixels within `Settings.max_pixels` (through `processor.check_pixels`)."""

from __future__ import annotations

import base64
import binascii
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from ..processor import ImageError, check_pixels, load_image
from .errors import APIError
from .fetch import fetch
from .settings import Settings


def decode_image(url: str, s: Settings) -> Image.Image:
    """Image bytes from a URL -> RGB image, after checking they are an image of allowed size."""
    raw = read_url(url, s)
    try:
        probe = Image.open(io.BytesIO(raw))
        w, h = probe.size
    except Image.DecompressionBombError:
        raise APIError(413, "image has too many pixels", code="too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise APIError(400, "image bytes are not a readable image (PNG, JPEG, WebP, ...)") from None
    try:
        check_pixels(w, h, s.max_pixels)
    except ImageError as e:
        raise APIError(413, str(e), code="too_large") from None
    try:
        return load_image(probe)
    except Exception:  # truncated / corrupt data surfaces only when decoding
        raise APIError(400, "image data is truncated or corrupt") from None


def read_url(url: str, s: Settings) -> bytes:
    """The bytes an image URL names (data:, plain base64, file:, http(s)), or an APIError."""
    if not isinstance(url, str) or not url:
        raise APIError(400, "an image URL must be a non-empty string")
    if url.startswith("data:"):
        header, comma, data = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise APIError(400, "data URLs must be base64: data:image/png;base64,...")
        return _b64(data)
    scheme = urlparse(url).scheme.lower() if ":" in url[:12] else ""
    if scheme == "file":
        return _read_file(url, s)
    if scheme in ("http", "https"):
        if not s.allow_remote:
            raise APIError(400, "remote image URLs are disabled (start with --allow-remote-images)")
        return fetch(url, s)
    if scheme:
        raise APIError(400, f"unsupported image URL scheme {scheme!r}: use a data: URL")
    return _b64(url)  # plain base64


def _read_file(url: str, s: Settings) -> bytes:
    """A file: URL's bytes; its path is taken inside --allow-dir and may not leave it."""
    if s.allow_dir is None:
        raise APIError(400, "file: URLs are disabled; start the server with --allow-dir DIR")
    root = Path(s.allow_dir).resolve()
    parts = urlparse(url)
    name = unquote(parts.netloc + parts.path)
    try:  # containment first, so nothing is revealed about files outside
        real = Path(name).resolve()
        if not (Path(name).is_absolute() and real.is_relative_to(root)):
            real = (root / name.lstrip("/")).resolve()  # paths are relative to the directory
    except (OSError, RuntimeError, ValueError):
        raise APIError(400, f"bad file URL: {url}") from None
    if not real.is_relative_to(root):
        raise APIError(403, "file: URL points outside the allowed directory", code="forbidden")
    if not real.is_file():
        raise APIError(404, f"no such file: {url}", code="not_found")
    if real.stat().st_size > s.max_body_bytes:
        raise APIError(413, "image file is larger than the body-size limit", code="too_large")
    return real.read_bytes()


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "image data is not valid base64") from None
