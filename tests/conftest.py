"""Shared fixtures: tiny random PaliGemma 1 / 2 models in transformers (the reference)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import paligemma

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def bench_module(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (the folder is no package)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


VOCAB = 300
IMAGE_ID = VOCAB - 1  # inside the vocabulary, as transformers' own tiny PaliGemma tests place it
IMAGE_TOKENS = 4  # 28 px / 14 px patches -> 2 x 2
LIVELY = ("o_proj", "up_proj", "down_proj")


def tiny_hf_config(v2: bool, vocab: int = VOCAB, image_id: int = IMAGE_ID):
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
            vocab_size=vocab,
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
            vocab_size=vocab,
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
        image_token_index=image_id,
        projection_dim=64,
        vocab_size=vocab,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )


def tiny_hf_model(
    v2: bool, seed: int = 0, vocab: int = VOCAB, image_id: int = IMAGE_ID, lively: bool = False
):
    """Random tiny model. lively: large attention/MLP outputs, so that the residual stream is
    not dominated by the current token's own (tied) embedding; otherwise greedy decoding of a
    random model repeats one token forever, and generation tests would prove little."""
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = tiny_hf_config(v2, vocab, image_id)
    m = PaliGemmaForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # norms start at 0 (i.e. 1 + w = 1): perturb to test the convention
        for name, p in m.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
            elif "language_model" in name and ("q_proj" in name or "k_proj" in name):
                p.mul_(12.0)  # attention scores of several units, so the soft-cap bites
            elif lively and "language_model" in name and name.split(".")[-2] in LIVELY:
                p.normal_(0.0, 0.3)
    return m.eval()


@pytest.fixture(scope="session", params=[False, True], ids=["pg1", "pg2"])
def hf_checkpoint(request, tmp_path_factory):
    """(transformers model, directory it was saved to with save_pretrained)."""
    model = tiny_hf_model(request.param, seed=1 + request.param)
    path = tmp_path_factory.mktemp("pg2" if request.param else "pg1")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="session", params=[False, True], ids=["pg1", "pg2"])
def lively_checkpoint(request, tmp_path_factory):
    """A lively tiny PaliGemma 1 / 2 (seed 3) saved with save_pretrained: its directory."""
    path = tmp_path_factory.mktemp("lively-pg2" if request.param else "lively-pg1")
    tiny_hf_model(request.param, seed=3, lively=True).save_pretrained(path)
    return path


def decode_logits(model, batch: int, steps: int) -> list[torch.Tensor]:
    """Logits of a prefill of make_batch's first `batch` rows and `steps` decode steps fed the
    same random tokens (seeded): one [batch, V] tensor a step."""
    from paligemma import generate as engine

    ids, mask, types, pixels = (t[:batch] for t in make_batch(seed=batch))
    inputs = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, pixel_values=pixels)
    _, cache, logits = engine._prefill(model, inputs, steps)
    out, g = [logits], torch.Generator().manual_seed(0)
    for _ in range(steps):
        tokens = torch.randint(5, 290, (batch,), generator=g)
        out.append(engine._step(model, cache, tokens))
    return out


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


# ---------------------------------------------------------------------------------------------
# A small SentencePiece tokenizer with Gemma's special-token layout, trained at test time.

CORPUS = [
    "caption en a red circle on a blue square",
    "answer en what color is the triangle? yellow",
    "detect cat ; dog",
    "segment the yellow square",
    "how many shapes are there? 3",
    "A photo of 2 cats and 1 dog.",
    "Ünïcödé text — with dashes, 日本語 and emoji 🙂",
    "ocr the sign says STOP",
    "question en where is it? on the left",
]


def train_tokenizer(path) -> None:
    """tokenizer.model: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>, 1024 <loc>, 128 <seg>, byte
    fallback, no dummy prefix (as Gemma's). Like the published model it has no <image> piece:
    <image> is the next id, for transformers and for us."""
    from pathlib import Path

    from paligemma.demo.tokenizer import train_sentencepiece

    specials = (
        ["<mask>"] + [f"<loc{i:04d}>" for i in range(1024)] + [f"<seg{i:03d}>" for i in range(128)]
    )
    train_sentencepiece(Path(path), CORPUS * 20, specials, 1600)


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(path)
    return path


@pytest.fixture(scope="session", params=[False, True], ids=["pg1", "pg2"])
def pipeline_dir(request, tokenizer_file, tmp_path_factory):
    """A checkpoint directory as published: tiny random model + tokenizer.model."""
    import shutil

    import sentencepiece as spm

    image_id = spm.SentencePieceProcessor(model_file=str(tokenizer_file)).vocab_size()
    vocab = (image_id + 1 + 63) // 64 * 64  # padded like the real 257216
    model = tiny_hf_model(request.param, 3 + request.param, vocab, image_id, lively=True)
    path = tmp_path_factory.mktemp("pipe-pg2" if request.param else "pipe-pg1")
    model.save_pretrained(path)
    shutil.copy(tokenizer_file, path / "tokenizer.model")
    return path


def hf_processor(path):
    """transformers' PaliGemmaProcessor for a pipeline_dir (PIL image backend)."""
    from transformers import GemmaTokenizer, PaliGemmaProcessor, SiglipImageProcessorPil

    image = SiglipImageProcessorPil(
        size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3, resample=3
    )
    image.image_seq_length = IMAGE_TOKENS
    return PaliGemmaProcessor(image_processor=image, tokenizer=GemmaTokenizer.from_pretrained(path))


@pytest.fixture(scope="session")
def embedded_pipe():
    """The embedded demo model (float32), loaded once for the tests that only read it."""
    return paligemma.load()


def spy_taken(patch, cls, name: str) -> list[bool]:
    """Wraps cls.<name> through `patch` (a monkeypatch or its context); the list gets, per call,
    whether it returned something (a plan or a result: the fast path taken)."""
    taken, method = [], getattr(cls, name)

    def spy(self, *args):
        out = method(self, *args)
        taken.append(out is not None)
        return out

    patch.setattr(cls, name, spy)
    return taken


def amx_bf16() -> bool:
    """dequant.cpp's AMX-BF16 GEMMs (dequant_mm, bf16_mm, bf16_geglu) can run here; where they
    cannot, the CPU lacks a flag for them."""
    from paligemma.quant import kernels as cpu_kernels

    assert cpu_kernels.available(), cpu_kernels.why_not()
    has = bool(torch.ops.paligemma_cpu.cpu_amx_bf16())
    flags = Path("/proc/cpuinfo").read_text() if has else ""
    assert not has or all(f in flags for f in ("amx_bf16", "amx_tile", "avx512_bf16"))
    return has


def fused_taken(run, calls: list, monkeypatch, module: ModuleType, switch: str):
    """A check for a fused CPU call that stands in for several ops: taken(x, grad=False) runs
    run(x) (a tensor or a list of them) with `module.switch` as it is, then off, asserts both
    give the same bits, and says whether the fused call ran (`calls`: what the patched op
    appended on the first run)."""

    def taken(x: torch.Tensor, grad: bool = False) -> bool:
        calls.clear()
        with torch.set_grad_enabled(grad):
            got = run(x)
            fused = any(calls)
            with monkeypatch.context() as off:
                off.setattr(module, switch, False)
                want = run(x)
        pairs = zip(*(t if isinstance(t, list) else [t] for t in (got, want)), strict=True)
        assert all(torch.equal(a.view(torch.int16), b.view(torch.int16)) for a, b in pairs)
        return fused

    return taken


def assert_hooks_step_aside(taken, x: torch.Tensor, modules) -> None:
    """A forward hook on any of `modules`, or one set for every module, keeps the fused call
    (`fused_taken`'s check) from running: each hook would be skipped by it."""
    for module in modules:
        hook = module.register_forward_hook(lambda *_: None)
        assert not taken(x), module
        hook.remove()
    hook = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    assert not taken(x)
    hook.remove()
