"""``inpaint``: replace the white area of a mask in an image.

Backends (``config.backend``): ``opencv`` (default; classical Telea / Navier-Stokes, no weights,
no GPU) and ``flux`` (FLUX.1 Fill through diffusers, optionally with a GGUF Q8 transformer; see
:mod:`pipelines.inpaint.flux_backend` for the 24 GB L4 memory plan). Pixels outside the mask are
kept exactly. Only the spec is imported here; the loader imports the heavy parts.
"""

from pipelines.inpaint.spec import SPEC, InpaintConfig, InpaintInputs, InpaintOutputs

__all__ = ["SPEC", "InpaintConfig", "InpaintInputs", "InpaintOutputs"]
