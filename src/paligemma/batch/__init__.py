"""Offline batch inference: many images in, Parquet out, one row per input (errors as a column).

The same predictor runs in one process (`engine="local"`) or as Ray Data actors (`engine="ray"`):
  predictor.py  Predictor (a callable for ray.data.Dataset.map_batches), the output schema
  inputs.py     what to read: a directory of images, a JSONL or a Parquet file -> records
  output.py     crash-safe Parquet parts (atomic renames), what a partly written run has done
  engines.py    run_batch: the local loop and the Ray Data pipeline over the same predictor

May import the pipeline and everything below it (README "Layout"); Ray is an optional extra.
"""

from .engines import run_batch
from .output import read_output
from .predictor import OUTPUT_SCHEMA, TASKS, Predictor, build_prompt

__all__ = ["OUTPUT_SCHEMA", "TASKS", "Predictor", "build_prompt", "read_output", "run_batch"]
