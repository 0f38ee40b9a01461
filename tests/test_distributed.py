"""Fine-tuning under a real `torchrun --nproc-per-node 2` (gloo) on the tiny model: DDP with
per-process batch 4 equals one process with batch 8, FSDP2 full fine-tuning equals one
process, and a run killed with SIGKILL resumes with 2 or with 1 process to the same weights."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import PINNED_ENV, finetune_losses, write_colour_task

PG1 = pytest.mark.parametrize("pipeline_dir", [False], ids=["pg1"], indirect=True)

# sgd: AdamW divides each gradient by its own running size, so it turns float noise in the
# tiny gradients (a LoRA A while B is near 0; SigLIP's key bias, whose gradient is analytically
# zero: softmax ignores a constant added to every key) into whole steps, and runs that differ
# in summation order by 1e-7 end 1e-4 apart. With sgd the weights show the arithmetic's own
# differences.
SGD = ["--optimizer", "sgd", "--lr", "1e-2", "--batch-size", "8"]
LORA = ["--mode", "lora", "--steps", "12", "--save-every", "4", *SGD]
FULL = ["--mode", "full", "--steps", "4", *SGD]


def command(nproc: int, model: Path, data: str, out: Path, *flags: str) -> list[str]:
    """`paligemma finetune` in one process, or under torchrun with `nproc`."""
    launch = [sys.executable, "-m"]
    if nproc > 1:
        launch += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m"]
    args = ["finetune", "--model", str(model), "--data", data, "--out", str(out), *flags]
    return [*launch, "paligemma", *args]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


ENV = os.environ | PINNED_ENV


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs by (processes, flags), each made once for the module's tests."""
    root = tmp_path_factory.mktemp("dist")
    data = write_colour_task(root, 32, 0, "train")
    made: dict[tuple, Path] = {}

    def get(model: Path, nproc: int, *flags: str) -> Path:
        key = (nproc, *flags)
        if key not in made:
            made[key] = root / f"run-{len(made)}"
            run(command(nproc, model, data, made[key], *flags))
        return made[key]

    get.data = data
    get.root = root
    return get


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float) -> None:
    """Every tensor within `rel` of its largest value; a tensor that is all rounding noise
    (below 1e-6: SigLIP's key biases start at 0 and get an analytically zero gradient) is
    compared to 1e-6 instead."""
    assert a.keys() == b.keys()
    for k in a:
        err = float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp(min=1e-6))
        assert err <= rel, f"{k}: {err:.3g} relative"


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


