"""The ``edit`` pipeline: instruction image editing through a local diffusers pipeline.

``DiffusionPipeline.from_pretrained(model_dir)`` picks the class from ``model_index.json``. The
classes differ in their call arguments (Qwen-Image-Edit takes ``true_cfg_scale`` and an explicit
size; InstructPix2Pix takes ``guidance_scale`` and ``image_guidance_scale``); :data:`FAMILIES` is
the one place that maps a job onto each class's call. The image runs at a work size (at most
``max_work_pixels``, sides rounded to what the model accepts) and the result is resized back to
the input's size and written in its format.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from core.errors import PermanentError
from core.spec import ProgressFn, RunContext, RunResult
from pipelines.edit.spec import EditConfig, EditInputs, EditOutputs
from pipelines.imaging.checks import CheckedImage, load_image
from pipelines.imaging.diffusion import (
    PeakGpuMemory,
    apply_memory_strategy,
    component_bytes,
    gpu_errors,
    is_quantized,
    make_generator,
    memory_share,
    plan_memory,
    resolve_device,
    step_progress,
    torch_dtype,
)
from pipelines.imaging.fields import pick_seed
from pipelines.imaging.lora import LoraAdapters
from pipelines.imaging.memory import (
    DEFAULT_HEADROOM,
    MemoryStrategy,
    batch_headroom,
    current_lease,
    place_text_encoders,
)
from pipelines.imaging.output import fit_work_size, save_result
from pipelines.imaging.pipeline import BatchedImagePipeline, input_path
from pipelines.imaging.weights import check_host_memory, component_sizes_on_disk, host_memory_available

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EditJob:
    instruction: str
    negative_prompt: str
    steps: int
    guidance: float
    image_guidance: float | None
    image: Image.Image


@dataclass(frozen=True)
class EditFamily:
    """How one pipeline class is called.

    Attributes:
        default_guidance: the guidance used when the job gives none.
        default_image_guidance: for classes with image guidance, its default; else ``None``.
        patchified: latents are packed 2x2 (transformer models), so sizes are multiples of
            ``2 * vae_scale_factor``.
        kwargs: the class-specific call arguments for a job.
        batches: whether several jobs may share one call. Only classes whose batched call gives
            each job the image it gets alone (checked by a batched-equals-solo test) do; the others
            run a batch's jobs one call each.
        condition: for classes that resize the image for their text encoder inside the call, the
            same resize done per job before it (see :func:`_qwen_condition`).
    """

    default_guidance: float
    default_image_guidance: float | None
    patchified: bool
    kwargs: Callable[[EditJob], dict[str, Any]]
    batches: bool = True
    condition: Callable[[Any, list[Image.Image]], list[Image.Image]] | None = None


def _qwen(job: EditJob) -> dict[str, Any]:
    return {
        "image": job.image,
        "prompt": job.instruction,
        # Qwen-Image-Edit runs true CFG only with a negative prompt; " " is the reference default.
        "negative_prompt": job.negative_prompt or " ",
        "true_cfg_scale": job.guidance,
        "width": job.image.width,
        "height": job.image.height,
    }


def _instruct_pix2pix(job: EditJob) -> dict[str, Any]:
    return {
        "image": job.image,
        "prompt": job.instruction,
        "negative_prompt": job.negative_prompt or None,
        "guidance_scale": job.guidance,
        "image_guidance_scale": job.image_guidance,
    }


def _flux_kontext(job: EditJob) -> dict[str, Any]:
    return {
        "image": job.image,
        "prompt": job.instruction,
        "guidance_scale": job.guidance,
        "width": job.image.width,
        "height": job.image.height,
    }


def _qwen_condition(pipe: Any, images: list[Image.Image]) -> list[Image.Image]:
    """Each image resized to the ~1 MP size ``QwenImageEditPipeline`` gives its vision-language
    encoder, as the call does for one image.

    The call resizes with ``VaeImageProcessor.resize``, which returns a list unchanged: in a batch
    the encoder would see the work-size images while a job alone gets the ~1 MP resize, and the
    batched images would differ from the solo ones. Done here per image, the call's own resize of
    a single image is then a no-op (same size) and a batch sees what each job sees alone.
    """
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    dimensions: Any = pipeline_qwenimage_edit.calculate_dimensions  # diffusers is untyped
    out = []
    for image in images:
        width, height, _ = dimensions(1024 * 1024, image.width / image.height)
        out.append(pipe.image_processor.resize(image, height, width))
    return out


FAMILIES: dict[str, EditFamily] = {
    "QwenImageEditPipeline": EditFamily(4.0, None, True, _qwen, condition=_qwen_condition),
    # Its call refuses any batch above 1 (ValueError): one call per job.
    "QwenImageEditPlusPipeline": EditFamily(4.0, None, True, _qwen, batches=False),
    # Not checked batched against solo: one call per job.
    "FluxKontextPipeline": EditFamily(2.5, None, True, _flux_kontext, batches=False),
    "StableDiffusionInstructPix2PixPipeline": EditFamily(7.5, 1.5, False, _instruct_pix2pix),
}


def load_edit_pipeline(config: EditConfig, dtype: torch.dtype) -> tuple[Any, EditFamily]:
    """The diffusers pipeline in ``config.model_dir`` and its call family.

    Raises:
        PermanentError: no or unreadable model directory, or a pipeline class we cannot drive.
    """
    from diffusers import DiffusionPipeline

    loader: Any = DiffusionPipeline  # diffusers is untyped
    if not config.model_dir:
        raise PermanentError("the edit pipeline needs config.model_dir (a local diffusers directory)")
    parts: dict[str, Any] = {}
    try:
        if config.transformer_gguf:
            parts["transformer"] = _gguf_transformer(config, dtype)
        pipe = loader.from_pretrained(config.model_dir, dtype=dtype, local_files_only=True, **parts)
    except (OSError, ValueError) as e:
        raise PermanentError(f"cannot load an edit model from {config.model_dir!r}: {e}") from e
    family = FAMILIES.get(type(pipe).__name__)
    if family is None:
        raise PermanentError(
            f"{type(pipe).__name__} in {config.model_dir!r} is not an instruction-editing pipeline "
            f"this service drives; supported: {', '.join(sorted(FAMILIES))}"
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe, family


def _gguf_transformer(config: EditConfig, dtype: torch.dtype) -> Any:
    """The transformer from ``config.transformer_gguf`` (e.g. a Q4_K Qwen-Image-Edit), its class
    named by the directory's ``model_index.json``."""
    import diffusers

    index = json.loads((Path(str(config.model_dir)) / "model_index.json").read_text())
    class_name = index.get("transformer", [None, None])[1]
    transformer_cls: Any = getattr(diffusers, str(class_name), None)
    if transformer_cls is None or not hasattr(transformer_cls, "from_single_file"):
        raise PermanentError(
            f"the {class_name} transformer of {config.model_dir!r} cannot load from a GGUF file"
        )
    gguf_config: Any = diffusers.GGUFQuantizationConfig
    return transformer_cls.from_single_file(
        config.transformer_gguf,
        config=config.model_dir,
        subfolder="transformer",
        quantization_config=gguf_config(compute_dtype=dtype),
        dtype=dtype,
        local_files_only=True,
    )


