"""Training the demo model's mask VQ-VAE (the published architecture, `tasks.vqvae.MaskVAE`)
on the synthetic generator's object masks: the second stage of `python -m paligemma.demo.train`.

Shapes: B masks, C = 512 code width, 4 x 4 code grid, 128 codebook entries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints.safetensors_io import write_safetensors
from ..tasks.vqvae import MaskVAE, crop_mask
from . import synthetic


def object_masks(rng: np.random.Generator, n: int) -> torch.Tensor:
    """float[n, 64, 64]: generator objects cropped to their boxes, as segmentation targets are."""
    out: list[torch.Tensor] = []
    while len(out) < n:
        scene = synthetic.make_scene(rng)
        out += [crop_mask(t.mask, t.box) for t in scene.things]
    return torch.stack(out[:n])


def train_mask_vae(
    path: Path,
    steps: int = 600,
    batch: int = 64,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """VQ-VAE (published layout) trained on generator masks: MSE on the [-1, 1] scale, codebook
    and 0.25 x commitment losses, straight-through codes; codebook seeded from encoder outputs.
    Writes `path` (.safetensors, the npz's key names); returns the held-out mask IoU."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 11])
    vae = MaskVAE().to(device)
    with torch.no_grad():  # seed the codebook with encoder outputs of real masks
        z = vae.encoder(2 * object_masks(rng, 64)[:, None].to(device) - 1).permute(0, 2, 3, 1)
        z = z.reshape(-1, vae.codebook.shape[1])  # (64 * 16, C)
        vae.codebook.copy_(z[torch.randperm(len(z))[: vae.codebook.shape[0]]])
    opt = torch.optim.Adam(vae.parameters(), lr=3e-4)
    for step in tqdm(range(steps), desc="mask VQ-VAE", disable=not progress):
        masks = object_masks(rng, batch).to(device)
        target = 2 * masks[:, None] - 1  # (B, 1, 64, 64)
        z = vae.encoder(target)  # (B, C, 4, 4)
        codes = vae.quantize(z.detach())  # (B, 16)
        e = vae.lookup(codes)  # (B, C, 4, 4)
        quantized = z + (e - z).detach()  # straight-through
        recon = vae.decoder(quantized)
        loss = (
            F.mse_loss(recon, target) + F.mse_loss(e, z.detach()) + 0.25 * F.mse_loss(z, e.detach())
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 99:
            _revive_unused_codes(vae, codes, z)
    vae = vae.eval().cpu()
    iou = _held_out_iou(vae, seed)
    write_safetensors({k: v.contiguous() for k, v in vae.state_dict().items()}, path)
    return {"mask_iou": iou}


def _revive_unused_codes(vae: MaskVAE, codes: torch.Tensor, z: torch.Tensor) -> None:
    """Codebook entries no mask of the batch used (codes int[B, 16]) move to random encoder
    outputs of the batch (z float[B, C, 4, 4])."""
    with torch.no_grad():
        used = torch.zeros(vae.codebook.shape[0], dtype=torch.bool, device=z.device)
        used[codes.flatten()] = True
        dead = (~used).nonzero()[:, 0]
        zs = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B * 16, C)
        vae.codebook[dead] = zs[torch.randint(len(zs), (len(dead),))]


def _held_out_iou(vae: MaskVAE, seed: int) -> float:
    """Mean IoU of 256 held-out masks and their reconstructions through the codes."""
    with torch.no_grad():
        masks = object_masks(np.random.default_rng([seed, 13]), 256)
        recon = vae.decode(vae.encode(masks)) > 0
        truth = masks > 0.5
        iou = ((recon & truth).sum((1, 2)) / (recon | truth).sum((1, 2)).clamp(min=1)).mean()
    return float(iou)
