"""The Gemma tokenizer of a checkpoint: SentencePiece `tokenizer.model`, or `tokenizer.json`.

Special tokens are looked up by name, never by hard-coded id, so a checkpoint with a smaller
vocabulary (such as the embedded demo model) works the same way. `<image>` is not a piece of the
published SentencePiece model; transformers adds it as the next id (257152), and so do we.
"""

from __future__ import annotations

import json
from pathlib import Path

NUM_LOC = 1024  # <loc0000> ... <loc1023>: coordinates, y/x in 1024 bins
NUM_SEG = 128  # <seg000> ... <seg127>: mask VQ-VAE codebook entries
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "paligemma_tokenizer.model")


class TokenizerError(ValueError):
    """A missing or unusable tokenizer."""


class Tokenizer:
    """Text <-> ids. encode() adds nothing; the processor places <bos>, <eos> and <image>."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"no tokenizer file at {self.path}")
        if self.path.suffix == ".json":
            self._init_json()
        else:
            self._init_sentencepiece()
        self.pad_id = self._require("<pad>")
        self.eos_id = self._require("<eos>")
        self.bos_id = self._require("<bos>")
        self.unk_id = self.token_to_id("<unk>")
        image = self.token_to_id("<image>")
        self.image_id = self._size if image is None else image  # appended like transformers
        self._special = {self.pad_id, self.eos_id, self.bos_id, self.image_id} | self._control
        if self.unk_id is not None:
            self._special.add(self.unk_id)

    # -- backends ------------------------------------------------------------------------------
    def _init_sentencepiece(self) -> None:
        import sentencepiece as spm

        try:
            sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:
            raise TokenizerError(f"{self.path} is not a SentencePiece model ({e})") from None
        self._sp, self._hf = sp, None
        self._size = sp.vocab_size()
        self._control = {i for i in range(self._size) if sp.is_control(i)}

    def _init_json(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            tok = HFTokenizer.from_file(str(self.path))
        except Exception as e:  # the tokenizers library raises a plain Exception
            raise TokenizerError(f"{self.path} is not a tokenizer.json ({e})") from None
        self._sp, self._hf = None, tok
        self._size = tok.get_vocab_size(with_added_tokens=True)
        added = json.loads(self.path.read_text()).get("added_tokens", [])
        self._control = {t["id"] for t in added if t.get("special")}

    # -- lookups -------------------------------------------------------------------------------
    def token_to_id(self, piece: str) -> int | None:
        if self._sp is not None:
            i = self._sp.piece_to_id(piece)
            return i if self._sp.id_to_piece(i) == piece else None
        return self._hf.token_to_id(piece)

    def _require(self, piece: str) -> int:
        i = self.token_to_id(piece)
        if i is None:
            raise TokenizerError(f"{self.path} has no {piece} token")
        return i

    @property
    def vocab_size(self) -> int:
        """Number of ids, <image> included."""
        return max(self._size, self.image_id + 1)

    def loc_id(self, k: int) -> int:
        """Id of <locKKKK> (0 <= k < 1024)."""
        return self._require(f"<loc{k:04d}>")

    def seg_id(self, k: int) -> int:
        """Id of <segKKK> (0 <= k < 128)."""
        return self._require(f"<seg{k:03d}>")

    # -- text ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self._sp is not None:
            return self._sp.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        """Text of `ids`; with skip_special, <pad>/<bos>/<eos>/<image> and other control tokens
        are dropped (<loc>/<seg> tokens are kept: they are the detection/segmentation output)."""
        ids = [int(i) for i in ids if not (skip_special and i in self._special)]
        if self._hf is not None:
            return self._hf.decode(ids, skip_special_tokens=False)
        # <image> lies past the SentencePiece vocabulary: spell it out between decoded runs.
        text, run = [], []
        for i in ids:
            if i < self._size:
                run.append(i)
            else:
                text += [self._sp.decode(run), "<image>" if i == self.image_id else "<unk>"]
                run = []
        return "".join([*text, self._sp.decode(run)])


def find_tokenizer(directory: Path) -> Path | None:
    """The tokenizer file of a checkpoint directory, if it has one."""
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            return directory / name
    return None
