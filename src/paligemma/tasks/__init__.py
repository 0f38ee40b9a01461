"""Tasks: PaliGemma's output grammar as objects and pictures.

`objects.py` turns `<locDDDD>`/`<segDDD>` answers into boxes and labels (and builds training
suffixes and task prompts), `vqvae.py` is the mask VQ-VAE that turns 16 `<seg>` codes into a mask
(and a mask into codes), `draw.py` draws results over the image, `video.py` samples a short
video's frames (PyAV). Imports: the core and `checkpoints/` (to read the VQ-VAE's weights) only.
"""
