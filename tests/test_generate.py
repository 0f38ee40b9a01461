"""Generation: greedy equals transformers' generate(); cache, batching, beams, sampling, stops."""

from __future__ import annotations

import pytest
import torch
from conftest import IMAGE_ID, hf_processor, make_batch
from test_processor import images

import paligemma
from paligemma import generate as engine

PROMPTS = ["caption en", "answer en what color is the triangle?", "detect cat ; dog"]
NEW = 10


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return paligemma.load(pipeline_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def hf(pipeline_dir):
    from transformers import PaliGemmaForConditionalGeneration

    model = PaliGemmaForConditionalGeneration.from_pretrained(
        pipeline_dir, attn_implementation="eager"
    )
    return model.eval(), hf_processor(pipeline_dir)


def hf_generate(hf, ims, prompts, **kwargs) -> list[list[int]]:
    model, proc = hf
    inputs = proc(images=ims, text=prompts, padding="longest", return_tensors="pt")
    inputs.pop("labels", None)
    # Ours never produces <image> or the embedding's padding rows after it: nor may the oracle.
    padding = list(range(model.config.image_token_id, model.config.text_config.vocab_size))
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW, suppress_tokens=padding, **kwargs)
    rows = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        rows.append(row[: row.index(1)] if 1 in row else row)  # up to <eos>
    return rows


def test_greedy_matches_transformers(pipe, hf):
    ims = images(3)
    want = hf_generate(hf, ims, PROMPTS, do_sample=False)
    got = pipe.generate(ims, PROMPTS, max_new_tokens=NEW)
    assert [r.token_ids for r in got] == want
    assert len({t for r in got for t in r.token_ids}) > NEW  # not one token repeated
    assert all(r.text == pipe.tokenizer.decode(r.token_ids) for r in got)
    assert all((r.finish_reason == "length") == (len(r.token_ids) == NEW) for r in got)


def test_device_generic_path_matches_transformers(pipe, hf, monkeypatch):
    """What runs on a GPU (plain F.linear, no CPU matrix-vector shortcut), here on the CPU:
    batch-1 decoding gives transformers' tokens too."""
    from paligemma.quant import matvec

    monkeypatch.setattr(matvec, "_matvec", lambda x, rows_alone=False: False)
    ims = images(1)
    want = hf_generate(hf, ims, PROMPTS[:1], do_sample=False)
    assert [r.token_ids for r in pipe.generate(ims, PROMPTS[:1], max_new_tokens=NEW)] == want


def test_repetition_penalty_matches_transformers(pipe, hf):
    ims = images(3)
    want = hf_generate(hf, ims, PROMPTS, do_sample=False, repetition_penalty=1.8)
    got = pipe.generate(ims, PROMPTS, max_new_tokens=NEW, repetition_penalty=1.8)
    assert [r.token_ids for r in got] == want
    plain = pipe.generate(ims, PROMPTS, max_new_tokens=NEW)
    assert [r.token_ids for r in got] != [r.token_ids for r in plain]


def test_cached_decoding_equals_recompute(pipe):
    """Greedy through the KV cache equals re-running the whole sequence every step."""
    ims = images(3)
    got = pipe.generate(ims, PROMPTS, max_new_tokens=NEW)
    batch = pipe.processor(images=ims, text=PROMPTS)
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    eos = pipe.tokenizer.eos_id
    for row, result in enumerate(got):
        seq = ids[row : row + 1, mask[row].bool()]
        tt = types[row : row + 1, mask[row].bool()]
        new = []
        with torch.no_grad():
            for _ in range(NEW):
                logits = pipe.model(seq, batch["pixel_values"][row : row + 1], None, tt)
                t = int(logits[0, -1, : pipe.num_real_ids].argmax())  # no padding
                if t == eos:
                    break
                new.append(t)
                seq = torch.cat([seq, torch.tensor([[t]])], 1)
                tt = torch.cat([tt, torch.ones(1, 1, dtype=torch.long)], 1)
        assert new == result.token_ids


def test_batched_equals_one_at_a_time(pipe):
    ims = images(3)
    batched = pipe.generate(ims, PROMPTS, max_new_tokens=NEW)
    alone = [pipe.generate(im, p, max_new_tokens=NEW) for im, p in zip(ims, PROMPTS, strict=True)]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    small = pipe.generate(ims, PROMPTS, max_new_tokens=NEW, batch_size=2)
    assert [r.token_ids for r in small] == [r.token_ids for r in alone]


