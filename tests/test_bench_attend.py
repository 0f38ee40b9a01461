"""benchmarks/bench_attend.py on small shapes: every path of decode_attend is timed and lands
within float32 rounding of the AVX2 loop's output."""

from __future__ import annotations

import json

import pytest
from conftest import bench_module

from paligemma.quant import kernels


@pytest.fixture(scope="module")
def bench_attend():
    return bench_module("bench_attend")


def test_every_path_is_timed_and_agrees(bench_attend, tmp_path):
    out_file = tmp_path / "attend.json"
    out = bench_attend.main(
        ["--batch", "1", "3", "--keys", "9", "--rounds", "1", "--json", str(out_file)]
    )
    assert json.loads(out_file.read_text()) == json.loads(json.dumps(out))
    assert set(out["results"]) == {"batch 1", "batch 3"}
    for paths in out["results"].values():
        assert list(paths) == list(range(kernels.isa() + 1))
        for path, r in paths.items():
            assert r["ms_per_step"] > 0
            assert r["max_diff"] < 0.02, (path, r)  # a bfloat16 ulp or two of values below 1
        if 1 in paths:
            assert paths[1]["max_diff"] == 0 and paths[1]["differ"] == 0  # itself


def test_bad_arguments_are_usage_errors(bench_attend):
    with pytest.raises(SystemExit):
        bench_attend.main(["--rounds", "0"])
