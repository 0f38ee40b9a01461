"""The mask VQ-VAE: published npz layout, decoder/encoder against an independent numpy
reference, and pasting a 64x64 mask into its box as the reference evaluator does (PIL)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import paligemma
from paligemma.tasks.vqvae import crop_mask, paste_mask

# The 49 arrays of vae-oid.npz (names and shapes as big_vision's segmentation evaluator reads them).
RES = {
    "net.0.weight": (128, 128, 3, 3),
    "net.0.bias": (128,),
    "net.2.weight": (128, 128, 3, 3),
    "net.2.bias": (128,),
    "net.4.weight": (128, 128, 1, 1),
    "net.4.bias": (128,),
}
PUBLISHED = {
    "_vq_vae._embedding": (128, 512),
    "_vq_vae._ema_cluster_size": (128,),
    "_vq_vae._ema_w": (128, 512),
    "encoder.0.weight": (16, 1, 4, 4),
    "encoder.0.bias": (16,),
    "encoder.2.weight": (32, 16, 4, 4),
    "encoder.2.bias": (32,),
    "encoder.4.weight": (64, 32, 4, 4),
    "encoder.4.bias": (64,),
    "encoder.6.weight": (128, 64, 4, 4),
    "encoder.6.bias": (128,),
    **{f"encoder.8.{k}": v for k, v in RES.items()},
    **{f"encoder.9.{k}": v for k, v in RES.items()},
    "encoder.10.weight": (512, 128, 1, 1),
    "encoder.10.bias": (512,),
    "decoder.0.weight": (128, 512, 1, 1),
    "decoder.0.bias": (128,),
    **{f"decoder.2.{k}": v for k, v in RES.items()},
    **{f"decoder.3.{k}": v for k, v in RES.items()},
    "decoder.4.weight": (128, 128, 4, 4),
    "decoder.4.bias": (128,),
    "decoder.6.weight": (128, 64, 4, 4),
    "decoder.6.bias": (64,),
    "decoder.8.weight": (64, 32, 4, 4),
    "decoder.8.bias": (32,),
    "decoder.10.weight": (32, 16, 4, 4),
    "decoder.10.bias": (16,),
    "decoder.12.weight": (1, 16, 1, 1),
    "decoder.12.bias": (1,),
}


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    out = {}
    for name, shape in PUBLISHED.items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if (
            "decoder" in name and len(shape) == 4 and shape[2] == 4
        ):  # transposed conv: (in, out, k, k)
            fan_in = shape[0] * 4
        out[name] = (rng.randn(*shape) * (1.0 / np.sqrt(fan_in) if len(shape) > 1 else 0.1)).astype(
            np.float32
        )
    out["_vq_vae._embedding"] = rng.randn(128, 512).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae-oid.npz"
    np.savez(path, **random_weights())
    return path


def test_zeros_npz_has_the_published_file_size(tmp_path):
    """49 float32 arrays under exactly these names come to the size of the published file."""
    np.savez(tmp_path / "z.npz", **{k: np.zeros(v, np.float32) for k, v in PUBLISHED.items()})
    assert (tmp_path / "z.npz").stat().st_size == 8_479_556
    assert len(PUBLISHED) == 49


# -- an independent numpy reference -----------------------------------------------------------


def conv(x, w, b, stride=1, pad=0):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[2]
    ho, wo = (x.shape[2] - k) // stride + 1, (x.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(k):
        for j in range(k):
            patch = x[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def conv_transpose(x, w, b, stride=2, pad=1):
    k, (bsz, _, h, wd) = w.shape[2], x.shape
    full = np.zeros((bsz, w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k))
    for i in range(k):
        for j in range(k):
            full[:, :, i : i + stride * h : stride, j : j + stride * wd : stride] += np.einsum(
                "bchw,co->bohw", x, w[:, :, i, j]
            )
    return full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad] + b[None, :, None, None]


def relu(x):
    return np.maximum(x, 0)


def resblock(x, p, prefix):
    h = relu(conv(x, p[prefix + "net.0.weight"], p[prefix + "net.0.bias"], pad=1))
    h = relu(conv(h, p[prefix + "net.2.weight"], p[prefix + "net.2.bias"], pad=1))
    return x + conv(h, p[prefix + "net.4.weight"], p[prefix + "net.4.bias"])


def ref_decode(codes, p):
    x = p["_vq_vae._embedding"][codes].reshape(-1, 4, 4, 512).transpose(0, 3, 1, 2)
    x = relu(conv(x, p["decoder.0.weight"], p["decoder.0.bias"]))
    x = resblock(resblock(x, p, "decoder.2."), p, "decoder.3.")
    for i in (4, 6, 8, 10):
        x = relu(conv_transpose(x, p[f"decoder.{i}.weight"], p[f"decoder.{i}.bias"]))
    return conv(x, p["decoder.12.weight"], p["decoder.12.bias"])[:, 0]


def ref_encode(masks, p):
    x = (2 * masks - 1)[:, None]
    for i in (0, 2, 4, 6):
        x = relu(conv(x, p[f"encoder.{i}.weight"], p[f"encoder.{i}.bias"], stride=2, pad=1))
    x = resblock(resblock(x, p, "encoder.8."), p, "encoder.9.")
    z = conv(x, p["encoder.10.weight"], p["encoder.10.bias"])  # (B, 512, 4, 4)
    z = z.transpose(0, 2, 3, 1).reshape(-1, 512)
    e = p["_vq_vae._embedding"].astype(np.float64)
    dist = ((z[:, None, :] - e[None]) ** 2).sum(-1)
    return dist.argmin(1).reshape(-1, 16)


# -- tests ------------------------------------------------------------------------------------


def test_decoder_matches_numpy_reference(npz):
    vae = paligemma.load_mask_vae(npz)
    rng = np.random.RandomState(1)
    codes = rng.randint(0, 128, (3, 16))
    with torch.no_grad():
        got = vae.decode(torch.tensor(codes)).numpy()
    want = ref_decode(codes, random_weights())
    assert got.shape == (3, 64, 64)
    assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    assert want.std() > 1e-3  # a non-trivial output


def test_encoder_and_nearest_code_match_numpy_reference(npz):
    vae = paligemma.load_mask_vae(npz)
    yy, xx = np.mgrid[:64, :64]
    masks = np.stack([((yy - 30) ** 2 + (xx - 20) ** 2 < 300), (yy > xx), np.zeros((64, 64))])
    masks = masks.astype(np.float32)
    with torch.no_grad():
        codes = vae.encode(torch.tensor(masks)).numpy()
    assert codes.shape == (3, 16) and codes.dtype == np.int64
    assert np.array_equal(codes, ref_encode(masks, random_weights()))


def test_quantize_decode_round_trip(npz):
    """Codebook vectors laid out on the 4x4 grid quantise back to their own codes, and decoding
    those codes is what the decoder gives for that grid."""
    vae = paligemma.load_mask_vae(npz)
    codes = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    grid = vae.codebook[codes].view(2, 4, 4, 512).permute(0, 3, 1, 2)
    with torch.no_grad():
        assert torch.equal(vae.quantize(grid), codes)
        assert torch.allclose(vae.decode(codes), vae.decoder(grid)[:, 0])


def test_safetensors_and_strict_keys(npz, tmp_path):
    from safetensors.torch import save_file

    weights = {k: torch.from_numpy(v) for k, v in random_weights().items()}
    save_file(weights, tmp_path / "vae.safetensors")
    a, b = paligemma.load_mask_vae(npz), paligemma.load_mask_vae(tmp_path / "vae.safetensors")
    codes = torch.arange(16)[None]
    with torch.no_grad():
        assert torch.equal(a.decode(codes), b.decode(codes))
    del weights["decoder.12.bias"]
    save_file(weights, tmp_path / "broken.safetensors")
    with pytest.raises(paligemma.CheckpointError, match=r"decoder\.12\.bias"):
        paligemma.load_mask_vae(tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match="codes must lie"):
        a.decode(torch.full((1, 16), 128))


def reference_paste(m64: np.ndarray, box, h, w) -> np.ndarray:
    """big_vision's evaluator: PIL float image resized BILINEAR into the box, threshold > 0."""
    x0, y0, x1, y1 = box
    out = np.zeros((h, w), bool)
    resized = Image.fromarray(m64.astype(np.float32), mode="F").resize(
        (x1 - x0, y1 - y0), Image.BILINEAR
    )
    out[y0:y1, x0:x1] = np.asarray(resized) > 0.0
    return out


