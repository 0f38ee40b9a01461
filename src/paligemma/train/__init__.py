"""Training: the loop skeleton every run shares (loop.py: learning-rate schedule, settings
fingerprint, running averages and metrics.jsonl, progress bar, save cadence, resume), training
checkpoints that survive a kill (state.py), curves.png and TensorBoard logging (curves.py),
fine-tuning data (data.py), fine-tuning itself (finetune.py: full / attention / LoRA / QLoRA,
suffix-only loss) and a run's settings on resume (resume.py). It may import the core,
quant, checkpoints, lora, tasks and pipeline; serve/ never imports it, demo/ and the CLI do.
"""
