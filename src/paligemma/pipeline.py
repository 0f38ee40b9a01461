"""The public face: `paligemma.load(source)` -> a Pipeline of model + processor + tokenizer.

pipe = paligemma.load("path/or/hub-id")
pipe.generate(image, "caption en", max_new_tokens=20).text
pipe.generate([im1, im2], ["caption en", "answer en what is it?"])   # batched, same order
for piece in pipe.stream(image, "describe en"): print(piece, end="")
pipe.generate(video="clip.mp4", prompts="caption en", frames=16)  # frames as consecutive images
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import generate as engine
from .checkpoints.assets import find_mask_vae
from .checkpoints.load import load_model, resolve_source
from .config import MAX_SEQ_LEN
from .lora.peft import load_adapter_
from .model import PaliGemma
from .processor import ImageTransform, Processor, Row, load_image
from .tasks.objects import ObjectList, parse_objects, score_objects, task_prompt
from .tasks.video import DEFAULT_FRAMES, read_frames
from .tasks.vqvae import MaskVAE, load_mask_vae, paste_mask
from .textstream import StopStrings, cut_at_stop, stop_list
from .tokenizer import NUM_LOC, Tokenizer, TokenizerError, find_tokenizer

EMBEDDED_DIR = Path(__file__).parent / "assets"  # the demo model trained here (MODEL_CARD.md)
EMBEDDED_NAMES = ("embedded", "paligemma-embedded")  # what --model / load() call it


class PromptTooLongError(ValueError):
    """A prompt (plus image tokens and new tokens) longer than the model can take."""


@dataclass
class Result:
    text: str
    token_ids: list[int]  # new tokens, <eos> excluded
    finish_reason: str  # "stop" (<eos> or a stop string) or "length" (max_new_tokens)
    timings: dict[str, float] = field(default_factory=dict)  # of the batch this row was in
    logprobs: list[float] = field(default_factory=list)  # per token id (generate.Output)


class Pipeline:
    def __init__(self, model: PaliGemma, processor: Processor, mask_vae: MaskVAE | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.mask_vae = mask_vae
        # Ids the model may produce: the tokenizer's, less an <image> appended after the text
        # (as in the published tokenizer); the embedding's padding rows lie beyond.
        tok = self.tokenizer
        self.num_real_ids = tok.image_id if tok.image_id == tok.vocab_size - 1 else tok.vocab_size
        self.never_ids = (tok.image_id,) if tok.image_id < self.num_real_ids else ()

    # -- helpers -------------------------------------------------------------------------------
    def _rows(self, images: Any, prompts: str | list[str], max_new: int) -> list[Row]:
        """The processor's rows for the prompts (one list of images each), every row's length
        checked against what the model takes before anything is decoded or generated."""
        if isinstance(prompts, str):
            images = [list(images)] if isinstance(images, (list, tuple)) else [[images]]
            prompts = [prompts]
        rows = self.processor.rows(images, list(prompts))
        for row in rows:
            if len(row.ids) + max_new > MAX_SEQ_LEN:
                n, k = len(row.ids), len(row.images)
                raise PromptTooLongError(
                    f"prompt is {n} tokens with its image tokens ({k} image(s) x "
                    f"{self.processor.num_image_tokens}); with max_new_tokens={max_new} that is "
                    f"{n + max_new} > {MAX_SEQ_LEN}, the longest sequence the model takes"
                )
        return rows

    def _with_video(self, images: Any, prompts, video: Any, frames: int | None, max_new: int):
        """`images` as given, or (video=) the video's frames as one image list per prompt,
        after checking that frames x image tokens + prompt + max_new fit the model."""
        if prompts is None:
            raise TypeError("generate() needs a prompt (prompts=...)")
        if video is None:
            if frames is not None:
                raise ValueError("frames= goes with video=")
            return images
        if images is not None:
            raise ValueError("give images or video=, not both")
        n, per_frame = frames or DEFAULT_FRAMES, self.processor.num_image_tokens
        listed = [prompts] if isinstance(prompts, str) else prompts
        text = max(len(self.processor.prompt_ids(p, 0)) for p in listed)
        if n * per_frame + text + max_new > MAX_SEQ_LEN:
            fit = max(0, (MAX_SEQ_LEN - text - max_new) // per_frame)
            raise PromptTooLongError(
                f"{n} frames x {per_frame} image tokens + {text} prompt tokens + "
                f"max_new_tokens={max_new} is over {MAX_SEQ_LEN}; at most {fit} frames fit"
            )
        images = read_frames(video, n)
        return images if isinstance(prompts, str) else [images] * len(prompts)

    def generation_config(self, **options: Any) -> engine.GenerationConfig:
        """engine.GenerationConfig(**options), limited to this tokenizer's real ids."""
        limits = {"num_real_ids": self.num_real_ids, "never_ids": self.never_ids}
        return engine.GenerationConfig(**{**limits, **options})

    # -- API -----------------------------------------------------------------------------------
    def generate(
        self,
        images: Any = None,
        prompts: str | list[str] | None = None,
        *,
        video: Any = None,
        frames: int | None = None,
        max_new_tokens: int = 32,
        stop: str | list[str] | None = None,
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        logprobs: bool = False,
        ignore_eos: bool = False,
        **options: Any,
    ) -> Result | list[Result]:
        """Answer one prompt (-> Result) or a list of prompts (-> list of Results, same order).

        images: an image for a single prompt (or a list: several images for it); for a list of
        prompts, one image (or list of images) per prompt. options: do_sample, temperature,
        top_k, top_p, repetition_penalty, num_beams, length_penalty, seed. Stop strings end a
        row and are cut from its text. Rows are processed `batch_size` at a time; `progress`
        is called with the number of rows finished in each batch. video (a file or its bytes;
        instead of images): `frames` frames (default 16) sampled uniformly, fed as images.
        `logprobs`: each Result also gets its tokens' log-probabilities (always with beams).
        `ignore_eos`: <eos> does not end a row (it decodes on to max_new_tokens or a stop
        string; the fixed answer lengths a load test wants, as vLLM's `ignore_eos`).
        """
        cfg = self.generation_config(max_new_tokens=max_new_tokens, **options)
        images = self._with_video(images, prompts, video, frames, max_new_tokens)
        stop = stop_list(stop)
        rows = self._rows(images, prompts, max_new_tokens)
        results: list[Result] = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            inputs = self.processor.collate(chunk)
            stopper = StopStrings(self.tokenizer, stop, len(chunk)) if stop else None
            eos = set() if ignore_eos else {self.tokenizer.eos_id}
            out = engine.generate(self.model, inputs, cfg, eos, stopper, logprobs)
            for ids, reason, lps in zip(out.tokens, out.finish_reasons, out.logprobs, strict=True):
                text = cut_at_stop(self.tokenizer.decode(ids), stop)
                results.append(Result(text, ids, reason, dict(out.timings), lps))
            if progress is not None:
                progress(len(chunk))
        return results[0] if isinstance(prompts, str) else results

    def stream(
        self,
        images: Any = None,
        prompt: str | None = None,
        *,
        video: Any = None,
        frames: int | None = None,
        max_new_tokens: int = 32,
        stop: str | list[str] | None = None,
        ignore_eos: bool = False,
        **options: Any,
    ) -> Iterator[str]:
        """Text of one prompt's answer, piece by piece as tokens arrive; the pieces join to
        `generate(...).text` (with the same options)."""
        cfg = self.generation_config(max_new_tokens=max_new_tokens, **options)
        images = self._with_video(images, prompt, video, frames, max_new_tokens)
        stop = stop_list(stop)
        inputs = self.processor.collate(self._rows(images, prompt, max_new_tokens))
        eos = self.tokenizer.eos_id
        text = StopStrings(self.tokenizer, stop, 1)  # fed by the engine, token by token
        stops = set() if ignore_eos else {eos}
        for out in engine.stream(self.model, inputs, cfg, stops, text):
            if piece := text.take(0):
                yield piece
            if out[0] is None or out[0] in stops:
                break
        if piece := text.take(0, final=True):
            yield piece

    # -- task outputs --------------------------------------------------------------------------
    def detect(
        self,
        image: Any,
        labels: str | list[str],
        *,
        max_new_tokens: int = 128,
        convention: str = "big_vision",
        **options: Any,
    ) -> ObjectList:
        """Boxes for `labels` ("detect cat ; dog"): a list of DetectedObject in pixels of the
        original image, with `.text` the raw answer (see `parse_objects`)."""
        return self._task("detect", image, labels, max_new_tokens, convention, options)

    def segment(
        self,
        image: Any,
        labels: str | list[str],
        *,
        max_new_tokens: int = 128,
        convention: str = "big_vision",
        **options: Any,
    ) -> ObjectList:
        """As `detect`, with "segment ..."; each valid object also gets `.mask` (bool[H, W]) and
        `.soft_mask` (float32[H, W]) decoded by the mask VQ-VAE and pasted into its box."""
        if self.mask_vae is None:
            raise ValueError(
                "segmentation needs the mask VQ-VAE (vae-oid.npz): put it in the checkpoint "
                "directory or pass mask_vae=PATH to paligemma.load"
            )
        return self._task("segment", image, labels, max_new_tokens, convention, options)

    def read_objects(
        self,
        task: str,
        text: str,
        width: int,
        height: int,
        convention: str = "big_vision",
        result: Result | None = None,
    ) -> ObjectList:
        """The objects in a generated answer, in pixels of a (width, height) image; for
        "segment", each valid object with codes also gets `.mask` and `.soft_mask`. With the
        `result` that generated `text`, each object gets `.score` (see `score_objects`)."""
        objects = parse_objects(text, width, height, convention)
        if result is not None and len(result.logprobs) == len(result.token_ids):
            score_objects(objects, self._loc_logprobs(result))
        todo = [o for o in objects if o.valid and o.seg_codes is not None]
        if task == "segment" and todo and self.mask_vae is not None:
            with torch.inference_mode():
                logits = self.mask_vae.decode(torch.tensor([o.seg_codes for o in todo]))
            for obj, m64 in zip(todo, logits, strict=True):
                obj.mask, obj.soft_mask = paste_mask(m64, obj.box, height, width)
        return objects

    def _task(self, task, image, labels, max_new_tokens, convention, options) -> ObjectList:
        image = load_image(image)
        prompt = task_prompt(task, labels)
        options = {"max_new_tokens": max_new_tokens, "logprobs": True, **options}  # the scores
        result = self.generate(image, prompt, **options)
        return self.read_objects(task, result.text, image.width, image.height, convention, result)

    def _loc_logprobs(self, result: Result) -> list[float]:
        """The log-probs of `result`'s <loc> tokens, in order."""
        if not hasattr(self, "_loc_ids"):
            ids = (self.tokenizer.token_to_id(f"<loc{k:04d}>") for k in range(NUM_LOC))
            self._loc_ids = {i for i in ids if i is not None}
        pairs = zip(result.token_ids, result.logprobs, strict=True)
        return [lp for t, lp in pairs if t in self._loc_ids]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The device asked for (default: the GPU when there is one), refused with a clear
    ValueError when this machine has none of that kind."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device name ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: this machine has no CUDA GPU (or torch no CUDA)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} GPU(s) here")
    return device


