"""Question-answering scores: VQAv2 accuracy (the official script's rules), exact match, POPE.

`vqa_accuracy` follows `vqaEval.py` of GT-Vision-Lab/VQA (master, a013f00), as big_vision's VQAv2
evaluator does: answers are whitespace-stripped; **only when the reference answers disagree** are
they and the prediction normalised (punctuation, then digits/articles/contractions); the score is
min(#other references equal to the prediction / 3, 1) averaged over the leave-one-out subsets
(10 choose 9 with ten references). Quirks kept on purpose: the period rule `(?!<=\\d)(\\.)(?!\\d)`
(a look-ahead, not a look-behind: any period not followed by a digit goes) removes at most 32
periods (the script passes `re.UNICODE` where `count` goes), and a digit-comma-digit anywhere in
the text makes every punctuation mark vanish rather than become a space.
"""

from __future__ import annotations

import re

_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<"]
_PUNCT += ["@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA = re.compile(r"(\d)(\,)(\d)")
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
# The official contraction table, written as its values: a value with one apostrophe is reached
# from its spelling without it ("dont" -> "don't"); one with several from each spelling that
# lacks exactly one of them ("couldnt've" and "couldn'tve" -> "couldn't've").
_CONTRACTED_WORDS = """
ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd
how'll how's I'm I've isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've
o'clock oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll
someone's something'd something'll that's there'd there're there's they'd they'll they're
they've 'twas wasn't we've weren't what'll what're what's what've when's where'd where's
where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all you'd
you'll you're you've couldn't've hadn't've he'd've I'd've it'd've mightn't've 'ow's'at she'd've
shouldn't've somebody'd've someone'd've something'd've there'd've they'd've we'd've who'd've
wouldn't've y'all'll y'all'd've you'd've
"""
_CONTRACTED = _CONTRACTED_WORDS.split()


def _spellings(word: str) -> list[str]:
    cuts = [i for i, c in enumerate(word) if c == "'"]
    if len(cuts) == 1:
        return [word.replace("'", "")]
    return [word[:i] + word[i + 1 :] for i in cuts]


CONTRACTIONS = {key: word for word in _CONTRACTED for key in _spellings(word)}
CONTRACTIONS["somebody'd"] = "somebodyd"  # sic: the official table maps this one backwards


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if p + " " in text or " " + p in text or _COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=32)  # count=re.UNICODE (32) in the official script


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa(text: str) -> str:
    """The official normalisation of one answer: punctuation, then lower case, number words to
    digits, articles dropped, missing apostrophes restored ("Two dogs!" -> "2 dogs")."""
    return _digits_articles(_punctuation(_strip(text)))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQAv2 / TextVQA accuracy of one answer against its (usually ten) references, in [0, 1].

    The formula is the script's for any count: with a single reference the leave-one-out subset
    is empty and the score is 0 (score single-answer sets with `exact_match`)."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    refs = [_strip(a) for a in answers]
    pred = _strip(prediction)
    if len(set(refs)) > 1:
        refs = [normalize_vqa(a) for a in refs]
        pred = normalize_vqa(pred)
    scores = []
    for i in range(len(refs)):
        matches = sum(r == pred for j, r in enumerate(refs) if j != i)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def exact_match(prediction: str, answers: list[str], *, lower: bool = False) -> float:
    """1.0 when the stripped prediction equals one reference exactly (GQA, ScienceQA, AI2D as
    big_vision scores them: no normalisation; `lower=True` as for OCR-VQA / DocVQA), else 0.0."""
    fold = str.lower if lower else str
    pred = fold(prediction.strip())
    return float(any(fold(a.strip()) == pred for a in answers))


def pope_answer(text: str) -> str:
    """The official POPE script's reading of an answer: the first sentence, commas removed;
    "no" if a word is "No", "no" or "not", else "yes"."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def pope_scores(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio (fractions; "yes" is positive), as
    the official `evaluate.py` computes them (answers read by `pope_answer`, labels "yes"/"no")."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pred = [pope_answer(p) == "yes" for p in predictions]
    gold = [label.strip().lower() != "no" for label in labels]
    pairs = list(zip(pred, gold, strict=True))
    tp = sum(p and g for p, g in pairs)
    fp = sum(p and not g for p, g in pairs)
    fn = sum(g and not p for p, g in pairs)
    tn = len(pred) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pred),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(pred) / len(pred),
    }
