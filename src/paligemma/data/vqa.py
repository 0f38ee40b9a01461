"""VQAv2's official files: the questions JSON (+ the annotations JSON with the ten human answers
per question, absent for test), images by the official COCO naming
`COCO_{data_subtype}_{image_id:012d}.jpg` under the images folder. One Record per question."""

from __future__ import annotations

import os
from pathlib import Path

from .records import DataFormatError, Dataset, Record, field_of, list_of, read_json


def read_vqav2(
    questions: str | os.PathLike,
    annotations: str | os.PathLike | None,
    images: Path | None,
    limit: int | None,
) -> Dataset:
    """Questions (and, when given, their answers) as Records: id the question_id, prompt the
    question, answers the human answers, meta image_id / answer_type / question_type /
    multiple_choice_answer."""
    questions = Path(questions)
    data = read_json(questions, "VQAv2 questions")
    subtype = data.get("data_subtype") if isinstance(data, dict) else None
    if not isinstance(subtype, str) or not subtype:
        raise DataFormatError(f'{questions}: missing "data_subtype" (e.g. "val2014")')
    root = Path(images) if images is not None else questions.parent
    records: dict[int, Record] = {}
    for i, item in enumerate(list_of(data, "questions", questions)):
        where = f"{questions}: questions record {i}"
        qid = field_of(item, "question_id", int, where)
        image_id = field_of(item, "image_id", int, where)
        text = field_of(item, "question", str, where)
        image = root / f"COCO_{subtype}_{image_id:012d}.jpg"
        records[qid] = Record(
            qid, (image,), text, [], [], None, None, where, {"image_id": image_id}
        )
        if limit is not None and len(records) >= limit:
            break
    if annotations is not None:
        _add_answers(records, Path(annotations), complete=limit is None)
    return Dataset(list(records.values()), "vqav2", questions)


def _add_answers(records: dict[int, Record], path: Path, complete: bool) -> None:
    data = read_json(path, "VQAv2 annotations")
    seen = set()
    for i, item in enumerate(list_of(data, "annotations", path)):
        where = f"{path}: annotations record {i}"
        qid = field_of(item, "question_id", int, where)
        record = records.get(qid)
        if record is None:
            if complete:
                raise DataFormatError(f"{where}: question_id {qid} is not in the questions")
            continue
        answers = field_of(item, "answers", list, where)
        for j, a in enumerate(answers):
            field_of(a, "answer", str, f"{where} answer {j}")
        record.answers = [a["answer"] for a in answers]
        record.meta |= {k: item[k] for k in ("answer_type", "question_type") if k in item}
        if "multiple_choice_answer" in item:
            record.meta["multiple_choice_answer"] = item["multiple_choice_answer"]
        seen.add(qid)
    missing = [r for q, r in records.items() if q not in seen]
    if missing:
        raise DataFormatError(f"{missing[0].where}: question {missing[0].id} has no annotation")
