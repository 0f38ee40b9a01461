"""Shared fixtures: tiny random PaliGemma 1 / 2 models in transformers (the reference)."""

from __future__ import annotations

import pytest
import torch

VOCAB = 300
IMAGE_ID = VOCAB - 1  # inside the vocabulary, as in the tiny oracle of ARCHITECTURE.md §10
IMAGE_TOKENS = 4  # 28 px / 14 px patches -> 2 x 2


def tiny_hf_config(v2: bool):
    from transformers import PaliGemmaConfig

    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=14,
        vision_use_head=False,
    )
    if v2:  # window and caps small enough that they change the numbers
        text = dict(
            model_type="gemma2",
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=6,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
    else:
        text = dict(
            model_type="gemma",
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
        )
    return PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_ID,
        projection_dim=64,
        vocab_size=VOCAB,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )


def tiny_hf_model(v2: bool, seed: int = 0):
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    m = PaliGemmaForConditionalGeneration._from_config(
        tiny_hf_config(v2), attn_implementation="eager"
    )
    with torch.no_grad():  # norms start at 0 (i.e. 1 + w = 1): perturb to test the convention
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
            elif "language_model" in name and ("q_proj" in name or "k_proj" in name):
                p.mul_(12.0)  # attention scores of several units, so the soft-cap bites
    return m.eval()


@pytest.fixture(scope="session", params=[False, True], ids=["pg1", "pg2"])
def hf_checkpoint(request, tmp_path_factory):
    """(transformers model, directory it was saved to with save_pretrained)."""
    model = tiny_hf_model(request.param, seed=1 + request.param)
    path = tmp_path_factory.mktemp("pg2" if request.param else "pg1")
    model.save_pretrained(path)
    return model, path


def make_batch(seed: int = 0):
    """3 left-padded rows with different prompt and suffix lengths.

    Returns input_ids, attention_mask, token_type_ids (int64 [3, T]), pixel_values [3, 3, 28, 28].
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prompt_len, suffix_len in ((3, 2), (6, 4), (1, 1)):
        prompt = torch.randint(5, IMAGE_ID, (prompt_len,), generator=g).tolist()
        suffix = torch.randint(5, IMAGE_ID, (suffix_len,), generator=g).tolist()
        ids = [IMAGE_ID] * IMAGE_TOKENS + [2, *prompt, 108 % VOCAB] + suffix
        types = [0] * (len(ids) - suffix_len) + [1] * suffix_len
        rows.append((ids, types))
    t = max(len(ids) for ids, _ in rows)
    input_ids = torch.zeros(3, t, dtype=torch.long)
    attention_mask = torch.zeros(3, t, dtype=torch.long)
    token_type_ids = torch.zeros(3, t, dtype=torch.long)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, t - len(ids) :] = torch.tensor(ids)
        attention_mask[i, t - len(ids) :] = 1
        token_type_ids[i, t - len(ids) :] = torch.tensor(types)
    pixel_values = torch.randn(3, 3, 28, 28, generator=g)
    return input_ids, attention_mask, token_type_ids, pixel_values
