"""The README's ```python examples run as written (in order, in one namespace); ```py blocks
need published weights and are not run here."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "shoe (193, 23, 404, 332) False truncated box (3 of 4 location tokens)",
        "<loc0102><loc0102><loc0512><loc0512> cat ; <loc0000><loc0000><loc0213><loc0160> dog",
        "(1, 16) (1, 64, 64)",
        "torch.Size([2, 12, 300])",
        "15",
    ], printed
