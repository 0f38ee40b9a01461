"""`paligemma eval`: benchmarks scored by their own rules. The task registry (tasks.py: reader,
prompt, decoding, metrics per benchmark), the resumable loop (run.py), the scoring of boxes,
masks and referring expressions (objects.py, matching.py), and the report (report.py:
summary.md, worst.png). Imports: the core, `tasks/`, `metrics/`, `data/` and `pipeline` only.
"""

from .run import evaluate_dataset
from .tasks import TASKS, EvalTask

__all__ = ["TASKS", "EvalTask", "evaluate_dataset"]
