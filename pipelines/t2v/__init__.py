"""``t2v``: a short video from a written prompt (Wan 2.1 text-to-video through diffusers).

``config.model_dir`` is a local diffusers ``WanPipeline`` directory (production: Wan2.1-T2V-1.3B,
whose memory plan for one 24 GB L4 is in :mod:`pipelines.t2v.pipeline`); tests build a tiny random
one. The result is an H.264 MP4 (yuv420p, so every player shows it) and a poster frame. Only the
spec is imported here; the loader imports the heavy parts.
"""

from pipelines.t2v.spec import SPEC, T2VConfig, T2VInputs, T2VOutputs

__all__ = ["SPEC", "T2VConfig", "T2VInputs", "T2VOutputs"]
