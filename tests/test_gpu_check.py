"""benchmarks/gpu_check.py on the CPU path (--device cpu --quick): it runs, and its JSON holds
the equality checks that a GPU run reports (tiny oracle models' greedy tokens, embedded scores)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_runs_on_cpu(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "check.json"
    result = gpu_check.main(["--device", "cpu", "--quick", "--scenes", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    tiny = result["tiny_greedy"]
    assert [r["model"] for r in tiny] == ["pg1", "pg2"]
    for r in tiny:
        assert r["tokens_equal"] and r["max_logit_diff"] == 0.0
        assert len(r["tokens"]) == 3 and all(
            len(t) == gpu_check.TINY_NEW_TOKENS for t in r["tokens"]
        )
    emb = result["embedded_eval"]
    assert emb["equal"] and set(emb["cpu"]) >= {"vqa_accuracy", "segmentation_miou"}
    assert result["all_equal"] is True and "big" not in result
    assert "ALL EQUAL: True" in capsys.readouterr().out


def test_gpu_check_time_budget_skips(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    result = gpu_check.main(
        ["--device", "cpu", "--time-budget", "0", "--json", str(tmp_path / "x")]
    )
    assert result["tiny_greedy"] == result["embedded_eval"] == result["big"]
    assert result["big"] == {"skipped": "time budget spent"} and result["all_equal"] is False


def test_an_attempt_past_the_deadline_is_stopped_and_reported():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(BENCH))
    r: dict = {}
    gpu_check.attempt(r, "slow", lambda: time.sleep(5), time.monotonic() + 1.2)
    gpu_check.attempt(r, "late", lambda: 1, time.monotonic() - 1)
    gpu_check.attempt(r, "bad", lambda: 1 / 0, time.monotonic() + 60)
    assert r["slow"] == {"failed": "OutOfTime: time budget spent during this attempt"}
    assert r["late"] == {"skipped": "time budget spent"}
    assert r["bad"]["failed"].startswith("ZeroDivisionError")
