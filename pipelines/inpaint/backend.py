"""What an inpainting backend is: the job it gets, the result it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

from core.spec import ProgressFn
from pipelines.imaging.fields import LoraRef, ResolvedLora


@dataclass
class InpaintJob:
    """What a backend needs from the job, with the seed chosen and adapters resolved."""

    prompt: str
    steps: int
    guidance: float
    strength: float
    seed: int
    loras: list[ResolvedLora] = field(default_factory=list)


@dataclass
class BackendResult:
    image: Image.Image
    peak_gpu_memory_bytes: int | None = None
    prompt_cache_hit: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)


class Inpainter(Protocol):
    """A backend. ``inpaint`` gets the work-size RGB image and binary mask, returns the work-size
    result; ``inpaint_batch`` does the same for several jobs at once."""

    name: Literal["flux", "opencv"]
    size_multiple: int
    max_work_pixels: int | None
    memory_strategy: str | None

    def resolve_loras(self, refs: list[LoraRef]) -> list[ResolvedLora]: ...

    def inpaint(
        self, image: Image.Image, mask: Image.Image, job: InpaintJob, progress: ProgressFn
    ) -> BackendResult: ...

    def inpaint_batch(
        self,
        images: Sequence[Image.Image],
        masks: Sequence[Image.Image],
        jobs: Sequence[InpaintJob],
        progress: ProgressFn,
    ) -> list[BackendResult]:
        """Same-size jobs with one batch key; results in order. ``progress`` reports to all of them."""
        ...
