"""The `paligemma` console script: info, convert, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import torch
from bigvision_npz import write_bigvision_npz
from safetensors.torch import load_file

import paligemma


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "paligemma.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_info_on_a_preset():
    out = run("info", "paligemma2-28b-896")
    assert out.returncode == 0, out.stderr
    assert "27,654,910,704 parameters" in out.stdout
    assert "4096 tokens" in out.stdout and "sliding window 4096" in out.stdout


def test_convert_npz_then_info(hf_checkpoint, tmp_path):
    _, path = hf_checkpoint
    cfg = paligemma.load_model(path).cfg
    npz = tmp_path / "ckpt.npz"
    write_bigvision_npz(
        load_file(path / "model.safetensors"),
        npz,
        gemma2=cfg.is_v2,
        num_heads=cfg.text.num_heads,
        num_kv_heads=cfg.text.num_kv_heads,
        head_dim=cfg.text.head_dim,
        vision_heads=cfg.vision.num_heads,
    )
    out = run(
        "convert",
        str(npz),
        str(tmp_path / "out"),
        "--config",
        str(path / "config.json"),
        "--dtype",
        "bfloat16",
    )
    assert out.returncode == 0, out.stderr
    converted = paligemma.load_model(tmp_path / "out")
    assert converted.dtype == torch.bfloat16
    assert converted.cfg == cfg  # the published architecture (window, soft-cap) is kept
    reference = paligemma.load_model(path, dtype=torch.bfloat16)
    for a, b in zip(converted.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    info = run("info", str(tmp_path / "out"))
    assert info.returncode == 0 and f"PaliGemma {'2' if cfg.is_v2 else '1'}" in info.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    for args in (
        ("info", str(tmp_path / "nothing-here")),
        ("info", "not-a-preset"),
        ("convert", str(tmp_path), str(tmp_path / "o")),
    ):
        out = run(*args)
        assert out.returncode == 1, args
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        assert out.stderr.startswith("paligemma: error:")


def test_serve_flags_map_onto_the_server_settings():
    """The limits' defaults live in server.Settings only; the flags override them, and the
    defaults that `serve --help` quotes are Settings'."""
    import argparse
    import dataclasses
    import re

    from paligemma.cli import commands
    from paligemma.cli import serve as cli
    from paligemma.serve import Settings

    parser = commands.build_parser()
    assert cli.settings_from(parser.parse_args(["serve"])) == Settings()
    flags = ["--max-batch", "3", "--max-queue", "5", "--timeout", "7.5", "--max-tokens", "9"]
    flags += ["--api-key", "k", "--allow-dir", "/tmp", "--allow-remote-images"]
    args = parser.parse_args(["serve", *flags])
    want = Settings(
        api_key="k", max_batch=3, max_queue=5, timeout_s=7.5, max_tokens=9, allow_dir="/tmp"
    )
    assert cli.settings_from(args) == dataclasses.replace(want, allow_remote=True)
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(cli.SERVE_SETTINGS.values()) <= fields
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.dest: a.help for a in sub.choices["serve"]._actions}
    for flag, field in cli.SERVE_SETTINGS.items():
        quoted = re.search(r"\(default ([\d.]+)\)", helps[flag] or "")
        if quoted:
            assert float(quoted.group(1)) == getattr(Settings(), field), flag
    assert sum("(default" in (helps[f] or "") for f in cli.SERVE_SETTINGS) == 4
