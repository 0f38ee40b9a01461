"""Training: the loop skeleton every run shares (loop.py: learning-rate schedule, settings
fingerprint, running averages and metrics.jsonl, progress bar, save cadence, resume), training
checkpoints that survive a kill (state.py), curves.png and TensorBoard logging (curves.py),
fine-tuning data (data.py), fine-tuning itself (finetune.py: suffix-only loss, the run;
prepare.py: full / attention / LoRA / QLoRA), a run's settings on resume (resume.py), and
several processes under torchrun (distributed.py: process group, shared data order, DDP /
FSDP2; sharded.py: their torch.distributed.checkpoint checkpoints). It may import the core,
quant, checkpoints, lora, tasks and pipeline; serve/ never imports it, demo/ and the CLI do.
"""