class EditPipeline(BatchedImagePipeline[EditInputs, EditOutputs, "_Prepared", Image.Image]):
    """Loaded once per process; :meth:`run` per job (one at a time)."""

    inputs_model = EditInputs
    what = "edit"

    def __init__(
        self,
        config: EditConfig,
        pipe: Any,
        family: EditFamily,
        device: str,
        strategy: MemoryStrategy,
        adapters: LoraAdapters,
    ) -> None:
        super().__init__()
        self.config = config
        self.pipe = pipe
        self.family = family
        self.device = device
        self.strategy = strategy
        self.adapters = adapters
        self.size_multiple = int(pipe.vae_scale_factor) * (2 if family.patchified else 1)

    @property
    def backend(self) -> str:
        return type(self.pipe).__name__

    # -- batching across jobs (gpu_service/batching.py) -------------------------------------------

    def batch_key(self, inputs: EditInputs | dict[str, Any]) -> tuple[Any, ...]:
        """Jobs that can share one call: same steps, guidance and adapters (sizes are grouped later)."""
        inputs = self.validate(inputs)
        loras = tuple((lora.path, lora.weight) for lora in inputs.loras)
        return (inputs.steps, inputs.guidance, inputs.image_guidance, loras)

    # -- the steps of one job ------------------------------------------------------------------------

    def _prepare(self, inputs: EditInputs, ctx: RunContext) -> _Prepared:
        t0 = time.perf_counter()
        ctx.progress(0.0, "checking inputs")
        checked = load_image(input_path(ctx, "image"), self.config, what="image")
        loras = self.adapters.resolve(inputs.loras)
        seed = pick_seed(inputs.seed)
        width, height = checked.size
        work = fit_work_size(
            width, height, multiple=self.size_multiple, max_pixels=self.config.max_work_pixels
        )
        work_image = (
            checked.image if work == checked.size else checked.image.resize(work, Image.Resampling.LANCZOS)
        )
        guidance = inputs.guidance if inputs.guidance is not None else self.family.default_guidance
        image_guidance = None
        if self.family.default_image_guidance is not None:
            image_guidance = (
                inputs.image_guidance
                if inputs.image_guidance is not None
                else self.family.default_image_guidance
            )
        job = EditJob(
            instruction=inputs.instruction,
            negative_prompt=inputs.negative_prompt,
            steps=inputs.steps,
            guidance=guidance,
            image_guidance=image_guidance,
            image=work_image,
        )
        log.info(
            "edit job %s: %dx%d (work %dx%d), %s, seed %d",
            ctx.job_id, width, height, *work, self.backend, seed,
        )  # fmt: skip
        return _Prepared(inputs, checked, loras, seed, work, job, t0, {"checks": time.perf_counter() - t0})

    def _call(self, batch: Sequence[_Prepared], progress: ProgressFn) -> list[Image.Image]:
        """One model call for jobs of one work size and batch key, a generator per job (one call
        per job for a family that does not batch)."""
        t1 = time.perf_counter()
        if self.family.batches or len(batch) == 1:
            images, peak = self._model_call(batch, progress)
        else:
            images, peak = [], 0
            for p in batch:
                [image], one_peak = self._model_call([p], progress)
                images.append(image)
                peak = max(peak, one_peak or 0)
        seconds = time.perf_counter() - t1
        for p in batch:
            p.timings["inference"] = seconds
            p.timings["batch_size"] = len(batch) if self.family.batches else 1
            p.peak = peak or None
        return images

    def _model_call(
        self, batch: Sequence[_Prepared], progress: ProgressFn
    ) -> tuple[list[Image.Image], int | None]:
        first = batch[0]
        jobs = [p.job for p in batch]
        if self.family.condition is not None:
            conditioned = self.family.condition(self.pipe, [job.image for job in jobs])
            jobs = [replace(job, image=image) for job, image in zip(jobs, conditioned, strict=True)]
        calls = [self.family.kwargs(job) for job in jobs]
        kwargs: dict[str, Any] = {}
        for key in calls[0]:
            values = [c[key] for c in calls]
            if key in PER_JOB_ARGUMENTS:
                kwargs[key] = values if len(batch) > 1 else values[0]
                if key == "negative_prompt" and len(batch) > 1:
                    kwargs[key] = None if all(v is None for v in values) else [v or "" for v in values]
            else:
                kwargs[key] = values[0]  # equal for the whole batch: same key, same work size
        # The output size is the work size, whatever size the image was conditioned at.
        if "width" in kwargs:
            kwargs["width"], kwargs["height"] = first.work
        generators = [make_generator(p.seed) for p in batch]
        with gpu_errors(), PeakGpuMemory(self.device) as peak, self.adapters.applied(self.pipe, first.loras):
            out = self.pipe(
                **kwargs,
                num_inference_steps=first.job.steps,
                generator=generators if len(batch) > 1 else generators[0],
                callback_on_step_end=step_progress(progress, first.job.steps),
                output_type="pil",
            )
        return list(out.images), peak.peak_bytes

    def _finish(self, p: _Prepared, result: Image.Image, ctx: RunContext) -> RunResult[EditOutputs]:
        inputs, checked = p.inputs, p.checked
        t2 = time.perf_counter()
        ctx.progress(1.0, "writing result")
        if result.size != checked.size:
            result = result.resize(checked.size, Image.Resampling.LANCZOS)
        fmt = inputs.output_format or checked.format
        key, path = save_result(
            result.convert("RGB"), Path(ctx.workdir), fmt, self.config, icc_profile=checked.icc_profile
        )
        p.timings["write"] = time.perf_counter() - t2
        p.timings["total"] = time.perf_counter() - p.started
        width, height = checked.size
        outputs = EditOutputs(
            result_file=key,
            width=width,
            height=height,
            format=fmt,
            seed=p.seed,
            backend=self.backend,
            work_width=p.work[0],
            work_height=p.work[1],
            steps=inputs.steps,
            guidance=p.job.guidance,
            image_guidance=p.job.image_guidance,
            loras=[lora.ref for lora in p.loras],
            memory_strategy=self.strategy.name,
            peak_gpu_memory_bytes=p.peak,
            notes=checked.notes,
            timings={k: round(v, 4) for k, v in p.timings.items()},
        )
        return RunResult(
            outputs=outputs,
            files={key: path},
            metadata={"backend": self.backend, "memory_strategy": self.strategy.name},
            uri_fields={"image": key},
        )


