"""`paligemma batch`: one Parquet row per input (bad images as error rows), the same rows from the
local engine and from Ray Data actors (a real local Ray cluster: 2 CPUs, 2 workers of 1 thread),
an actor killed mid-run restarted with every row still there exactly once, resume over a partly
written output."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from paligemma.batch import TASKS, Predictor, read_output, run_batch
from paligemma.batch.output import parts
from paligemma.cli import batch as cli_batch
from paligemma.cli.commands import main
from paligemma.demo.synthetic import make_scene
from paligemma.tasks.objects import rle_to_mask

NUM_IMAGES = 24


def write_scenes(directory: Path, n: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_scene(np.random.default_rng(100 + i)).image.save(directory / f"scene{i:02d}.png")
    (directory / "corrupt.jpg").write_bytes(b"\xff\xd8\xff this is no JPEG")
    (directory / "notes.txt").write_text("not an image: not an input")
    return directory


def rows(out: Path) -> list[dict]:
    """The output as pyarrow.dataset reads the directory, sorted by path."""
    table = pads.dataset(out, format="parquet").to_table()
    return sorted(table.to_pylist(), key=lambda r: r["path"])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return write_scenes(tmp_path_factory.mktemp("scenes"), NUM_IMAGES)


@pytest.fixture(scope="module")
def local_out(scenes, tmp_path_factory) -> Path:
    """The local engine's output over the scenes (parts of 8 rows)."""
    out = tmp_path_factory.mktemp("local") / "out"
    argv = ["batch", "--input", str(scenes), "--task", "caption", "--output", str(out)]
    assert main([*argv, "--engine", "local", "--rows-per-part", "8"]) == 0
    return out


@pytest.fixture(scope="module")
def local_rows(local_out) -> list[dict]:
    return rows(local_out)


def test_local_engine_one_row_per_input_and_errors_as_rows(local_rows, scenes, embedded_pipe):
    assert len(local_rows) == NUM_IMAGES + 1  # the .txt is not an input; the corrupt file is
    assert [r["path"] for r in local_rows] == sorted(
        str(p.resolve()) for p in scenes.iterdir() if p.suffix != ".txt"
    )
    bad = [r for r in local_rows if r["error"] is not None]
    assert [Path(r["path"]).name for r in bad] == ["corrupt.jpg"]
    assert bad[0]["text"] is None and "corrupt.jpg" in bad[0]["error"]
    good = [r for r in local_rows if r["error"] is None][:4]
    alone = [embedded_pipe.generate(r["path"], "caption en").text for r in good]
    assert [r["text"] for r in good] == alone  # a row's answer is its answer alone
    assert all(r["prompt"] == "caption en" and r["objects"] is None for r in good)


