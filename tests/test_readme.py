"""The README's ```python examples run as written (in order, in one namespace); ```py blocks
need published weights and are not run here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from server_util import serve_process

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture
def served(monkeypatch):
    """A real `paligemma serve` (the embedded model) on a free loopback port; PALIGEMMA_URL
    points the README's client example at it, as a user's environment would."""
    with serve_process() as base:
        monkeypatch.setenv("PALIGEMMA_URL", base)
        yield base


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys, served):
    """Each block runs (the server example against a real `paligemma serve`); what it prints
    is what its `# -> ...` comments say, in order."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    assert sum("PALIGEMMA_URL" in b for b in blocks) == 1  # the server example
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    expected = [line for block in blocks for line in re.findall(r"# -> (.*)$", block, re.M)]
    assert len(expected) >= 5
    assert printed == expected


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    section = README.read_text().split("\n## Quick start\n", 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 2
    assert "paligemma demo" in lines[0] and "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text()
    assert "## Quick start" in ci and "lines[1]" in ci
