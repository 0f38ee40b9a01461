"""The mask VQ-VAE of PaliGemma segmentation: 16 `<segNNN>` codes <-> a 64x64 mask.

Architecture and parameter names are those of the published `vae-oid.npz` (AiT's VQ-VAE trained
on OpenImages masks), so that file loads as it is, strictly:

    codes int[B, 16] -> codebook (128 x 512) -> (B, 512, 4, 4), code t at row t // 4, col t % 4
    decoder: 1x1 conv 512->128, ReLU, 2 ResBlocks(128), 4 x [ConvTranspose 4/2/1, ReLU]
             (128->128->64->32->16, 4->64 px), 1x1 conv 16->1          -> logits float[B, 64, 64]
    encoder: 4 x [Conv 4/2/1, ReLU] (1->16->32->64->128, 64->4 px), 2 ResBlocks(128), 1x1 conv
             128->512, then the nearest codebook entry (L2) at each of the 4x4 positions

Masks are normalised to [-1, 1] (2m - 1) on the way in; decoder outputs live on the same scale,
so the mask boundary is logit 0 (probability 0.5 after 0.5 x + 0.5).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

NUM_CODES = 128
CODE_DIM = 512
MASK_SIZE = 64


class ResBlock(nn.Module):
    """x + net(x), net = conv3x3, ReLU, conv3x3, ReLU, conv1x1 (no activation after the add)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Quantizer(nn.Module):
    """Holds the codebook under the npz's names; EMA statistics are kept only to load strictly."""

    def __init__(self) -> None:
        super().__init__()
        self._embedding = nn.Parameter(torch.zeros(NUM_CODES, CODE_DIM))
        self.register_buffer("_ema_cluster_size", torch.zeros(NUM_CODES))
        self.register_buffer("_ema_w", torch.zeros(NUM_CODES, CODE_DIM))


class MaskVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        up = lambda i, o: [nn.ConvTranspose2d(i, o, 4, stride=2, padding=1), nn.ReLU()]  # noqa: E731
        down = lambda i, o: [nn.Conv2d(i, o, 4, stride=2, padding=1), nn.ReLU()]  # noqa: E731
        self.encoder = nn.Sequential(
            *down(1, 16),
            *down(16, 32),
            *down(32, 64),
            *down(64, 128),
            ResBlock(128),
            ResBlock(128),
            nn.Conv2d(128, CODE_DIM, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(CODE_DIM, 128, 1),
            nn.ReLU(),
            ResBlock(128),
            ResBlock(128),
            *up(128, 128),
            *up(128, 64),
            *up(64, 32),
            *up(32, 16),
            nn.Conv2d(16, 1, 1),
        )
        self._vq_vae = Quantizer()

    @property
    def codebook(self) -> torch.Tensor:
        return self._vq_vae._embedding  # (128, 512)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """int[B, 16] codes in [0, 128) -> float[B, 64, 64] mask logits (boundary at 0)."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.codebook.device)
        if codes.ndim != 2 or codes.shape[1] != 16:
            raise ValueError(f"expected codes of shape [B, 16], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= NUM_CODES):
            raise ValueError(f"codes must lie in [0, {NUM_CODES})")
        return self.decoder(self.lookup(codes))[:, 0]  # (B, 64, 64)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """int[B, 16] codes -> their codebook rows as the decoder's input float[B, 512, 4, 4]
        (row-major grid). F.embedding, not codebook[codes]: its backward sums the gradients of
        repeated codes in a fixed order, so training repeats bit for bit on several threads."""
        x = F.embedding(codes, self.codebook)  # (B, 16, 512)
        return x.view(-1, 4, 4, CODE_DIM).permute(0, 3, 1, 2)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder output float[B, 512, 4, 4] -> nearest codebook entries int[B, 16] (L2)."""
        z = z.permute(0, 2, 3, 1).reshape(-1, CODE_DIM)  # (B*16, 512), row-major grid
        e = self.codebook
        dist = z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * z @ e.T  # (B*16, 128)
        return dist.argmin(1).view(-1, 16)

    def encode(self, masks: torch.Tensor) -> torch.Tensor:
        """float[B, 64, 64] masks in [0, 1] -> int[B, 16] codes."""
        masks = torch.as_tensor(masks, dtype=self.codebook.dtype, device=self.codebook.device)
        if masks.ndim != 3 or masks.shape[1:] != (MASK_SIZE, MASK_SIZE):
            raise ValueError(f"expected masks of shape [B, 64, 64], got {tuple(masks.shape)}")
        return self.quantize(self.encoder(2 * masks[:, None] - 1))


def load_mask_vae(path: str | os.PathLike, device: torch.device | str = "cpu") -> MaskVAE:
    """The VQ-VAE from `vae-oid.npz` (published key names) or a .safetensors with the same names."""
    from ..checkpoints.names import CheckpointError, check_keys

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no mask VQ-VAE at {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                state = {k: torch.from_numpy(np.asarray(f[k], dtype=np.float32)) for k in f.files}
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable .npz ({e})") from None
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = {k: v.float() for k, v in load_file(str(path)).items()}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    vae = MaskVAE()
    check_keys({k: v.shape for k, v in vae.state_dict().items()}, state)
    vae.load_state_dict(state, strict=True)
    return vae.to(device).eval()


def paste_mask(
    logits: torch.Tensor, box: tuple[int, int, int, int], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Put a 64x64 mask into its pixel box of a (height, width) image.

    logits float[64, 64]; box (x_min, y_min, x_max, y_max) in pixels. Returns (bool[H, W] mask,
    float32[H, W] soft mask in [0, 1]). As the reference evaluator does: bilinear resize of the
    logits to the box (antialiased when shrinking, like PIL), threshold at 0; nothing outside.
    """
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), dtype=bool)
    soft = np.zeros((height, width), dtype=np.float32)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return mask, soft
    resized = F.interpolate(
        logits.detach().float().cpu()[None, None],
        size=(y1 - y0, x1 - x0),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[0, 0]
    mask[y0:y1, x0:x1] = (resized > 0).numpy()
    soft[y0:y1, x0:x1] = (0.5 * resized + 0.5).clamp(0, 1).numpy()
    return mask, soft


def crop_mask(mask: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The training-side inverse: a full-size mask cropped to its box, resized to float[64, 64]
    (bilinear, antialiased) in [0, 1], ready for `MaskVAE.encode`."""
    x0, y0, x1, y1 = box
    crop = torch.as_tensor(np.asarray(mask, dtype=np.float32))[y0:y1, x0:x1]
    if crop.numel() == 0:
        raise ValueError(f"box {box} is empty inside a mask of shape {mask.shape}")
    size = (MASK_SIZE, MASK_SIZE)
    return F.interpolate(
        crop[None, None], size=size, mode="bilinear", align_corners=False, antialias=True
    )[0, 0].clamp(0, 1)


def mask_to_codes(vae: MaskVAE, mask: np.ndarray, box: tuple[int, int, int, int]) -> list[int]:
    """The 16 codes of an object's full-size bool/float mask within its pixel box, for building
    segmentation training suffixes (`objects_to_suffix(..., seg_codes=...)`)."""
    with torch.no_grad():
        return vae.encode(crop_mask(mask, box)[None].to(vae.codebook.device))[0].tolist()
