"""Mechanical checks of the project's layout rules (README "Layout").

The package is built in layers. A *unit* is a flat module of the core or a subpackage; a unit may
import only units of lower layers (and its own package's modules). Inside the core, a finer table
says which core module may import which, so the model files never reach the edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "paligemma"

# Bottom to top. Units of one layer do not import each other.
LAYERS: list[set[str]] = [
    {
        "config",
        "activations",
        "project",
        "kv_cache",
        "siglip",
        "gemma",
        "model",
        "decode_graph",
        "generate",
        "tokenizer",
        "processor",
        "textstream",
    },
    {"quant"},
    {"checkpoints"},
    {"lora"},
    {"tasks"},
    {"metrics"},
    {"data"},
    {"pipeline"},
    {"train"},
    {"eval", "batch"},
    {"serve", "demo"},
    {"cli"},
    {"__init__", "__main__"},
]
# The core's own arrows: the model files import nothing outside them.
CORE = {
    "config": set(),
    "activations": set(),
    "project": set(),
    "kv_cache": set(),
    "siglip": {"config", "activations", "project"},
    "gemma": {"config", "activations", "project", "kv_cache"},
    "model": {"config", "siglip", "gemma", "kv_cache"},
    "decode_graph": {"model", "kv_cache"},
    "generate": {"config", "model", "decode_graph"},
    "tokenizer": {"config"},
    "processor": {"config", "tokenizer"},
    "textstream": {"tokenizer"},
}


def unit_of(path: Path, root: Path) -> str:
    """The unit a file belongs to: its subpackage, or its own name when flat."""
    parts = path.relative_to(root).with_suffix("").parts
    return parts[0]


def imported_units(path: Path, root: Path) -> set[str]:
    """Units of the package that `path` imports (relative or absolute `paligemma.` imports)."""
    here = path.relative_to(root).with_suffix("").parts[:-1]  # its package, inside the root
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[: len(here) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # from . import x at the top level: x is a unit
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "paligemma":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("paligemma.")}
    return found


def layer_violations(root: Path) -> list[str]:
    """Every import of `root`'s package that breaks the layer rules, as 'file: message'."""
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    problems = []
    for path in sorted(root.rglob("*.py")):
        unit = unit_of(path, root)
        name = f"{path.relative_to(root)}"
        if unit not in layer:
            problems.append(f"{name}: unit {unit!r} is in no layer (add it to LAYERS)")
            continue
        for other in imported_units(path, root) - {unit}:
            if other not in layer:
                problems.append(f"{name}: imports {other!r}, which is in no layer")
            elif unit in CORE and other not in CORE[unit]:
                problems.append(f"{name}: core module {unit} imports {other}")
            elif unit not in CORE and layer[other] >= layer[unit]:
                problems.append(f"{name}: {unit} imports {other} (not a lower layer)")
    return problems


def test_imports_only_go_down():
    assert layer_violations(SRC) == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check is not vacuous: a core file importing an edge, an edge importing a higher edge,
    an absolute import and a module in no layer are each reported."""
    pkg = tmp_path / "paligemma"
    for sub in ("quant", "serve", "checkpoints"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "gemma.py").write_text("from .quant.linear import Int8Linear\n")
    (pkg / "model.py").write_text("from .gemma import Attention\n")
    (pkg / "checkpoints" / "load.py").write_text("from ..serve import app\n")
    (pkg / "quant" / "x.py").write_text("import paligemma.checkpoints.load\n")
    (pkg / "helpers.py").write_text("")
    problems = layer_violations(pkg)
    assert any("gemma.py: core module gemma imports quant" in p for p in problems), problems
    assert any("checkpoints imports serve" in p for p in problems), problems
    assert any("quant imports checkpoints" in p for p in problems), problems
    assert any("unit 'helpers' is in no layer" in p for p in problems), problems
    assert not any(p.startswith("model.py") for p in problems), problems


def test_no_reference_library_or_pickle_at_run_time():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in {"transformers", "pickle"} for n in names), path
        assert "allow_pickle=True" not in path.read_text(), path
        assert "torch.load(" not in path.read_text(), path


def oversized(root: Path, max_lines: int = 400, max_function: int = 60) -> list[str]:
    """Files over `max_lines` lines and functions over `max_function` lines, as 'file: what'."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(root)
        if (lines := len(text.splitlines())) > max_lines:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > max_function:
                    found.append(f"{name}: {node.name}() is {length} lines")
    return found


def test_no_file_over_400_lines_and_no_function_over_60():
    assert oversized(SRC) == []


def test_the_size_check_catches_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "a.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    pass\n")
    assert oversized(tmp_path) == ["a.py: long() is 61 lines"]
