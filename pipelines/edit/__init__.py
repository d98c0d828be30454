"""``edit``: change an image as a written instruction says.

Any diffusers instruction-editing pipeline saved in a local directory: production points
``config.model_dir`` at Qwen-Image-Edit; tests use a tiny random StableDiffusionInstructPix2Pix.
The weights' placement (all on GPU, model or sequential CPU offload, VAE slicing/tiling, attention
slicing) is chosen from the device's free memory (:mod:`pipelines.imaging.memory`). Only the spec is
imported here; the loader imports the heavy parts.
"""

from pipelines.edit.spec import SPEC, EditConfig, EditInputs, EditOutputs

__all__ = ["SPEC", "EditConfig", "EditInputs", "EditOutputs"]
