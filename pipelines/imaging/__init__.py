"""Shared pieces of the image pipelines (``inpaint``, ``edit``).

- :mod:`~pipelines.imaging.fields`: input/output field types and the fields every image job's
  inputs, outputs and config share (pydantic only; cheap to import).
- :mod:`~pipelines.imaging.pipeline`: the base of the loaded pipelines (inputs validated, one job at
  a time).
- :mod:`~pipelines.imaging.checks`: input image and mask checks, before any model work (Pillow).
- :mod:`~pipelines.imaging.output`: work sizes, compositing, writing ``result.<ext>``.
- :mod:`~pipelines.imaging.memory`: choosing a GPU memory strategy (pure logic).
- :mod:`~pipelines.imaging.diffusion`: torch/diffusers helpers (placement, seeds, progress, OOM).
- :mod:`~pipelines.imaging.lora`: per-job LoRA adapters with an LRU cache.

This ``__init__`` imports nothing, so specs can import :mod:`~pipelines.imaging.fields` without Pillow
or torch.
"""
