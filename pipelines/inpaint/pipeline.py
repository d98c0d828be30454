"""The ``inpaint`` pipeline: checks, backend call, exact compositing, result file.

The flow is the same for both backends:

1. check the image and mask (:mod:`pipelines.imaging.checks`) and resolve adapters: every
   :class:`~core.errors.InvalidInput` happens here, before any model work;
2. fit a work size the backend accepts (Flux: sides in multiples of 16, at most
   ``max_work_pixels``; OpenCV: the original size);
3. run the backend at the work size;
4. resize its output back and paste the original outside the mask, so those pixels are
   unchanged bit for bit (in PNG or lossless WebP output);
5. write ``result.<ext>`` in the input's format unless ``output_format`` says otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from core.spec import ProgressFn, RunContext, RunResult
from pipelines.imaging.checks import CheckedImage, load_image, load_mask
from pipelines.imaging.fields import pick_seed
from pipelines.imaging.output import composite, fit_work_size, save_result
from pipelines.imaging.pipeline import BatchedImagePipeline, input_path
from pipelines.inpaint.backend import BackendResult, Inpainter, InpaintJob
from pipelines.inpaint.spec import InpaintConfig, InpaintInputs, InpaintOutputs

log = logging.getLogger(__name__)


class InpaintPipeline(BatchedImagePipeline[InpaintInputs, InpaintOutputs, "_Prepared", BackendResult]):
    """Loaded once per process; :meth:`run` per job (one at a time), or :meth:`run_batch` for
    jobs that share a batch key (the flux backend denoises same-size jobs in one call, OpenCV
    takes them one by one)."""

    inputs_model = InpaintInputs
    what = "inpaint"

    def __init__(self, config: InpaintConfig, backend: Inpainter) -> None:
        super().__init__()
        self.config = config
        self.backend = backend

    def batch_key(self, inputs: InpaintInputs | dict[str, Any]) -> tuple[Any, ...]:
        """Jobs that can share one call: same steps, guidance, strength and adapters (sizes are
        grouped later); prompts and seeds stay per job."""
        inputs = self.validate(inputs)
        loras = tuple((lora.path, lora.weight) for lora in inputs.loras)
        return (inputs.steps, inputs.guidance, inputs.strength, loras)

    # -- the steps of one job ------------------------------------------------------------------------

    def _prepare(self, inputs: InpaintInputs, ctx: RunContext) -> _Prepared:
        """Checks (every :class:`~core.errors.InvalidInput` is raised here), seed and work size."""
        t0 = time.perf_counter()
        ctx.progress(0.0, "checking inputs")
        checked = load_image(input_path(ctx, "image"), self.config, what="image")
        mask = load_mask(input_path(ctx, "mask"), checked.size, self.config, notes=checked.notes)
        loras = self.backend.resolve_loras(inputs.loras)
        seed = pick_seed(inputs.seed)
        width, height = checked.size
        work = fit_work_size(
            width, height, multiple=self.backend.size_multiple, max_pixels=self.backend.max_work_pixels
        )
        if work != checked.size:
            work_image = checked.image.resize(work, Image.Resampling.LANCZOS)
            # Any overlap with the mask counts as masked, so the model repaints at least the mask.
            work_mask = mask.resize(work, Image.Resampling.BILINEAR).point(lambda v: 255 if v > 0 else 0)
        else:
            work_image, work_mask = checked.image, mask
        job = InpaintJob(
            prompt=inputs.prompt,
            steps=inputs.steps,
            guidance=inputs.guidance,
            strength=inputs.strength,
            seed=seed,
            loras=loras,
        )
        log.info(
            "inpaint job %s: %dx%d (work %dx%d), backend %s, seed %d",
            ctx.job_id, width, height, *work, self.backend.name, seed,
        )  # fmt: skip
        timings = {"checks": time.perf_counter() - t0}
        return _Prepared(inputs, checked, mask, work, work_image, work_mask, job, t0, timings)

    def _call(self, batch: Sequence[_Prepared], progress: ProgressFn) -> list[BackendResult]:
        t1 = time.perf_counter()
        if len(batch) == 1:
            [p] = batch
            outs = [self.backend.inpaint(p.work_image, p.work_mask, p.job, progress)]
        else:
            outs = self.backend.inpaint_batch(
                [p.work_image for p in batch], [p.work_mask for p in batch], [p.job for p in batch], progress
            )
        seconds = time.perf_counter() - t1
        for p, out in zip(batch, outs, strict=True):
            p.timings.update(out.timings)
            p.timings["inference"] = seconds
            p.timings["batch_size"] = len(batch)
        return outs

    def _finish(self, p: _Prepared, result: BackendResult, ctx: RunContext) -> RunResult[InpaintOutputs]:
        inputs, checked = p.inputs, p.checked
        t2 = time.perf_counter()
        ctx.progress(1.0, "writing result")
        final = composite(checked.image, result.image, p.mask)
        fmt = inputs.output_format or checked.format
        key, path = save_result(final, Path(ctx.workdir), fmt, self.config, icc_profile=checked.icc_profile)
        p.timings["write"] = time.perf_counter() - t2
        p.timings["total"] = time.perf_counter() - p.started

        width, height = checked.size
        is_flux = self.backend.name == "flux"
        outputs = InpaintOutputs(
            result_file=key,
            width=width,
            height=height,
            format=fmt,
            seed=p.job.seed,
            backend=self.backend.name,
            work_width=p.work[0],
            work_height=p.work[1],
            steps=inputs.steps if is_flux else None,
            guidance=inputs.guidance if is_flux else None,
            strength=inputs.strength if is_flux else None,
            loras=[lora.ref for lora in p.job.loras],
            memory_strategy=self.backend.memory_strategy,
            peak_gpu_memory_bytes=result.peak_gpu_memory_bytes,
            prompt_cache_hit=result.prompt_cache_hit,
            notes=checked.notes,
            timings={k: round(v, 4) for k, v in p.timings.items()},
        )
        metadata: dict[str, Any] = {
            "backend": self.backend.name,
            "memory_strategy": self.backend.memory_strategy,
        }
        return RunResult(outputs=outputs, files={key: path}, metadata=metadata, uri_fields={"image": key})


@dataclass
class _Prepared:
    """One inpaint job, checked and ready for the backend call."""

    inputs: InpaintInputs
    checked: CheckedImage
    mask: Image.Image
    work: tuple[int, int]
    work_image: Image.Image
    work_mask: Image.Image
    job: InpaintJob
    started: float
    timings: dict[str, float]


def load(config: InpaintConfig) -> InpaintPipeline:
    """The spec's loader: build the configured backend (Flux weights load here, once)."""
    if not isinstance(config, InpaintConfig):
        config = InpaintConfig.model_validate(config)
    backend: Inpainter
    if config.backend == "opencv":
        from pipelines.inpaint.opencv_backend import OpenCVInpainter

        backend = OpenCVInpainter(config)
    else:
        from pipelines.inpaint.flux_backend import FluxFillInpainter

        backend = FluxFillInpainter.load(config)
    return InpaintPipeline(config, backend)