#: Call arguments that differ per job in a batched call (lists); the others are the batch's own.
PER_JOB_ARGUMENTS = frozenset({"image", "prompt", "negative_prompt"})


@dataclass
class _Prepared:
    """One job of the edit pipeline, checked and ready for the model call."""

    inputs: EditInputs
    checked: CheckedImage
    loras: list[Any]
    seed: int
    work: tuple[int, int]
    job: EditJob
    started: float
    timings: dict[str, float]
    peak: int | None = None


def load(config: EditConfig) -> EditPipeline:
    """The spec's loader: check the sizes, load the model once, place it.

    The sizes are read from the files first: a model that host memory or this pipeline's share of
    the GPU cannot hold is refused with the numbers before any weight is read (Qwen-Image-Edit in
    bf16, 58 GB, on a 32 GiB / 24 GB L4 service).
    """
    if not isinstance(config, EditConfig):
        config = EditConfig.model_validate(config)
    device = resolve_device(config.device)
    dtype = torch_dtype(config.dtype, device)
    if config.model_dir and (Path(config.model_dir) / "model_index.json").exists():
        replaced = {"transformer": Path(config.transformer_gguf)} if config.transformer_gguf else {}
        on_disk = component_sizes_on_disk(config.model_dir, dtype.itemsize, replaced=replaced)
        _plan(config, device, on_disk, quantized=bool(config.transformer_gguf))  # refuses early
        check_host_memory("edit", on_disk, host_memory_available())
    pipe, family = load_edit_pipeline(config, dtype)
    quantized = is_quantized(pipe)
    adapters = LoraAdapters.prepare(pipe, config, quantized=quantized)
    strategy, stream = _plan(config, device, component_bytes(pipe), quantized=quantized)
    apply_memory_strategy(pipe, strategy, device, stream=stream)
    return EditPipeline(config, pipe, family, device, strategy, adapters)


