"""Datasets in: readers of the formats people have (COCO instances and captions, VQAv2,
RefCOCO, a folder of images with a CSV/JSONL, Hugging Face `datasets` / parquet) into one
Record type (records.py), and the converter of records into training examples (examples.py)
that `paligemma data convert` and `paligemma finetune --data-format` use (convert.py).
Imports: the core, `checkpoints/`, `tasks/` and `metrics/` only.
"""

from .examples import TASKS, to_examples
from .read import FORMATS, read_dataset
from .records import DataFormatError, Dataset, MissingExtra, Record, Target

__all__ = [
    "FORMATS",
    "TASKS",
    "DataFormatError",
    "Dataset",
    "MissingExtra",
    "Record",
    "Target",
    "read_dataset",
    "to_examples",
]