@PG1
def test_ddp_per_process_batch_4_equals_one_process_batch_8(pipeline_dir, runs):
    one, two = runs(pipeline_dir, 1, *LORA), runs(pipeline_dir, 2, *LORA)
    a, b = finetune_losses(one), finetune_losses(two)  # rank 0 alone wrote the log: 12 rows
    assert len(a) == len(b) == 12
    assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b, strict=True)), (a, b)
    assert_close(adapter(one), adapter(two), 1e-5)
    assert (two / "curves.png").is_file()
    ck = two / "checkpoints" / (two / "checkpoints" / "latest").read_text()
    assert sorted(p.name for p in ck.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


@PG1
def test_fsdp_full_finetune_equals_one_process(pipeline_dir, runs):
    """FSDP2 (one unit per block) in 2 processes, each step in 2 micro-batches of 2 per
    process, against one process with whole batches of 8."""
    one = runs(pipeline_dir, 1, *FULL)
    two = runs(pipeline_dir, 2, *FULL, "--strategy", "fsdp", "--grad-accum", "2")
    a, b = finetune_losses(one), finetune_losses(two)
    assert all(abs(x - y) <= 1e-5 * abs(x) for x, y in zip(a, b, strict=True)), (a, b)
    assert_close(
        load_file(one / "model" / "model.safetensors"),
        load_file(two / "model" / "model.safetensors"),
        1e-5,
    )
    assert (two / "model" / "config.json").is_file() and (
        two / "model" / "tokenizer.model"
    ).is_file()


@PG1
def test_killed_run_resumes_with_two_or_one_processes(pipeline_dir, runs):
    straight = runs(pipeline_dir, 2, *LORA)
    killed = runs.root / "killed"
    proc = subprocess.Popen(
        command(2, pipeline_dir, runs.data, killed, *LORA),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,  # torchrun and its workers: killed together, as a lost node
    )
    log, deadline = killed / "metrics.jsonl", time.time() + 300
    while time.time() < deadline:  # until a checkpoint exists and the run is past it
        rows = log.read_text().splitlines() if log.is_file() else []
        if len(rows) >= 6 or proc.poll() is not None:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    latest = (killed / "checkpoints" / "latest").read_text()
    assert 0 < int(latest[5:]) < 12 and not (killed / "adapter").exists()
    shutil.copytree(killed, runs.root / "killed-1")
    for nproc, out in ((2, killed), (1, runs.root / "killed-1")):
        run(command(nproc, pipeline_dir, runs.data, out, "--resume"))
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 13))
    # Same number of processes: bit for bit. One process: the same up to float rounding.
    assert finetune_losses(killed) == finetune_losses(straight), latest
    a, b = adapter(straight), adapter(killed)
    assert all(torch.equal(a[k], b[k]) for k in a), latest
    assert_close(a, adapter(runs.root / "killed-1"), 1e-5)


@PG1
def test_the_gpu_fsdp_script_runs_on_the_cpu(pipeline_dir, tmp_path):
    """benchmarks/gpu_fsdp.py, prepared for GPUs (nccl), runs here with gloo."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_fsdp.py"
    args = ["--model", str(pipeline_dir), "--nproc", "2", "--steps", "3", "--batch-size", "4"]
    args += ["--image-size", "28", "--out", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["backend"] == "gloo" and result["processes"] == 2 and result["steps"] == 3
    assert result["step_s"] > 0 and (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_each_process_draws_its_share_and_all_skip_what_failed_on_one(tmp_path, monkeypatch):
    """Group.draw as rank 1 of 2 (the gathering faked): its shares are the second halves of
    one process's micro-batches, and a record whose image fails on rank 0 is left out on every
    rank, exactly as one process passes over it."""
    from PIL import Image

    from paligemma.train import data, distributed

    examples = []
    for i in range(10):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
        examples.append(data.Example(i + 1, (tmp_path / f"{i}.png",), "caption en", f"c{i}"))
    bad = data.ExampleOrder(examples, seed=3).take(1)[0]  # the first drawn: rank 0's share
    bad.images[0].write_bytes(b"not a png")
    one_dropped: dict[int, str] = {}
    one_order = data.ExampleOrder(examples, seed=3)
    one = [data.draw(one_order, 4, one_dropped, True, log=lambda m: None)[0] for _ in range(3)]

    fails = [{bad.line: "cannot read"}]  # what rank 0 reports at the first gathering

    def gather(out, mine):
        out[0], out[1] = (fails.pop() if fails else {}), mine

    monkeypatch.setattr(distributed.dist, "all_gather_object", gather)
    group = distributed.Group.__new__(distributed.Group)
    group.rank, group.size, group.main = 1, 2, False
    dropped: dict[int, str] = {}
    order = data.ExampleOrder(examples, seed=3)
    shares = [group.draw(order, 4, dropped, True) for _ in range(3)]
    assert [s[0] for s in shares] == [batch[2:] for batch in one]
    assert all(len(images) == 2 for _, images in shares)
    assert dropped.keys() == one_dropped.keys() == {bad.line} and order.pos == one_order.pos
    fails.append({bad.line: "cannot read"})  # without --skip-bad, every rank stops on it
    with pytest.raises(data.RecordFailed, match=f"line {bad.line}"):
        group.draw(data.ExampleOrder(examples, seed=3), 4, {}, False)