def _plan(
    config: EditConfig, device: str, sizes: dict[str, int], *, quantized: bool
) -> tuple[MemoryStrategy, tuple[str, ...]]:
    """The memory strategy, and the components streamed to the GPU (the text encoder, when it does
    not fit beside the denoiser: Qwen2.5-VL 7B next to a quantized Qwen-Image transformer on an L4).

    Raises:
        PermanentError: ``gpu_memory_short`` with the numbers.
    """
    encoders = {n: b for n, b in sizes.items() if n == "text_encoder"}
    denoiser = {n: b for n, b in sizes.items() if n not in encoders}
    placement: str = config.text_encoder_device
    if placement == "auto" and encoders and config.memory_strategy in ("auto", "gpu"):
        lease = current_lease()
        placement, why = place_text_encoders(
            device,
            memory_share(device),
            denoiser_bytes=sum(denoiser.values()),
            encoder_bytes=sum(encoders.values()),
            headroom_bytes=batch_headroom(DEFAULT_HEADROOM, lease.max_batch if lease else 1),
        )
        log.info("edit: text encoder %s (%s)", placement, why)
    if placement == "stream" and encoders and device.startswith("cuda"):
        try:
            strategy = plan_memory(
                "gpu" if config.memory_strategy == "gpu" else "auto",
                device,
                denoiser,
                what="edit",
                quantized=quantized,
            )
        except PermanentError:
            strategy = None  # the denoiser alone does not fit either: plan the whole model below
        if strategy is not None and strategy.placement == "gpu":
            return strategy, tuple(encoders)
    return plan_memory(config.memory_strategy, device, sizes, what="edit", quantized=quantized), ()