def test_beam_search(pipe, hf):
    ims = images(3)
    greedy = pipe.generate(ims, PROMPTS, max_new_tokens=NEW)
    one = pipe.generate(ims, PROMPTS, max_new_tokens=NEW, num_beams=1)
    assert [r.token_ids for r in one] == [r.token_ids for r in greedy]
    # The beam engine itself with K = 1 (not the greedy path) is greedy too.
    batch = pipe.processor(images=ims, text=PROMPTS)
    cfg = pipe.generation_config(max_new_tokens=NEW)  # the tokenizer's ids only
    beams1 = engine.beam_search(pipe.model, batch, cfg, {pipe.tokenizer.eos_id})
    assert beams1.tokens == [r.token_ids for r in greedy]
    two = pipe.generate(ims, PROMPTS, max_new_tokens=NEW, num_beams=2)
    assert [r.token_ids for r in two] == hf_generate(hf, ims, PROMPTS, do_sample=False, num_beams=2)


def test_sampling_is_seeded(pipe):
    ims = images(3)
    opts = dict(max_new_tokens=NEW, do_sample=True, temperature=1.5, top_p=0.9, top_k=50)
    a = pipe.generate(ims, PROMPTS, seed=7, **opts)
    b = pipe.generate(ims, PROMPTS, seed=7, **opts)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    others = [pipe.generate(ims, PROMPTS, seed=s, **opts) for s in (8, 9, 10)]
    assert any([r.token_ids for r in o] != [r.token_ids for r in a] for o in others)
    greedy = pipe.generate(ims, PROMPTS, max_new_tokens=NEW)
    top1 = pipe.generate(ims, PROMPTS, max_new_tokens=NEW, do_sample=True, top_k=1, seed=1)
    assert [r.token_ids for r in top1] == [r.token_ids for r in greedy]


def test_logit_processors():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    cfg = engine.GenerationConfig(do_sample=True, top_k=2)
    assert torch.isinf(
        engine.process_logits(logits, torch.zeros(1, 0, dtype=torch.long), cfg)[0, :2]
    ).all()
    cfg = engine.GenerationConfig(do_sample=True, top_p=0.5)  # 4.0 alone holds 64% of the mass
    kept = engine.process_logits(logits, torch.zeros(1, 0, dtype=torch.long), cfg)
    assert torch.isfinite(kept).tolist() == [[False, False, False, True]]
    cfg = engine.GenerationConfig(repetition_penalty=2.0)
    out = engine.process_logits(torch.tensor([[-1.0, 2.0, 3.0]]), torch.tensor([[0, 1]]), cfg)
    assert out.tolist() == [[-2.0, 1.0, 3.0]]
    for bad in (
        dict(temperature=0),
        dict(top_p=0),
        dict(max_new_tokens=0),
        dict(num_beams=0),
        dict(do_sample=True, num_beams=2),
    ):
        with pytest.raises(ValueError):
            engine.GenerationConfig(**bad)


def test_stop_strings_and_length(pipe):
    im = images(1)[0]
    free = pipe.generate(im, PROMPTS[0], max_new_tokens=NEW)
    assert free.finish_reason == "length" and len(free.token_ids) == NEW
    piece = pipe.tokenizer.decode(free.token_ids[3:4])
    assert piece.strip()
    stopped = pipe.generate(im, PROMPTS[0], max_new_tokens=NEW, stop=piece)
    assert stopped.finish_reason == "stop"
    assert piece not in stopped.text and free.text.startswith(stopped.text)
    assert len(stopped.token_ids) < NEW


def test_stream_joins_to_the_answer(pipe):
    ims = images(2)
    for im, prompt in zip(ims, PROMPTS, strict=False):
        pieces = list(pipe.stream(im, prompt, max_new_tokens=NEW))
        assert len(pieces) > 1
        assert "".join(pieces) == pipe.generate(im, prompt, max_new_tokens=NEW).text


def test_prompt_too_long(pipe):
    with pytest.raises(paligemma.PromptTooLongError, match="longest sequence"):
        pipe.generate(images(1)[0], "word " * 9000, max_new_tokens=4)
    with pytest.raises(paligemma.PromptTooLongError):
        pipe.generate(images(1)[0], "caption en", max_new_tokens=8190)


