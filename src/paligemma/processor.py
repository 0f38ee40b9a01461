"""Images and prompts -> model inputs, exactly as transformers' PaliGemmaProcessor builds them.

One row of a batch (left padding first; L image tokens per image):

    input_ids       [<pad> ...] [<image> x L x images] <bos> prompt "\\n" | suffix <eos>
    attention_mask       0                1 ...                           |   1 ...
    token_type_ids       0                0 ...                           |   1 ...
    labels            -100             -100 ...                           |  ids ... (with suffix)

Images: any PIL-readable file, bytes, PIL image or numpy array; EXIF orientation applied;
transparency composited on white; resized to the model's square size with PIL bicubic; scaled
by 1/255 (in float64, then float32) and normalised with mean = std = 0.5 => [-1, 1].
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from .tokenizer import Tokenizer

MAX_PIXELS = 100_000_000  # decompression-bomb guard (check_pixels): 100 megapixels at most
IGNORE = -100  # label of positions that never contribute to the loss
IMAGE_TOKEN = "<image>"


class ImageError(ValueError):
    """An image that cannot be read: missing, not an image, truncated, or too large."""


def load_image(source: Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image from a path, bytes, PIL image or numpy array (H, W[, C], uint8)."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    else:
        if isinstance(source, (bytes, bytearray)):
            name, stream = "image bytes", io.BytesIO(source)
        elif isinstance(source, (str, Path)):
            name, stream = str(source), source
            if not Path(source).is_file():
                raise ImageError(f"cannot read image {name}: no such file")
        else:
            raise ImageError(f"cannot use a {type(source).__name__} as an image")
        try:
            with warnings.catch_warnings():  # our own pixel limit below replaces PIL's warning
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(stream)
            _check_size(image, max_pixels, name)
            image.load()
        except Image.DecompressionBombError:
            raise ImageError(f"image {name} is too large (decompression-bomb guard)") from None
        except (OSError, SyntaxError, ValueError) as e:  # not an image, truncated, corrupt
            if isinstance(e, ImageError):
                raise
            raise ImageError(f"cannot read image {name}: {e}") from None
    _check_size(image, max_pixels, "image")
    image = ImageOps.exif_transpose(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")  # composite transparency on white, as the reference does
        return Image.alpha_composite(
            Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba
        ).convert("RGB")
    return image.convert("RGB")


def check_pixels(width: int, height: int, limit: int = MAX_PIXELS, name: str = "image") -> None:
    """The one pixel-count guard, run on the header's size before any decoding (a
    decompression-bomb guard): ImageError naming the size and the limit when width x height is
    over `limit`. The limits: MAX_PIXELS (100 M) for `load_image`, so for the library, the command
    line and training data (`train.data` checks each record's header with it); the server's
    stricter `Settings.max_pixels` (16 M by default), since its images come from the network."""
    if width * height > limit:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height:,} pixels, above the limit of "
            f"{limit:,} (decompression-bomb guard)"
        )


def _check_size(image: Image.Image, max_pixels: int, name: str) -> None:
    w, h = image.size
    check_pixels(w, h, max_pixels, name)
    if w == 0 or h == 0:
        raise ImageError(f"{name} is empty ({w}x{h})")


def _from_array(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or (a.size and (a.min() < 0 or a.max() > 1)):
            raise ImageError("numpy images must be uint8, or floats in [0, 1]")
        a = np.round(a * 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"numpy image of shape {a.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
    return Image.fromarray(a)


@dataclass(frozen=True)
class ImageTransform:
    """Resize + rescale + normalise; values from preprocessor_config.json when there is one."""

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255

    @classmethod
    def from_file(cls, path: Path, size: int) -> ImageTransform:
        d = json.loads(path.read_text())
        side = d.get("size", {})
        side = side.get("height", size) if isinstance(side, dict) else side
        if side != size or d.get("do_resize", True) is False:
            raise ImageError(f"{path}: image size {side} does not match the model's {size}")
        if not (d.get("do_rescale", True) and d.get("do_normalize", True)):
            raise ImageError(f"{path}: images must be rescaled and normalised")
        as3 = lambda v: tuple(float(x) for x in (v if isinstance(v, list) else [v] * 3))  # noqa: E731
        return cls(
            size=size,
            mean=as3(d.get("image_mean", 0.5)),
            std=as3(d.get("image_std", 0.5)),
            resample=int(d.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB image -> float32[3, size, size]."""
        x = np.asarray(image.resize((self.size, self.size), resample=self.resample))
        x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x.transpose(2, 0, 1)


class Processor:
    """Builds batches: `processor(images=..., text=..., suffix=...)` -> dict of tensors."""

    def __init__(self, tokenizer: Tokenizer, transform: ImageTransform, num_image_tokens: int):
        self.tokenizer = tokenizer
        self.transform = transform
        self.num_image_tokens = num_image_tokens

    def prompt_ids(self, prompt: str, num_images: int = 1) -> list[int]:
        """[<image> x L x num_images] <bos> prompt "\\n" as ids."""
        t = self.tokenizer
        return (
            [t.image_id] * (self.num_image_tokens * num_images)
            + [t.bos_id]
            + t.encode(prompt + "\n")
        )

    def suffix_ids(self, suffix: str) -> list[int]:
        return [*self.tokenizer.encode(suffix), self.tokenizer.eos_id]

    def rows(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        suffix: str | list[str] | None = None,
    ) -> list[Row]:
        """The rows of a batch, tokenized, with their images still as given (not decoded):
        what `__call__` pads and stacks. Callers that need each row's length first (the
        pipeline's length check) build rows once and `collate` them in chunks."""
        texts = [text] if isinstance(text, str) else list(text) if text is not None else None
        per_row = images_per_row(images, len(texts) if texts is not None else None)
        texts = texts if texts is not None else [""] * len(per_row)
        suffixes = [suffix] if isinstance(suffix, str) else suffix
        if suffixes is not None and len(suffixes) != len(texts):
            raise ValueError(f"got {len(suffixes)} suffixes for {len(texts)} prompts")
        rows = []
        for i, (prompt, imgs) in enumerate(zip(texts, per_row, strict=True)):
            ids = self.prompt_ids(_strip_image_tokens(prompt, len(imgs)), len(imgs))
            tail = self.suffix_ids(suffixes[i]) if suffixes is not None else []
            rows.append(Row(ids + tail, [0] * len(ids) + [1] * len(tail), imgs, bool(tail)))
        return rows

    def collate(self, rows: list[Row]) -> dict[str, torch.Tensor]:
        """Left-pad rows into input_ids, attention_mask, token_type_ids (int64[B, T]), decode
        and transform their images into pixel_values (float32[I, 3, R, R]) and, when the rows
        have suffixes, labels (int64[B, T]: the suffix ids, IGNORE elsewhere)."""
        width = max(len(r.ids) for r in rows)
        batch = {
            k: torch.zeros(len(rows), width, dtype=torch.long)
            for k in ("input_ids", "attention_mask", "token_type_ids")
        }
        batch["input_ids"].fill_(self.tokenizer.pad_id)
        for i, row in enumerate(rows):
            batch["input_ids"][i, width - len(row.ids) :] = torch.tensor(row.ids)
            batch["attention_mask"][i, width - len(row.ids) :] = 1
            batch["token_type_ids"][i, width - len(row.ids) :] = torch.tensor(row.types)
        pixels = [self.transform(load_image(im)) for row in rows for im in row.images]
        batch["pixel_values"] = torch.from_numpy(np.stack(pixels))
        if any(row.has_suffix for row in rows):
            batch["labels"] = batch["input_ids"].masked_fill(batch["token_type_ids"] == 0, IGNORE)
        return batch

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        suffix: str | list[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """images: one image (for every prompt), a list with one per prompt, or a list of lists
        (several per prompt). Returns input_ids, attention_mask, token_type_ids (int64[B, T]),
        pixel_values (float32[I, 3, R, R]) and, with suffixes, labels (int64[B, T])."""
        return self.collate(self.rows(images, text, suffix))


@dataclass
class Row:
    """One row of a batch before padding: prompt (+ suffix) ids, their token types (0 image and
    prefix, 1 suffix), and the row's images as given."""

    ids: list[int]
    types: list[int]
    images: list[Any]
    has_suffix: bool = False


def _is_image(x: Any) -> bool:
    return isinstance(x, (Image.Image, np.ndarray, str, Path, bytes, bytearray))


def images_per_row(images: Any, num_texts: int | None) -> list[list[Any]]:
    if images is None:
        raise ValueError("PaliGemma needs an image for every prompt")
    if _is_image(images):
        return [[images]] * (num_texts or 1)
    images = list(images)
    if not images:
        raise ValueError("no images given")
    if all(_is_image(x) for x in images):
        rows = [[x] for x in images]
    elif all(isinstance(x, (list, tuple)) and x and all(_is_image(y) for y in x) for x in images):
        rows = [list(x) for x in images]
    else:
        raise ValueError("images must be an image, a list of images, or a list of lists of images")
    if num_texts is not None and len(rows) != num_texts:
        raise ValueError(
            f"got {len(rows)} image groups for {num_texts} prompts (one image, or one list of "
            "images, per prompt)"
        )
    return rows


def _strip_image_tokens(prompt: str, num_images: int) -> str:
    """Allow the reference's explicit form "<image>prompt": one leading marker per image."""
    count = 0
    while prompt.startswith(IMAGE_TOKEN):
        prompt, count = prompt[len(IMAGE_TOKEN) :], count + 1
    if count and count != num_images:
        raise ValueError(f"prompt has {count} {IMAGE_TOKEN} markers for {num_images} image(s)")
    if IMAGE_TOKEN in prompt:
        raise ValueError(f"{IMAGE_TOKEN} may only appear at the start of a prompt")
    return prompt
