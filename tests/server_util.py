"""Request builders shared by the server tests (the server: `paligemma.serve.running`)."""

from __future__ import annotations

import base64
import io

from paligemma.serve import running  # noqa: F401  (re-exported for the tests)
from paligemma.serve import server_process as serve_process  # noqa: F401


def image_b64(image, fmt: str = "PNG") -> str:
    """The image's file bytes in `fmt`, base64-encoded."""
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def data_url(image, fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64," + image_b64(image, fmt)


def chat_body(image, prompt: str, **extra) -> dict:
    content = [{"type": "text", "text": prompt}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"messages": [{"role": "user", "content": content}], **extra}
