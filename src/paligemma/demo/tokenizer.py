"""The demo model's tokenizer: a SentencePiece model in Gemma's special-token layout, learnt
from the synthetic scenes' task texts (the first stage of `python -m paligemma.demo.train`)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..tokenizer import NUM_LOC, NUM_SEG
from . import synthetic

TOKENIZER_VOCAB = 1536


def train_sentencepiece(
    path: Path, sentences: list[str], specials: list[str], vocab_size: int
) -> None:
    """A BPE SentencePiece model in Gemma's layout: <pad>=0 <eos>=1 <bos>=2 <unk>=3, then
    `specials` in order, byte fallback, no dummy prefix, identity normaliser, split digits."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=specials,
        add_dummy_prefix=False,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def train_tokenizer(path: Path, seed: int = 0, lines: int = 20_000) -> None:
    """tokenizer.model: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <image>=4, <loc0000..1023>,
    <seg000..127>, then BPE pieces learnt from the generator's task texts."""
    rng = np.random.default_rng([seed, 7])
    corpus = []
    for _ in range(lines // 4):
        scene = synthetic.make_scene(rng, size=(64, 64))
        for kind in ("caption", "answer", "detect"):
            ex = synthetic.make_example(scene, kind, rng)
            corpus += [ex["prefix"], ex["suffix"]]
    specials = ["<image>", *(f"<loc{i:04d}>" for i in range(NUM_LOC))]
    specials += [f"<seg{i:03d}>" for i in range(NUM_SEG)]
    train_sentencepiece(path, corpus, specials, TOKENIZER_VOCAB)