@pytest.mark.parametrize(
    "box",
    [(10, 20, 250, 190), (5, 5, 37, 29), (0, 0, 300, 200), (100, 50, 164, 114), (3, 100, 290, 120)],
)
def test_pasted_mask_matches_reference_evaluator(box):
    h, w = 200, 300
    yy, xx = np.mgrid[:64, :64] / 63.0
    for m64 in (
        np.sin(7 * xx) * np.cos(5 * yy) + 0.2,
        0.6 - ((yy - 0.4) ** 2 + (xx - 0.6) ** 2) * 4,
    ):
        mask, soft = paste_mask(torch.tensor(m64, dtype=torch.float32), box, h, w)
        want = reference_paste(m64, box, h, w)
        iou = (mask & want).sum() / max((mask | want).sum(), 1)
        assert iou >= 0.99, (box, iou)
        assert not mask[: box[1]].any() and not mask[:, box[2] :].any()  # nothing outside the box
        assert soft.min() >= 0 and soft.max() <= 1 and ((soft > 0.5) == mask).mean() > 0.99


def test_crop_then_encode_for_training_targets(npz):
    vae = paligemma.load_mask_vae(npz)
    full = np.zeros((120, 200), bool)
    full[30:90, 50:150] = True
    m64 = crop_mask(full, (50, 30, 150, 90))
    assert tuple(m64.shape) == (64, 64) and float(m64.min()) > 0.999  # the box is all mask
    codes = vae.encode(m64[None])
    assert codes.shape == (1, 16)
    assert paligemma.mask_to_codes(vae, full, (50, 30, 150, 90)) == codes[0].tolist()
    with pytest.raises(ValueError, match="empty"):
        crop_mask(full, (50, 30, 50, 90))
