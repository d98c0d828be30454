"""Classical inpainting with OpenCV (Telea or Navier-Stokes): no weights, no GPU, milliseconds.

It propagates the surrounding colours into the hole, so it removes thin marks (scratches, text,
wires, small objects) well and smears large holes; it ignores the prompt, steps and seed. It is the
default backend so a local stack produces a real, visible result without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from core.errors import InvalidInput
from core.spec import ProgressFn
from pipelines.imaging.fields import LoraRef, ResolvedLora
from pipelines.inpaint.backend import BackendResult, InpaintJob
from pipelines.inpaint.spec import InpaintConfig

_FLAGS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class OpenCVInpainter:
    name: Literal["flux", "opencv"] = "opencv"
    size_multiple = 1
    max_work_pixels: int | None = None
    memory_strategy: str | None = None

    def __init__(self, config: InpaintConfig) -> None:
        self.flag = _FLAGS[config.opencv_method]
        self.radius = config.opencv_radius

    def resolve_loras(self, refs: list[LoraRef]) -> list[ResolvedLora]:
        if refs:
            raise InvalidInput(
                "adapters need the flux backend, and this service runs the OpenCV backend: remove 'loras'"
            )
        return []

    def inpaint(
        self, image: Image.Image, mask: Image.Image, job: InpaintJob, progress: ProgressFn
    ) -> BackendResult:
        progress(0.1, "inpainting")
        bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
        hole = (np.asarray(mask.convert("L")) >= 128).astype(np.uint8) * 255
        filled = cv2.inpaint(bgr, hole, float(self.radius), self.flag)
        progress(0.9, "compositing")
        return BackendResult(image=Image.fromarray(cv2.cvtColor(filled, cv2.COLOR_BGR2RGB)))

    def inpaint_batch(
        self,
        images: Sequence[Image.Image],
        masks: Sequence[Image.Image],
        jobs: Sequence[InpaintJob],
        progress: ProgressFn,
    ) -> list[BackendResult]:
        """One after the other: OpenCV has no batched call (and needs none, it takes milliseconds)."""
        return [self.inpaint(i, m, j, progress) for i, m, j in zip(images, masks, jobs, strict=True)]
