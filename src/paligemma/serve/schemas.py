"""Request bodies as pydantic models: FastAPI validates with them, and they are the OpenAPI
schema."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Float = Annotated[float, Field(allow_inf_nan=False)]


class ImageURL(BaseModel):
    url: str = Field(description="data:image/...;base64,..., or file:// inside --allow-dir")


class VideoURL(BaseModel):
    url: str = Field(description="data:video/mp4;base64,..., or file:// inside --allow-dir")
    frames: int | None = Field(None, ge=1, description="frames sampled uniformly (default 16)")


class ContentPart(BaseModel):
    type: Literal["text", "image_url", "video_url"]
    text: str | None = None
    image_url: ImageURL | None = None
    video_url: VideoURL | None = None


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, description="default 32")
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: Float | None = Field(None, ge=0, le=2, description="default 0: greedy")
    top_p: Float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    timeout: Float | None = Field(None, gt=0, description="seconds; capped by the server's")
    ignore_eos: bool = Field(False, description="decode past <eos> to max_tokens (load tests)")


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    image: str = Field(description="a data: URL, plain base64, or a file:// URL in --allow-dir")
    labels: str | list[str] = Field(description='"cat ; dog" or ["cat", "dog"]')
    max_tokens: int | None = Field(None, ge=1, description="default: 256 or the server's cap")
    timeout: Float | None = Field(None, gt=0, description="seconds; capped by the server's")
    mask_format: Literal["rle", "png", "both", "none"] = Field(
        "rle", description="segment: masks as COCO RLE, PNG data URL, both, or none"
    )
