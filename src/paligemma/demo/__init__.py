"""The embedded demo model: what `paligemma demo` runs and the package ships.

Seeded synthetic scenes with exact boxes and masks (synthetic.py); the model's own tokenizer,
mask VQ-VAE and weights, each trained here from scratch (tokenizer.py, mask_vae.py, init.py,
batches.py, train.py: `python -m paligemma.demo.train`); its held-out evaluation (evaluate.py:
`python -m paligemma.demo.evaluate`), its held-out scenes in COCO / VQA formats for `paligemma
eval` (export.py: `export_scenes`); the `paligemma demo` run (run.py). It sits at the top
beside `serve/`: it may import everything below it (core, quant, checkpoints, lora, tasks,
pipeline, train, eval), and nothing imports it but the CLI.
"""

__all__ = ["export_scenes"]


def __getattr__(name: str):
    """`paligemma.demo.export_scenes`, imported on first use (so that `python -m
    paligemma.demo.export` does not find its module imported already)."""
    if name == "export_scenes":
        from .export import export_scenes

        return export_scenes
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
