"""Mechanical checks of the project's layout rules (STYLE.md section 7)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "paligemma"
# Each module may import only the modules listed (downward arrows of the layout).
ALLOWED = {
    "config": set(),
    "kv_cache": set(),
    "siglip": {"config"},
    "gemma": {"config", "kv_cache"},
    "model": {"config", "siglip", "gemma", "kv_cache"},
    "hf_config": {"config"},
    "weights": {"config"},
    "checkpoint": {"config", "hf_config", "model", "weights", "quantize", "reader"},
    "reader": {"weights"},
    "cli": {
        "config",
        "model",
        "checkpoint",
        "pipeline",
        "processor",
        "draw",
        "finetune",
        "demo",
        "server",
    },
    "synthetic": {"objects"},
    "demo": {"synthetic", "draw", "embedded_eval"},
    "embedded_eval": {"synthetic", "vqvae", "pipeline"},
    "embedded_train": {
        "synthetic",
        "checkpoint",
        "config",
        "finetune",
        "model",
        "processor",
        "tokenizer",
        "train_state",
        "vqvae",
        "embedded_eval",
        "pipeline",
        "reader",
    },
    "batcher": {"generate", "pipeline"},
    "server": {"batcher", "objects", "pipeline", "processor"},
    "objects": set(),
    "quantize": {"cpu_kernels"},
    "cpu_kernels": set(),
    "lora": {"config", "quantize", "weights", "reader"},
    "data": {"pipeline", "processor"},
    "finetune": {
        "checkpoint",
        "data",
        "lora",
        "pipeline",
        "processor",
        "quantize",
        "siglip",
        "train_state",
    },
    "train_state": {"reader"},
    "vqvae": {"weights"},
    "draw": {"objects"},
    "tokenizer": set(),
    "processor": {"tokenizer"},
    "generate": {"model"},
    "pipeline": {
        "cpu_kernels",
        "quantize",
        "generate",
        "checkpoint",
        "lora",
        "model",
        "processor",
        "tokenizer",
        "objects",
        "vqvae",
    },
    "__init__": {
        "checkpoint",
        "config",
        "generate",
        "hf_config",
        "kv_cache",
        "model",
        "pipeline",
        "processor",
        "tokenizer",
        "objects",
        "vqvae",
        "draw",
        "weights",
    },
}
CORE = {
    "config",
    "siglip",
    "gemma",
    "model",
    "kv_cache",
    "hf_config",
    "weights",
    "checkpoint",
    "reader",
}


def local_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
            found |= {a.name for a in node.names}  # from . import generate
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("paligemma"):
            found.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("paligemma.")}
    return found


def test_imports_only_go_down():
    for path in SRC.glob("*.py"):
        name = path.stem
        assert name in ALLOWED, f"new module {name}: add it to the layout table"
        extra = local_imports(path) - ALLOWED[name]
        assert not extra, f"{name} imports {extra}"


def test_no_reference_library_or_pickle_at_run_time():
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in {"transformers", "pickle"} for n in names), path
        assert "allow_pickle=True" not in path.read_text(), path
        assert "torch.load(" not in path.read_text(), path


def test_core_files_stay_small():
    for name in CORE:
        lines = len((SRC / f"{name}.py").read_text().splitlines())
        assert lines <= 400, f"{name}.py has {lines} lines"