def _prepare_kernels(model: PaliGemma) -> None:
    """Build (once per machine) or load our CPU kernels now, not in the first request."""
    from .quant import kernels as cpu_kernels
    from .quant.linear import QUANTIZED

    if model.device.type == "cpu" and any(type(m) in QUANTIZED for m in model.modules()):
        cpu_kernels.available()


def load(
    source: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    *,
    tokenizer: str | os.PathLike | None = None,
    config: Any = None,
    mask_vae: str | os.PathLike | None = None,
    adapter: str | os.PathLike | None = None,
    quantize: str | None = None,
    reference: str | None = None,
) -> Pipeline:
    """A ready pipeline from a checkpoint directory, .npz or hub id (see `load_model`); with
    no source (or the name "embedded"), the embedded demo model that ships in the package
    (float32 by default: it is small, and float32 is both exact and fastest for it on a CPU).

    Defaults: bfloat16, on the GPU when there is one (on this project's 2-core AVX2 CPU,
    bfloat16 gives a 2.5x faster first token than float32, faster decoding and half the memory;
    pass dtype=torch.float32 for bit-exact reference numbers). `quantize`: "int8" | "int4"
    weight-only quantisation of the decoder (see `load_model`). The
    tokenizer is the checkpoint's `tokenizer.model` / `tokenizer.json` unless given; the mask
    VQ-VAE (for `segment`) is `vae-oid.npz` beside the weights unless given. `adapter`: a
    LoRA adapter directory (ours or peft's) applied on top of the base weights. `reference`:
    "transformers" | "big_vision" numerics for PaliGemma 2 (see `load_model`).
    """
    device = resolve_device(device)
    source, dtype = _source_and_dtype(source, dtype)
    path = resolve_source(source)
    directory = path if path.is_dir() else path.parent
    tok = Tokenizer(_tokenizer_path(directory, tokenizer, source))
    at_load = quantize if adapter is None else None  # tensor by tensor, as they are read
    model = load_model(
        path, dtype=dtype, device=device, config=config, reference=reference, quantize=at_load
    )
    if adapter is not None:
        load_adapter_(model, adapter)
    if quantize is not None and at_load is None:  # an adapter goes in before quantising
        from .quant.linear import quantize_

        quantize_(model, quantize)
    _prepare_kernels(model)
    _check_tokenizer(tok, model.cfg)
    pre = directory / "preprocessor_config.json"
    size = model.cfg.image_size
    transform = ImageTransform.from_file(pre, size) if pre.is_file() else ImageTransform(size)
    mask_vae = mask_vae if mask_vae is not None else find_mask_vae(directory)
    vae = load_mask_vae(mask_vae, device=device) if mask_vae is not None else None
    return Pipeline(model, Processor(tok, transform, model.cfg.num_image_tokens), vae)


