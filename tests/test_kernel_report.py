"""`paligemma info --kernels`: this machine's CPU features, our kernels' build, and the path each
operation takes, checked against the dispatch policy as the README and kernels.py state it
(for whatever CPU runs the tests), under the environment switches, and its bad inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from paligemma.quant import kernels as cpu_kernels


def info(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PALIGEMMA_CPU_")}
    return subprocess.run(
        [sys.executable, "-m", "paligemma.cli", "info", "--kernels", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=environ | env,
    )


def report(**env: str) -> dict:
    out = info("--json", **env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def decoding(r: dict, mode: str) -> dict[int, str]:
    """rows (1..16) -> the reported path, after checking that the labels cover each row once."""
    by_rows = {}
    for name, path in r["paths"].items():
        m = re.fullmatch(rf"{mode} decoding, (\d+)(?:-(\d+))? rows?", name)
        if m:
            first, last = int(m[1]), int(m[2] or m[1])
            assert first <= last and not set(range(first, last + 1)) & set(by_rows), name
            by_rows |= dict.fromkeys(range(first, last + 1), path)
    assert sorted(by_rows) == list(range(1, 17)), r["paths"]
    return by_rows


def expected_loop(features: list[str], rows: int, amx: bool, amd: bool) -> str:
    """int4_dot's loop for `rows` rows on a CPU with `features`, no switch set: AMX-INT8 tiles
    from 8 rows where granted; AVX-VNNI's 256-bit loop for 2-4 rows (and for 1 where there is
    no AVX-512-VNNI, or the CPU is AMD's); else the widest VNNI, else the widest loop without
    it."""
    if amx and rows >= 8:
        return "AMX-INT8 tiles"
    narrow_one = "AVX-512-VNNI" not in features or amd
    if "AVX-VNNI" in features and (rows <= 4 and (rows > 1 or narrow_one)):
        return "AVX-VNNI (256-bit)"
    if "AVX-512" in features:
        return "AVX-512-VNNI" if "AVX-512-VNNI" in features else "AVX-512 (no VNNI)"
    if "AVX2" in features:
        return "AVX-VNNI (256-bit)" if "AVX-VNNI" in features else "AVX2 (no VNNI)"
    return "scalar"


def test_report_follows_the_dispatch_policy():
    r = report()
    assert set(r) == {"cpu", "features", "threads", "torch", "env", "kernels", "paths", "cuda"}
    k = r["kernels"]
    assert k["built"] == cpu_kernels.available()
    if not k["built"]:
        pytest.fail(f"the kernels did not build here: {k['why_not']}")  # the suite needs them
    assert os.path.isfile(k["library"]) and k["why_not"] is None
    assert k["isa"] == {2: "AVX-512", 1: "AVX2", 0: "scalar"}[cpu_kernels.isa()]
    assert k["amx_int8"] == cpu_kernels.amx() and k["amx_bf16"] == cpu_kernels.amx_bf16()
    for rows, path in decoding(r, "int4").items():
        loop = expected_loop(r["features"], rows, k["amx_int8"], cpu_kernels.amd())
        assert path == f"ours, int8 activations: {loop}", (rows, path)
    int8 = decoding(r, "int8")
    assert int8[1].startswith("ours, ")  # float kernel or int8_dot: kernels.int8_dot_from()
    for rows in range(2, 17):
        loop = expected_loop(r["features"], rows, k["amx_int8"], cpu_kernels.amd())
        assert int8[rows] == f"ours, int8 activations: {loop}", (rows, int8[rows])
    amx = k["amx_bf16"]
    assert ("AMX-BF16" in r["paths"]["bfloat16 prefill products"]) == amx
    assert ("AMX-BF16" in r["paths"]["int4 prefill"]) == amx
    assert ("attend_amx" in r["paths"]["prefill attention"]) == amx
    assert r["paths"]["tanh GELU"] == "ours (gelu.cpp)"


def test_text_names_every_path_and_the_build():
    out = info()
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"^kernels +built, path (AVX-512|AVX2|scalar)", text, re.M), text
    for name in (
        r"int4 decoding, 1(-\d+)? rows?",
        "int8 prefill",
        "prefill attention",
        "decode step",
    ):
        assert re.search(rf"^  {name} +\S", text, re.M), name
    assert text.startswith("CPU ") and "\nCUDA " in text


def test_switches_show_in_the_report():
    avx2 = report(PALIGEMMA_CPU_ISA="avx2")
    assert avx2["env"]["PALIGEMMA_CPU_ISA"] == "avx2" and avx2["kernels"]["isa"] == "AVX2"
    assert set(decoding(avx2, "int4").values()) == {"ours, int8 activations: AVX2 (no VNNI)"}
    assert not any("AMX" in path for path in avx2["paths"].values())
    scalar = report(PALIGEMMA_CPU_ISA="scalar")
    assert set(decoding(scalar, "int4").values()) == {"ours, int8 activations: scalar"}
    off = report(PALIGEMMA_CPU_KERNELS="0")
    assert (
        off["kernels"]["built"] is False and "PALIGEMMA_CPU_KERNELS=0" in off["kernels"]["why_not"]
    )
    assert not any(path.startswith("ours") for path in off["paths"].values()), off["paths"]
    assert (
        "NOT built (disabled by PALIGEMMA_CPU_KERNELS=0)" in info(PALIGEMMA_CPU_KERNELS="0").stdout
    )


def test_bad_inputs_are_one_line_errors():
    bad = info(PALIGEMMA_CPU_ISA="avx9")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        "paligemma: error: PALIGEMMA_CPU_ISA must be one of scalar, avx2, avx512, avxvnni, "
        "avx512vnni, amx, got 'avx9'"
    ]
    alone = subprocess.run(
        [sys.executable, "-m", "paligemma.cli", "info", "--json", "paligemma-3b-224"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert alone.returncode != 0 and "--json goes with --kernels" in alone.stderr
