"""Training checkpoints that survive a kill: written to a temporary directory, fsynced and
renamed, then `latest` is switched with an atomic rename. A checkpoint holds the trainable
tensors, the optimiser state, the data position and the RNG state (safetensors + JSON; nothing
is pickled), which is all a resumed run needs to continue bit for bit, and optionally the state
of the run's log (running averages), so that its metrics continue bit for bit too."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def save_state(
    out: Path,
    step: int,
    pos: int,
    trainable,
    optimizer,
    fingerprint: dict,
    log_state: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> None:
    """Checkpoint `step` (trainable tensors, optimiser state, data position, RNG, the JSON-able
    `log_state` and all the run's `settings`) into out/checkpoints/step-N atomically, point
    `latest` at it, and drop older ones."""
    from ..checkpoints.safetensors_io import write_safetensors

    tmp, final = staging(out, step)
    tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in trainable}
    scalars: dict[str, dict[str, Any]] = {}
    for n, p in trainable:
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                tensors[f"opt/{n}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(n, {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    write_safetensors(tensors, tmp / "state.safetensors")
    meta = {"step": step, "pos": pos, "opt_scalars": scalars, "config": fingerprint}
    meta |= {"log_state": log_state or {}, "settings": settings}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    publish(tmp, final)


def staging(out: Path, step: int) -> tuple[Path, Path]:
    """(empty temporary directory, final directory) of the checkpoint after `step` steps."""
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp, final


def publish(tmp: Path, final: Path) -> None:
    """Make the checkpoint written into `tmp` the run's latest: fsync its files, rename it to
    `final`, switch `latest` to it atomically and drop the older ones."""
    root = final.parent
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    (root / ".latest.tmp").write_text(final.name)
    os.replace(root / ".latest.tmp", root / "latest")
    for old in root.glob("step-*"):
        if old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The directory of the run's latest checkpoint, or None when it has none."""
    pointer = out / "checkpoints" / "latest"
    return out / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None


def load_state(out: Path, trainable, optimizer, fingerprint: dict) -> tuple[int, int]:
    """Restore the latest checkpoint into the parameters, optimiser and RNG; returns (step,
    data position), or (0, 0) when there is none. Refuses one made with other settings."""
    from safetensors.torch import load_file

    ck = latest_checkpoint(out)
    if ck is None:
        return 0, 0
    meta = checked_meta(ck, fingerprint)
    tensors = load_file(str(ck / "state.safetensors"))
    with torch.no_grad():
        for n, p in trainable:
            p.copy_(tensors[f"param/{n}"])
            # Moments go where the parameter is; a 0-dim `step` stays on the CPU, where the
            # optimisers keep it unless `capturable` (a CUDA step tensor is refused otherwise).
            state = {
                k.rsplit("/", 1)[1]: v.to(p.device) if v.ndim else v
                for k, v in tensors.items()
                if k.startswith(f"opt/{n}/")
            }
            state |= meta["opt_scalars"].get(n, {})
            if state:
                optimizer.state[p] = state
    torch.set_rng_state(tensors["rng/torch"])
    return meta["step"], meta["pos"]


def checked_meta(ck: Path, fingerprint: dict) -> dict[str, Any]:
    """The state.json of checkpoint `ck`; refuses one made with other settings."""
    meta = json.loads((ck / "state.json").read_text())
    now = json.loads(json.dumps(fingerprint))  # tuples -> lists, as stored
    if meta["config"] != now:
        changed = sorted(
            k for k in now.keys() | meta["config"] if meta["config"].get(k) != now.get(k)
        )
        diffs = ", ".join(f"{k}: {meta['config'].get(k)!r}, now {now.get(k)!r}" for k in changed)
        raise ValueError(
            f"{ck} was made with other settings ({diffs}): resume with the checkpoint's "
            "settings, or start a new run with another --out"
        )
    return meta


def saved_settings(out: Path) -> dict[str, Any] | None:
    """All the settings of the run whose latest checkpoint is in `out`: those saved with it, or
    for an older checkpoint the fingerprint alone (None when there is no checkpoint)."""
    ck = latest_checkpoint(out)
    meta = json.loads((ck / "state.json").read_text()) if ck else None
    return (meta.get("settings") or meta["config"]) if meta else None


def saved_log_state(out: Path) -> dict[str, Any]:
    """The `log_state` saved with the latest checkpoint ({} when there is none, or for a
    checkpoint written before log states were saved)."""
    ck = latest_checkpoint(out)
    return json.loads((ck / "state.json").read_text()).get("log_state", {}) if ck else {}


def trim_log(path: Path, step: int) -> None:
    """Keep the metrics.jsonl rows of steps <= `step` (none for a fresh run), dropping the
    rows of steps a killed run logged after its last checkpoint and any line cut short."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
