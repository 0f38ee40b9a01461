"""The README's main-job command, verbatim, in a copy of the repository and a fresh virtual
environment: what a newcomer sees (slow: it installs torch and the package)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).parents[1]


def quick_start_commands() -> list[str]:
    section = (ROOT / "README.md").read_text().split("\n## Quick start\n", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [f for f in out.stdout.split("\0") if f]


def test_main_command_runs_in_a_fresh_venv(tmp_path):
    repo = tmp_path / "repo"
    for name in tracked_files():  # what a clone holds
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, repo / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    main = quick_start_commands()[0]
    done = subprocess.run(
        ["bash", "-c", main], cwd=repo, env=env, capture_output=True, text=True, timeout=1800
    )
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-4000:]
    assert (venv / "bin" / "paligemma").is_file()  # installed into the fresh venv
    for expected in ("caption en", "answer en how many shapes are there?", "detect", "segment"):
        assert expected in out, out[-3000:]
    caption = re.search(r"^caption en\s+-> (.*)$", out, re.M).group(1)
    assert re.fullmatch(r"a \w+ \w+( and a \w+ \w+)?", caption), caption
    count = re.search(r"how many shapes are there\?\s+-> (.*)$", out, re.M).group(1)
    assert count in {"1", "2", "3"}
    iou = re.search(
        r"^segment \w+\s+-> \d+ mask\(s\), \d+ px, IoU with truth (\d\.\d\d)$", out, re.M
    )
    assert iou and float(iou.group(1)) >= 0.5, out[-3000:]  # the shipped model segments it
    picture = Image.open(repo / "demo.png")
    assert picture.width > 3 * 224 and picture.height >= 224