def test_padding_rows_are_never_produced():
    """Ids past the tokenizer's (the embedding's padding rows) are never picked, by greedy,
    sampling or beam search, even by a model on which they would win."""
    torch.manual_seed(0)
    model = paligemma.PaliGemma(paligemma.TINY).eval()
    real = 256
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
        model.decoder.embed.weight[real:IMAGE_ID] *= 10  # rows 256..298 win every step
    ids, am, tt, px = make_batch()
    inputs = dict(input_ids=ids, attention_mask=am, token_type_ids=tt, pixel_values=px)
    free = engine.generate(model, inputs, engine.GenerationConfig(max_new_tokens=3), set())
    assert all(t >= real for row in free.tokens for t in row)
    for options in (
        {},
        dict(do_sample=True, temperature=2.0, top_p=0.99, seed=0),
        dict(num_beams=3),
    ):
        cfg = engine.GenerationConfig(max_new_tokens=3, num_real_ids=real, **options)
        out = engine.generate(model, inputs, cfg, set())
        assert all(len(row) == 3 and max(row) < real for row in out.tokens), options


def test_pipeline_limits_generation_to_the_tokenizer(pipe):
    assert pipe.generation_config().num_real_ids == pipe.tokenizer.image_id  # <image> excluded
    assert pipe.tokenizer.image_id < pipe.model.cfg.text.vocab_size - 1  # padding rows follow


def test_prompts_are_tokenized_and_images_normalised_once(pipe, monkeypatch):
    """Pipeline.generate checks every row's length from the processor's rows, then batches
    those same rows: each prompt is encoded once (not once for the check and again for the
    batch)."""
    calls = []
    encode = pipe.tokenizer.encode
    monkeypatch.setattr(pipe.tokenizer, "encode", lambda text: calls.append(text) or encode(text))
    from PIL import Image

    image = Image.new("RGB", (20, 20), "blue")
    pipe.generate([image] * 3, ["a", "b", "c"], max_new_tokens=2, batch_size=2)
    assert sorted(calls) == ["a\n", "b\n", "c\n"]


def test_an_image_id_among_the_text_ids_is_never_produced(embedded_pipe):
    """The embedded tokenizer's <image> is id 4, inside the text ids: a model that favours it
    (here: +100 on its logit) still never produces it, greedy, sampled, beams or in the
    engine; fed back it would ask for an image (a random model once sampled it and crashed)."""
    import numpy as np
    from test_engine import answer

    from paligemma.demo import synthetic
    from paligemma.serve.batcher import Job
    from paligemma.serve.engine import Engine

    pipe, image_id = embedded_pipe, embedded_pipe.tokenizer.image_id
    assert image_id < pipe.num_real_ids and pipe.never_ids == (image_id,)
    image = synthetic.make_scene(np.random.default_rng(0)).image
    forward = pipe.model.forward

    def favour_image(*args, **kwargs):
        logits = forward(*args, **kwargs)
        logits[..., image_id] += 100.0
        return logits

    pipe.model.forward = favour_image
    try:
        runs = [
            pipe.generate(image, "caption en", max_new_tokens=8, ignore_eos=True, **options)
            for options in ({}, {"do_sample": True, "seed": 1}, {"num_beams": 2})
        ]
        job = Job([image], "caption en", 8, ignore_eos=True)
        answer(Engine(pipe, max_batch=2), [job], [0])
    finally:
        del pipe.model.forward
    assert all(len(r.token_ids) == 8 and image_id not in r.token_ids for r in runs)
    assert job.error is None and job.choices[0].tokens == 8


def test_greedy_ids_are_argmax_first_maximum_ties_and_nan_included():
    """greedy_ids (torch.max over the axis, faster) picks what argmax picks: the first maximum
    of each row, a NaN when the row has one, in float32 and bfloat16."""
    from paligemma.generate import greedy_ids

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 1000, generator=g)
    scores[1, [10, 500]] = 9.0  # a tie: the first wins
    scores[2, 700] = float("nan")
    scores[3] = 0.0  # all equal
    scores[4, -1] = float("inf")
    for dtype in (torch.float32, torch.bfloat16):
        x = scores.to(dtype)
        assert torch.equal(greedy_ids(x), x.argmax(-1))
    assert greedy_ids(scores)[[1, 2, 3, 4]].tolist() == [10, 700, 0, 999]