def test_jsonl_input_segment_objects_with_rle_masks(tmp_path, scenes, embedded_pipe):
    shape = make_scene(np.random.default_rng(100)).things[0].shape  # scene00's first thing
    lines = [
        {"image": "missing.png", "id": "b", "prompt": "circle"},
        {"image": str(scenes / "scene00.png"), "id": "a", "prompt": shape},
        {"image": str(scenes / "scene01.png"), "id": "c", "prompt": "circle"},
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = run_batch(jobs, "segment", tmp_path / "out")
    assert summary["inputs"] == summary["written"] == 3 and summary["errors"] == 1
    out = {r["id"]: r for r in read_output(tmp_path / "out").to_pylist()}
    assert "No such file" in out["b"]["error"] and out["b"]["text"] is None
    assert out["a"]["prompt"] == f"segment {shape}"
    want = embedded_pipe.segment(scenes / "scene00.png", shape)
    got = json.loads(out["a"]["objects"])
    assert got and [o["box"] for o in got] == [list(o.box) for o in want]
    for o, w in zip(got, want, strict=True):
        assert (rle_to_mask(o["mask_rle"]) == w.mask).all()


def test_parquet_input_with_image_bytes_and_ids(tmp_path, scenes, local_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = ["scene03.png", "corrupt.jpg"]
    table = pa.table({"image": [(scenes / n).read_bytes() for n in names], "id": names})
    pq.write_table(table, tmp_path / "in.parquet")
    run_batch(tmp_path / "in.parquet", "caption", tmp_path / "out")
    out = {r["id"]: r for r in read_output(tmp_path / "out").to_pylist()}
    want = {Path(r["path"]).name: r for r in local_rows}
    assert out["scene03.png"]["text"] == want["scene03.png"]["text"]
    assert out["corrupt.jpg"]["error"] and out["corrupt.jpg"]["path"] == "corrupt.jpg"
    pq.write_table(pa.table({"image": ["a.png", "a.png"]}), tmp_path / "twice.parquet")
    with pytest.raises(ValueError, match="appears twice"):
        run_batch(tmp_path / "twice.parquet", "caption", tmp_path / "out2")


def test_predictor_reads_ray_style_columns(scenes):
    """As Ray Data hands batches over: numpy columns, an all-null column as float NaN."""
    pred = Predictor("caption", threads=1)
    paths = np.array([str(scenes / "scene00.png"), str(scenes / "corrupt.jpg")], dtype=object)
    nan = np.full(2, np.nan, np.float32)
    out = pred({"path": paths, "bytes": nan, "prompt": nan, "id": nan}).to_pylist()
    assert [r["id"] for r in out] == list(paths) and out[0]["error"] is None
    assert out[0]["text"] and "corrupt.jpg" in out[1]["error"]


def test_resume_after_a_crash_skips_what_is_written(tmp_path, scenes, local_rows):
    class Crash(Predictor):
        calls = 0

        def __call__(self, batch):
            Crash.calls += 1
            if Crash.calls == 3:
                raise KeyboardInterrupt  # the process stops mid-run
            return super().__call__(batch)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(scenes, "caption", out, batch_size=4, rows_per_part=4, predictor=Crash)
    assert len(read_output(out)) == 8  # two whole parts; nothing of the third batch
    (out / ".tmp-part-00002-deadbeef.parquet").write_bytes(b"a torn write")  # ignored
    summary = run_batch(scenes, "caption", out, batch_size=4, rows_per_part=4)
    assert summary["skipped"] == 8 and summary["written"] == NUM_IMAGES + 1 - 8
    assert rows(out) == local_rows
    assert run_batch(scenes, "caption", out)["written"] == 0  # all done: nothing to do


def test_bad_flags_are_one_line_errors(tmp_path, scenes, capsys):
    base = ["batch", "--input", str(scenes), "--output", str(tmp_path / "o")]
    assert main([*base, "--task", "answer"]) == 1  # answer needs a question
    assert main(["batch", "--input", str(tmp_path / "nope"), "--task", "caption", "--output", "o"])
    assert main([*base, "--task", "caption", "--workers", "0"]) == 1
    assert capsys.readouterr().err.count("paligemma: error:") == 3
    assert list(TASKS) == cli_batch.TASKS  # the parser's choices (kept free of pyarrow)


def test_ray_missing_is_a_clear_error(monkeypatch, scenes, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    argv = ["batch", "--input", str(scenes), "--task", "caption", "--output", str(tmp_path)]
    assert main([*argv, "--engine", "ray"]) == 1
    assert "pip install 'paligemma[ray]'" in capsys.readouterr().err


# -- Ray ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_engine_equals_local_engine(ray_cluster, scenes, local_rows, tmp_path):
    out = tmp_path / "out"
    argv = ["batch", "--input", str(scenes), "--task", "caption", "--output", str(out)]
    assert main([*argv, "--engine", "ray", "--workers", "2", "--batch-size", "4"]) == 0
    assert rows(out) == local_rows


def test_ray_actor_killed_mid_run_every_row_once_and_resume(
    ray_cluster, scenes, local_out, local_rows, tmp_path
):
    """One actor dies (os._exit) on its first batch; Ray restarts it and retries the batch. The
    output dir already holds part of the rows (from the local engine): they are skipped."""
    marker = tmp_path / "crashed-once"

    class CrashOnce(Predictor):  # defined here: Ray ships it to the actors by value
        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                os._exit(1)
            return super().__call__(batch)

    out = tmp_path / "out"
    out.mkdir()
    for part in parts(local_out)[:2]:  # a partly written run: 16 rows
        shutil.copy(part, out / part.name)
    summary = run_batch(
        scenes, "caption", out, engine="ray", workers=2, threads=1, batch_size=4,
        predictor=CrashOnce,
    )  # fmt: skip
    assert marker.exists()  # the crash happened
    assert summary["skipped"] == 16 and summary["written"] == NUM_IMAGES + 1 - 16
    assert rows(out) == local_rows  # every input exactly once, the same answers


def test_gpu_script_runs_on_the_cpu(ray_cluster, tmp_path, capsys):
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    try:
        import gpu_batch
    finally:
        sys.path.pop(0)
    result = gpu_batch.main(["--device", "cpu", "--images", "6", "--out", str(tmp_path)])
    assert result["rows"] == 6 and result["images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out
