"""How far transformers' and big_vision's PaliGemma 2 computations are apart (not a test).

    python benchmarks/reference_gap.py

A small random Gemma 2 PaliGemma (4 layers, width 64, 16 image tokens) whose sliding window
(8 tokens) is shorter than its sequences (16 image tokens + 8 prefix + 24 suffix tokens), with
the published soft-caps (attention 50, logits 30). The same weights are run three ways from one
checkpoint: reference="transformers" (window on layers 0 and 2, logits capped), and
reference="big_vision" (no window, no final cap), plus each difference alone. Prints, over the
suffix positions: the largest logit difference, the mean, and how often the argmax agrees.
"""

from __future__ import annotations

import dataclasses
import json

import torch

import paligemma
from paligemma.config import with_reference


def small_pg2() -> paligemma.PaliGemma:
    """PaliGemma 2 3B's decoder facts (caps, post-norms) at a tiny size, an 8-token window."""
    published = paligemma.CONFIGS["paligemma2-3b-224"].text
    shrunk = dict(width=64, depth=4, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)
    text = dataclasses.replace(
        published, **shrunk, vocab_size=300, sliding_window=8, query_pre_attn_scalar=16
    )
    cfg = dataclasses.replace(paligemma.TINY, text=text, image_size=56)  # 16 image tokens
    torch.manual_seed(0)
    model = paligemma.PaliGemma(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.2)
    return model


def variant(model: paligemma.PaliGemma, **text) -> paligemma.PaliGemma:
    """The same weights with some decoder config fields replaced."""
    cfg = dataclasses.replace(model.cfg, text=dataclasses.replace(model.cfg.text, **text))
    other = paligemma.PaliGemma(cfg).eval()
    other.load_state_dict(model.state_dict())
    return other


def main() -> None:
    model = small_pg2()
    g = torch.Generator().manual_seed(1)
    image, prefix, suffix = model.cfg.num_image_tokens, 8, 24
    ids = torch.randint(5, 290, (4, image + prefix + suffix), generator=g)
    ids[:, :image] = model.cfg.image_token_id
    types = torch.zeros_like(ids)
    types[:, image + prefix :] = 1
    px = torch.rand(4, 3, 56, 56, generator=g) * 2 - 1
    bv_text = with_reference(model.cfg, "big_vision").text
    runs = {
        "big_vision (no window, no final cap)": variant(model, **dataclasses.asdict(bv_text)),
        "no window only": variant(model, sliding_window=None),
        "no final cap only": variant(model, final_softcap=None),
    }
    with torch.no_grad():
        want = model(ids, px, None, types)[:, image + prefix :]
        report = {}
        for name, other in runs.items():
            got = other(ids, px, None, types)[:, image + prefix :]
            diff = (got - want).abs()
            report[name] = {
                "max_abs_logit_diff": round(diff.max().item(), 3),
                "mean_abs_logit_diff": round(diff.mean().item(), 4),
                "argmax_agreement": round(
                    (got.argmax(-1) == want.argmax(-1)).float().mean().item(), 3
                ),
                "max_abs_logit": round(want.abs().max().item(), 2),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
