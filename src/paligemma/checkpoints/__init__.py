"""Checkpoints: every published layout in, our layout out.

`load_model` reads a transformers directory (4.x or 5.x names, sharded or not), a Hugging Face Hub
id, a big_vision `.npz` or one of our quantised directories, translating names by the tables in
`names.py` and configs by `hf_config.py`; `save_model` writes the transformers layout.
`safetensors_io.py` reads and writes tensor files (one tensor at a time, atomically), `assets.py`
the files beside the weights. Imports: the core and `quant/` (for the quantised format) only.
"""

from .load import load_model, resolve_source, save_model
from .names import CheckpointError

__all__ = ["CheckpointError", "load_model", "resolve_source", "save_model"]