def embedded_source(source):
    """`source`, or the embedded model's directory for no source or the name "embedded" (a
    local path of that name wins)."""
    if source is None or (str(source) in EMBEDDED_NAMES and not Path(source).exists()):
        if not (EMBEDDED_DIR / "config.json").is_file():
            raise FileNotFoundError(
                f"the embedded model is missing from {EMBEDDED_DIR}; reinstall the package or "
                "train it (python -m paligemma.demo.train --install)"
            )
        return EMBEDDED_DIR
    return source


def _source_and_dtype(source, dtype: torch.dtype | None) -> tuple[Any, torch.dtype]:
    """The checkpoint to read and its dtype: the embedded model is float32 by default (small,
    exact and fastest on a CPU); anything else bfloat16."""
    source = embedded_source(source)
    default = torch.float32 if source == EMBEDDED_DIR else torch.bfloat16
    return source, default if dtype is None else dtype


def _tokenizer_path(directory: Path, tokenizer, source) -> Path:
    path = Path(tokenizer) if tokenizer is not None else find_tokenizer(directory)
    if path is None:
        raise TokenizerError(
            f"checkpoint {source} has no tokenizer (tokenizer.model or tokenizer.json); "
            "pass tokenizer=PATH"
        )
    return path


def _check_tokenizer(tok: Tokenizer, cfg) -> None:
    """The tokenizer and the model agree on <image> and fit one embedding table."""
    if tok.image_id != cfg.image_token_id:
        raise TokenizerError(
            f"tokenizer's <image> is id {tok.image_id}, the model expects {cfg.image_token_id}"
        )
    if tok.vocab_size > cfg.text.vocab_size:
        raise TokenizerError(
            f"tokenizer has {tok.vocab_size} ids, the model's embedding only {cfg.text.vocab_size}"
        )
