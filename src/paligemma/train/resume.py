"""The settings of a fine-tuning run as a command gives them: a new run takes the given ones
over TrainConfig's defaults; a resumed run takes the checkpoint's, and a setting given again
must either equal the checkpoint's or be one that may change on resume (FREE_ON_RESUME: run
length, cadences, where held-out data and outputs go). Every difference is named at once."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from .finetune import FREE_ON_RESUME, TrainConfig, model_id
from .state import latest_checkpoint, saved_settings


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_settings(given: dict[str, Any], out: str | os.PathLike, resume: bool) -> TrainConfig:
    """The TrainConfig of a run into `out`. `given` holds only the settings set explicitly
    (TrainConfig field names; `data` may be left out on resume). On `resume` with a checkpoint
    in `out`, the others come from it; a given one that differs and may not change is a
    ValueError listing every such difference."""
    saved = saved_settings(Path(out)) if resume else None
    given = given | {"out": str(out)}
    if saved is None:
        if "data" not in given:
            raise ValueError("--data is required (unless --resume continues a run in --out)")
        return TrainConfig(**given)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: v for k, v in saved.items() if k in names}
    fixed = sorted(k for k in given if k in saved and k not in FREE_ON_RESUME)
    differ = [k for k in fixed if json.loads(_json(given[k])) != saved[k]]
    if differ:
        diffs = ", ".join(
            f"{flag(k)} {_json(given[k])} (checkpoint: {_json(saved[k])})" for k in differ
        )
        free = ", ".join(flag(k) for k in FREE_ON_RESUME if k != "out")
        raise ValueError(
            f"{latest_checkpoint(Path(out))} was made with other settings: {diffs}. These "
            f"cannot change on --resume (leave them out: the checkpoint's are used); only "
            f"{free} can"
        )
    if "lora_targets" in saved:
        saved["lora_targets"] = tuple(saved["lora_targets"])
    return TrainConfig(**(saved | given))


def _json(value: Any) -> str:
    """A setting as JSON, as a checkpoint stores it (tuples as lists; 16 equals 16.0)."""
    return json.dumps(value)


def run_model(given: str | None, out: str | os.PathLike, resume: bool) -> str | None:
    """The model a run trains: on `resume`, the one its checkpoint records (a --model given
    again must name the same one); otherwise `given` (None: the embedded model)."""
    saved = (saved_settings(Path(out)) or {}).get("model") if resume else None
    if saved is None:
        return given
    if given is not None and model_id(given) != saved:
        raise ValueError(
            f"{latest_checkpoint(Path(out))} was made from --model {saved}, not {given}: leave "
            "--model out to resume it, or start a new run with another --out"
        )
    return saved
