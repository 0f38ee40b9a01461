"""Tokenizer and processor: equal to transformers' GemmaTokenizer / PaliGemmaProcessor."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import IMAGE_TOKENS, hf_processor
from PIL import Image

import paligemma
from paligemma.processor import ImageError, ImageTransform, Processor, check_pixels, load_image

TEXTS = ["caption en", "answer en what color is the triangle?", "", "Ünïcödé  spaces\tand 12345"]


def images(n: int, seed: int = 0) -> list[Image.Image]:
    """Odd sizes and every colour mode the processor has to convert."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        a = rng.randint(0, 256, (20 + 7 * i, 45 - 3 * i, 4), dtype=np.uint8)
        mode = ["RGB", "RGBA", "L", "P"][i % 4]
        im = Image.fromarray(a, "RGBA").convert(mode)
        out.append(im)
    return out


@pytest.fixture(scope="module")
def ours(pipeline_dir):
    return paligemma.load(pipeline_dir, dtype=torch.float32, device="cpu")


def test_tokenizer_matches_transformers(ours, pipeline_dir):
    from transformers import GemmaTokenizer

    hf = GemmaTokenizer.from_pretrained(pipeline_dir)
    tok = ours.tokenizer
    for text in [*TEXTS, "<loc0012><loc1023> cat ; <seg077>", "line\n\nbreaks \n"]:
        assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.loc_id(12) == hf.convert_tokens_to_ids("<loc0012>")
    assert tok.seg_id(127) == hf.convert_tokens_to_ids("<seg127>")
    assert tok.image_id == hf_processor(pipeline_dir).image_token_id  # appended after the vocab
    ids = tok.encode("a red <loc0001> circle 🙂")
    assert tok.decode([tok.bos_id, *ids, tok.eos_id]) == "a red <loc0001> circle 🙂"


def test_tokenizer_json_only(ours, pipeline_dir, tmp_path):
    """A checkpoint that ships only tokenizer.json tokenizes the same."""
    from transformers import GemmaTokenizer

    GemmaTokenizer.from_pretrained(pipeline_dir).save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    tok = paligemma.Tokenizer(tmp_path / "tokenizer.json")
    for text in TEXTS:
        assert tok.encode(text) == ours.tokenizer.encode(text)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    assert tok.decode(ours.tokenizer.encode("red <loc0005> x")) == "red <loc0005> x"


@pytest.mark.parametrize("with_suffix", [False, True], ids=["prompt", "suffix"])
def test_processor_matches_transformers(ours, pipeline_dir, with_suffix):
    hf = hf_processor(pipeline_dir)
    ims = images(len(TEXTS))
    suffix = ["a cat", "yellow", "x", "long suffix with words"] if with_suffix else None
    want = hf(images=ims, text=TEXTS, suffix=suffix, padding="longest", return_tensors="pt")
    got = ours.processor(images=ims, text=TEXTS, suffix=suffix)
    keys = {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    assert keys <= set(got)
    assert ("labels" in got) == with_suffix
    for key in sorted(set(got)):
        assert torch.equal(got[key], want[key]), key
    assert got["pixel_values"].dtype == torch.float32
    assert got["input_ids"].shape[0] == len(TEXTS)


def test_processor_several_images_per_prompt_and_explicit_markers(ours, pipeline_dir):
    hf = hf_processor(pipeline_dir)
    ims = images(3)
    want = hf(
        images=[ims[:2], ims[2:]],
        text=["<image><image>compare", "<image>caption en"],
        padding="longest",
        return_tensors="pt",
    )
    got = ours.processor(
        images=[ims[:2], ims[2:]], text=["<image><image>compare", "<image>caption en"]
    )
    for key in ("input_ids", "attention_mask", "token_type_ids", "pixel_values"):
        assert torch.equal(got[key], want[key]), key
    assert int((got["input_ids"][0] == ours.tokenizer.image_id).sum()) == 2 * IMAGE_TOKENS
    with pytest.raises(ValueError, match="markers"):
        ours.processor(images=[ims[:2]], text=["<image>one marker, two images"])


def test_image_inputs_of_every_kind(tmp_path):
    rgb = images(1)[0].convert("RGB")
    path = tmp_path / "im.png"
    rgb.save(path)
    transform = ImageTransform(28)
    want = transform(rgb)
    for source in (path, str(path), path.read_bytes(), rgb, np.asarray(rgb)):
        assert np.array_equal(transform(paligemma.load_image(source)), want), type(source)
    as_float = np.asarray(rgb).astype(np.float32) / 255
    assert np.array_equal(transform(paligemma.load_image(as_float)), want)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, :5] = 255  # white stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", exif=exif, quality=100)
    shown = paligemma.load_image(buf.getvalue())
    assert shown.size == (10, 30)  # rotated: portrait
    assert np.asarray(shown)[:5].mean() > 200  # the stripe is now at the top


def test_grayscale_palette_rgba_become_rgb():
    for im in images(4):
        out = paligemma.load_image(im)
        assert out.mode == "RGB" and out.size == im.size
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(paligemma.load_image(transparent)).min() == 255  # composited on white


def test_processor_validates_its_inputs(ours):
    im = images(1)
    with pytest.raises(ValueError, match="2 suffixes for 1 prompts"):
        ours.processor(images=im, text=["a"], suffix=["x", "y"])
    with pytest.raises(ValueError, match="image groups"):
        ours.processor(images=im * 2, text=["a", "b", "c"])
    with pytest.raises(ValueError, match="needs an image"):
        ours.processor(images=None, text=["a"])
    with pytest.raises(ValueError, match="only appear at the start"):
        ours.processor(images=im, text=["a <image> b"])
    assert isinstance(ours.processor, Processor)


def test_one_pixel_guard_names_the_size_and_the_limit():
    check_pixels(100, 100, limit=10_000)  # at the limit: allowed
    with pytest.raises(
        ImageError, match="image is 101x100 = 10,100 pixels, above the limit of 10,000"
    ):
        check_pixels(101, 100, limit=10_000)
    with pytest.raises(ImageError, match="above the limit of 100,000,000"):  # the default
        check_pixels(10_001, 10_000)
    with pytest.raises(ImageError, match="image is 40x30 = 1,200 pixels, above the limit of 1,000"):
        load_image(Image.new("RGB", (40, 30)), max_pixels=1_000)
