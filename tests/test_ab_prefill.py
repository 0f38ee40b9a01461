"""benchmarks/ab_prefill.py on a tiny saved checkpoint: PRUNE toggles the last-block cut in one
process and puts it back; MALLOC's paired processes run with glibc's setting off and on."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import bench_module, tiny_hf_model

from paligemma import gemma


@pytest.fixture(scope="module")
def ab_prefill():
    return bench_module("ab_prefill")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny PaliGemma whose vocabulary holds the benchmark's prompt ids (10..999)."""
    path = tmp_path_factory.mktemp("ab-prefill")
    tiny_hf_model(False, seed=5, vocab=1100, image_id=1099).save_pretrained(path)
    return path


def test_prune_rounds_toggle_the_cut_and_restore_it(ab_prefill, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(gemma, "PRUNE_MIN_TOKENS", 1)  # the tiny prefill (17 tokens) is cut too
    rows: list[int] = []  # rows the final block's MLP saw, per prefill
    load = ab_prefill.paligemma.load_model

    def load_and_watch(*args, **kwargs):
        model = load(*args, **kwargs)
        model.decoder.blocks[-1].mlp.register_forward_hook(
            lambda _m, inputs, _o: rows.append(inputs[0].shape[-2])
        )
        return model

    monkeypatch.setattr(ab_prefill.paligemma, "load_model", load_and_watch)
    out_file = tmp_path / "prune.json"
    out = ab_prefill.main(
        ["--switch", "PRUNE", "--model", str(checkpoint), "--rounds", "3", "--json", str(out_file)]
    )
    assert json.loads(out_file.read_text()) == json.loads(json.dumps(out))
    assert out["prune_min_tokens"] == 1 and gemma.PRUNE_MIN_TOKENS == 1  # restored
    assert len(out["on_prefill_s"]) == len(out["off_prefill_s"]) == 3
    ratios = [b / a for a, b in zip(out["off_prefill_s"], out["on_prefill_s"], strict=True)]
    assert out["prefill_s_ratios"] == pytest.approx(ratios)
    full = 4 + 1 + 10 + 1  # image tokens, <bos>, prompt, "\n"
    # warm-up on / off, then rounds alternating on, off / off, on / on, off (decode steps: 0)
    assert rows.count(1) == 4 and rows.count(full) == 4 and len(rows) == 8, rows


@pytest.mark.parametrize(
    "switch, flag, method",
    [("GEGLU", "FUSED_GEGLU", "geglu"), ("GELU", "FUSED_GELU", "linear_gelu")],
)
def test_fused_gelu_rounds_toggle_the_fused_call_and_restore_it(
    ab_prefill, checkpoint, switch, flag, method
):
    seen: list[bool] = []  # the flag as each prefill's MLPs saw it
    gelu = ab_prefill.cpu_gelu
    real = getattr(gelu.CpuGeluTanh, method)

    def watched(self, *args):
        seen.append(getattr(gelu, flag))
        return real(self, *args)

    setattr(gelu.CpuGeluTanh, method, watched)
    try:
        out = ab_prefill.main(["--switch", switch, "--model", str(checkpoint), "--rounds", "2"])
    finally:
        setattr(gelu.CpuGeluTanh, method, real)
    assert out[flag.lower()] is True and getattr(gelu, flag) is True  # restored
    assert len(out["on_prefill_s"]) == len(out["off_prefill_s"]) == 2
    layers = len(seen) // 6  # warm-up on / off, rounds on, off / off, on: one call a layer each
    assert layers > 0 and seen == [v for v in (1, 0, 1, 0, 0, 1) for _ in range(layers)], seen


def test_malloc_rounds_run_processes_with_the_setting_off_and_on(ab_prefill, checkpoint):
    out = ab_prefill.main(
        ["--switch", "MALLOC", "--model", str(checkpoint), "--rounds", "1", "--prefills", "1"]
    )
    assert [r["malloc_set"] for r in out["off"]] == [False]
    assert [r["malloc_set"] for r in out["on"]] == [sys.platform == "linux"]
    for key in ("prefill_s", "decode_tok_s", "peak_rss_gb"):
        on, off = out["on"][0][key], out["off"][0][key]
        assert on > 0 and off > 0 and out[f"{key}_ratios"] == pytest.approx([on / off])


def test_a_missing_checkpoint_or_switch_is_a_clear_error(ab_prefill, checkpoint, tmp_path):
    with pytest.raises(SystemExit, match="no saved checkpoint"):
        ab_prefill.main(["--switch", "PRUNE", "--model", str(tmp_path)])
    with pytest.raises(SystemExit):
        ab_prefill.main(["--model", str(tmp_path)])
    with pytest.raises(SystemExit):
        ab_prefill.main(["--switch", "PRUNE", "--model", str(checkpoint), "--rounds", "0"])
