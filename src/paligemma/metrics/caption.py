"""Captioning score: corpus CIDEr-D exactly as pycocoevalcap's `Cider` computes it.

The scorer is pycocoevalcap's own (`Cider().compute_score`: n-grams 1..4, idf over the references
of the whole set, sigma 6, x10, clipping, length penalty); only the tokenisation is ours to pick.
Like the COCO caption evaluation (and big_vision), predictions and references are first put
through pycocoevalcap's `PTBTokenizer` (Stanford CoreNLP 3.4.1 in Java, `-preserveLines
-lowerCase`, then its punctuation tokens dropped). Without a working `java`, `ptb_tokenize` is a
pure-Python equivalent of that pipeline: lower case; brackets become -lrb- -rrb- -lsb- -rsb-
-lcb- -rcb- (kept: the drop list spells them in upper case, so the lower-cased ones survive), as are
runs like `!!` and `?!`;
quotes, `.` `?` `!` `,` `:` `;` `-` `--` `...` are dropped; clitics split as PTB does (man 's,
do n't, ca n't, wo n't, they 're, can not, gon na); numbers keep their `,` `.` `:` (1,000 3.5
10:30); hyphenated and slashed words stay whole (black-and-white, red/blue); abbreviations keep
their periods (u.s. p.m. mr.); other symbols ($ % # & @ ...) are tokens of their own. Known
differences: rarer forms (c'mon, y'all, unicode punctuation) the Java lexer treats specially.
"""

from __future__ import annotations

import re
import shutil
from typing import Any

_INSTALL = "CIDEr needs pycocoevalcap: pip install 'paligemma[eval]'"
_DROP = {'"', "''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "ltd", "no"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
_SPLIT_WORDS |= {"lemme": "lem me", "gimme": "gim me"}
_TOKEN = re.compile(
    r"""n't\b
    | (?:[a-z]\.){2,}                         # u.s. p.m.
    | \d+(?:[,.:]\d+)+(?:-[a-z0-9]+)*           # 1,000 3.5 10:30 3.5-year-old
    | [a-z0-9]+(?:[-/&][a-z0-9]+)*              # words, black-and-white, red/blue
    | '(?:s|re|m|ll|ve|d)\b                     # clitics after a word
    | \#[a-z][a-z0-9]*                        # hashtags (but # 1)
    | [!?]{2,}|\.\.\.|--|``|''                  # !! ?! (kept: not on the drop list)
    | \S""",
    re.VERBOSE,
)
_NOT = re.compile(r"([a-z])n't\b")


def _line_tokens(line: str) -> list[str]:
    text = _NOT.sub(r"\1 n't", line.lower())
    tokens = []
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        nxt = text[match.end() : match.end() + 1]
        if token in _ABBREVIATIONS and nxt == "." and match.end() + 1 < len(text.rstrip()):
            token += "."
        tokens.extend(_SPLIT_WORDS.get(token, token).split())
    return tokens


def ptb_tokenize_python(text: str) -> str:
    """One caption tokenised as pycocoevalcap's PTBTokenizer does, without Java (module doc)."""
    tokens = [_BRACKETS.get(t, t) for t in _line_tokens(text.replace("\n", " "))]
    return " ".join(t for t in tokens if t not in _DROP)


def java_available() -> bool:
    """Whether pycocoevalcap's Java PTBTokenizer can run here (a `java` on PATH)."""
    return shutil.which("java") is not None


def _ptb_java(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def ptb_tokenize(captions: dict[Any, list[str]], tokenizer: str = "auto") -> tuple[dict, str]:
    """{id: [caption, ...]} -> ({id: [tokenised, ...]}, "ptb-java" | "ptb-python").

    tokenizer: "java" (pycocoevalcap's PTBTokenizer), "python" (`ptb_tokenize_python`) or "auto"
    (Java when it runs, else Python)."""
    if tokenizer not in ("auto", "java", "python"):
        raise ValueError(f"tokenizer must be 'auto', 'java' or 'python', not {tokenizer!r}")
    if tokenizer == "java" or (tokenizer == "auto" and java_available()):
        try:
            tokens = _ptb_java(captions)
            if {k: len(v) for k, v in tokens.items()} != {k: len(v) for k, v in captions.items()}:
                raise ValueError("it returned a different number of captions")
            return tokens, "ptb-java"
        except (OSError, ValueError) as e:
            if tokenizer == "java":
                raise RuntimeError(f"pycocoevalcap's Java PTBTokenizer failed: {e}") from e
    return {k: [ptb_tokenize_python(c) for c in v] for k, v in captions.items()}, "ptb-python"


def _cider_class():
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return Cider


def cider_scores(
    predictions: dict[Any, str], references: dict[Any, list[str]], tokenizer: str = "auto"
) -> tuple[float, dict[Any, float], str]:
    """Corpus CIDEr-D, per-id CIDEr-D and the tokenizer used ("ptb-java" | "ptb-python").

    predictions {id: caption}; references {id: [caption, ...]} with the same ids. Scores are
    pycocoevalcap's scale (x10 inside the score: 1.446 is the paper's 144.6)."""
    cider = _cider_class()
    if set(predictions) != set(references):
        missing = set(references) ^ set(predictions)
        raise ValueError(f"predictions and references name different ids: {sorted(missing)[:5]}")
    ids = list(references)
    everything = {("ref", k): list(references[k]) for k in ids}
    everything |= {("pred", k): [predictions[k]] for k in ids}
    tokens, used = ptb_tokenize(everything, tokenizer)
    gts = {k: tokens[("ref", k)] for k in ids}
    res = {k: tokens[("pred", k)] for k in ids}
    corpus, per_id = cider().compute_score(gts, res)
    return float(corpus), {k: float(s) for k, s in zip(ids, per_id, strict=True)}, used


def cider(predictions: dict[Any, str], references: dict[Any, list[str]]) -> float:
    """Corpus CIDEr-D of {id: caption} against {id: [reference, ...]}, as pycocoevalcap's
    `Cider().compute_score(...)[0]` on PTB-tokenised captions (see `cider_scores`)."""
    return cider_scores(predictions, references)[0]
