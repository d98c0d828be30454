"""FLUX.1 Fill inpainting with diffusers, sized for one 24 GB L4.

Memory plan for FLUX.1-Fill-dev on an L4 (24 GB, about 22 GB free after the CUDA context), made by
:func:`~pipelines.imaging.diffusion.plan_memory` against this pipeline's share of the process's GPU
budget (the model pool lends it):

=====================  ==========  ============================================================
component              size        where it lives
=====================  ==========  ============================================================
transformer, GGUF Q8_0  ~12.7 GB   GPU, resident between jobs (``transformer_gguf``; compute in
                                   bf16). bf16 would be ~23.8 GB and cannot share an L4. Where
                                   the share holds the dequantized weights (an H100) it is
                                   dequantized once at load (``gguf_dequantize: auto``), so no
                                   step dequantizes. Never sequentially offloaded (``KeyError:
                                   None``: accelerate drops the quantization type).
T5-XXL encoder, bf16    ~9.5 GB    placed by measurement (``text_encoder_device: auto``): with
CLIP-L encoder          ~0.25 GB   the pipeline when the share holds them beside the denoiser
                                   and headroom (an H100); else streamed to the GPU block by block
                                   per new prompt (``stream``: one T5 block on the GPU at a time,
                                   ~9.5 GB over PCIe, about a second), not run on a few vCPUs.
VAE                     ~0.17 GB   GPU; slicing whenever jobs are batched, tiling when tight
activations at 1 MP     ~2-3 GB    the 3 GiB headroom, plus 1 GiB per extra image of a batch
=====================  ==========  ============================================================

Prompt embeddings are cached per prompt (an LRU of ``(prompt_embeds, pooled_prompt_embeds)`` in
host memory, ~4 MB each at 512 tokens), so repeated prompts (a UI's default prompt, retries,
batches) never touch the text encoders. The cache is bypassed for a job whose adapters carry
text-encoder layers (their embeddings differ). When the encoders are not placed with the pipeline
(``stream`` or ``cpu``) the pipeline is split: a denoising pipeline without text encoders gets the
memory strategy (and the job's adapters, so text-encoder layers of an adapter are ignored there).

So on an L4: the Q8 transformer and VAE resident (``gpu``, ~12.9 GB; peak ~16 GB at 1 MP), T5 and
CLIP streamed. Peak GPU memory (``torch.cuda.max_memory_allocated``) is reported with every job on
CUDA. Inputs above ``max_work_pixels`` (1 MP by default) are run downscaled and the result resized
back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import torch
from PIL import Image

from core.errors import PermanentError
from core.spec import ProgressFn
from pipelines.imaging.diffusion import (
    PeakGpuMemory,
    apply_memory_strategy,
    component_bytes,
    dequantize_fits,
    gpu_errors,
    is_quantized,
    make_generator,
    memory_share,
    plan_memory,
    resolve_device,
    step_progress,
    stream_to,
    torch_dtype,
)
from pipelines.imaging.fields import LoraRef, ResolvedLora
from pipelines.imaging.lora import JOB_ADAPTER_PREFIX, LoraAdapters
from pipelines.imaging.memory import (
    DEFAULT_HEADROOM,
    EncoderPlacement,
    MemoryStrategy,
    batch_headroom,
    current_lease,
    place_text_encoders,
)
from pipelines.inpaint.backend import BackendResult, InpaintJob
from pipelines.inpaint.spec import InpaintConfig

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


def load_flux_fill(config: InpaintConfig, device: str, dtype: torch.dtype) -> Any:
    """``FluxFillPipeline`` from ``config.model_dir``, the transformer from a GGUF file if configured.

    Raises:
        PermanentError: the directory or file is missing or unreadable (a deployment error).
    """
    import diffusers

    # diffusers is untyped
    pipeline_cls: Any = diffusers.FluxFillPipeline
    transformer_cls: Any = diffusers.FluxTransformer2DModel
    gguf_config: Any = diffusers.GGUFQuantizationConfig

    if not config.model_dir:
        raise PermanentError("the flux backend needs config.model_dir (a local FLUX.1-Fill-dev directory)")
    parts: dict[str, Any] = {}
    try:
        if config.transformer_gguf:
            parts["transformer"] = transformer_cls.from_single_file(
                config.transformer_gguf,
                config=config.model_dir,
                subfolder="transformer",
                quantization_config=gguf_config(compute_dtype=dtype),
                dtype=dtype,
                local_files_only=True,
            )
        pipe = pipeline_cls.from_pretrained(config.model_dir, dtype=dtype, local_files_only=True, **parts)
    except (OSError, ValueError) as e:
        raise PermanentError(f"cannot load FLUX.1 Fill from {config.model_dir!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FluxFillInpainter:
    """The ``flux`` backend: loaded once, one job at a time."""

    name: Literal["flux", "opencv"] = "flux"

    def __init__(
        self,
        config: InpaintConfig,
        pipe: Any,
        denoiser: Any,
        device: str,
        dtype: torch.dtype,
        strategy: MemoryStrategy,
        adapters: LoraAdapters,
    ) -> None:
        self.config = config
        self.pipe = pipe  # holds the text encoders
        self.denoiser = denoiser  # the pipeline called per job (the same object unless split)
        self.device = device
        self.dtype = dtype
        self.strategy = strategy
        self.adapters = adapters
        self.size_multiple = int(pipe.vae_scale_factor) * 2
        self.max_work_pixels: int | None = config.max_work_pixels
        self.memory_strategy: str | None = strategy.name
        self._prompts: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        #: where the text encoders run: with the ``pipeline``, ``stream``-ed to the GPU, or ``cpu``
        self.encoder_placement: EncoderPlacement = "pipeline"

    @classmethod
    def load(cls, config: InpaintConfig) -> FluxFillInpainter:
        device = resolve_device(config.device)
        dtype = torch_dtype(config.dtype, device)
        pipe = load_flux_fill(config, device, dtype)
        quantized = is_quantized(pipe.transformer)
        encoders = component_bytes(pipe, keep=TEXT_ENCODERS)
        placement, why = cls._encoder_placement(config, device, pipe, encoders)
        log.info("inpaint/flux: text encoders %s (%s)", placement, why)
        placed = component_bytes(pipe, skip=() if placement == "pipeline" else TEXT_ENCODERS)
        if quantized and dequantize_fits(config, device, placed, pipe.transformer):
            pipe.transformer.dequantize()
            quantized = False
            log.info("inpaint/flux: GGUF transformer dequantized once at load (the share holds it)")
        # Adapters after the dequantization: they wrap the layers the jobs will run.
        adapters = LoraAdapters.prepare(pipe, config, quantized=quantized)
        if placement == "pipeline":
            denoiser = pipe
        else:
            # Same modules, no text encoders: only this pipeline is placed on the GPU.
            denoiser = type(pipe)(**{**pipe.components, **dict.fromkeys(TEXT_ENCODERS)})
            denoiser.set_progress_bar_config(disable=True)
        sizes = component_bytes(denoiser)
        strategy = plan_memory(
            config.memory_strategy, device, sizes, what="inpaint/flux", quantized=quantized
        )
        apply_memory_strategy(denoiser, strategy, device)
        if placement == "stream":
            stream_to(device, [pipe.text_encoder, pipe.text_encoder_2])
        log.info(
            "flux fill loaded from %s (transformer %s, %s, text encoders %s, memory %s)",
            config.model_dir,
            config.transformer_gguf or "from model_dir",
            dtype,
            placement,
            strategy.name,
        )
        inpainter = cls(config, pipe, denoiser, device, dtype, strategy, adapters)
        inpainter.encoder_placement = placement
        return inpainter

    @staticmethod
    def _encoder_placement(
        config: InpaintConfig, device: str, pipe: Any, encoders: dict[str, int]
    ) -> tuple[EncoderPlacement, str]:
        """Where T5 and CLIP run: as configured, or (``auto``) by their measured size against the
        memory this pipeline may use."""
        if config.text_encoder_device != "auto":
            return config.text_encoder_device, "set in config"
        if config.memory_strategy not in ("auto", "gpu"):
            # The operator chose an offload rung for everything: the encoders ride along.
            return "pipeline", f"memory_strategy {config.memory_strategy} places them with the pipeline"
        denoiser = component_bytes(pipe, skip=TEXT_ENCODERS)
        lease = current_lease()
        return place_text_encoders(
            device,
            memory_share(device),
            denoiser_bytes=sum(denoiser.values()),
            encoder_bytes=sum(encoders.values()),
            headroom_bytes=batch_headroom(DEFAULT_HEADROOM, lease.max_batch if lease else 1),
        )

    def resolve_loras(self, refs: list[LoraRef]) -> list[ResolvedLora]:
        return self.adapters.resolve(refs)

    # -- prompt embeddings ------------------------------------------------------------------------
    def _text_encoders_have_job_adapters(self) -> bool:
        if self.denoiser is not self.pipe:
            return False  # split: adapters went to the denoiser only
        for component, names in self.pipe.get_list_adapters().items():
            if component.startswith("text_encoder") and any(n.startswith(JOB_ADAPTER_PREFIX) for n in names):
                return True
        return False

    def prompt_embeddings(
        self, prompt: str, *, use_cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(prompt_embeds, pooled_prompt_embeds, cache_hit)``, on the CPU, from the LRU when possible."""
        key = (prompt, self.config.max_sequence_length)
        if use_cache and key in self._prompts:
            self._prompts.move_to_end(key)
            embeds, pooled = self._prompts[key]
            return embeds, pooled, True
        # Streamed encoders compute on the GPU (their hooks move each block there); CPU-held ones
        # on the CPU; encoders placed with the pipeline where the pipeline runs them.
        if self.encoder_placement == "stream":
            where = torch.device(self.device)
        elif self.encoder_placement == "cpu":
            where = torch.device("cpu")
        else:
            where = self.pipe._execution_device
        with torch.no_grad():
            embeds, pooled, _ids = self.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                device=where,
                max_sequence_length=self.config.max_sequence_length,
            )
        embeds, pooled = embeds.detach().to("cpu"), pooled.detach().to("cpu")
        if use_cache and self.config.prompt_cache_size > 0:
            self._prompts[key] = (embeds, pooled)
            while len(self._prompts) > self.config.prompt_cache_size:
                self._prompts.popitem(last=False)
        return embeds, pooled, False

    # -- jobs -------------------------------------------------------------------------------------
    def inpaint(
        self, image: Image.Image, mask: Image.Image, job: InpaintJob, progress: ProgressFn
    ) -> BackendResult:
        [result] = self.inpaint_batch([image], [mask], [job], progress)
        return result

    def inpaint_batch(
        self,
        images: Sequence[Image.Image],
        masks: Sequence[Image.Image],
        jobs: Sequence[InpaintJob],
        progress: ProgressFn,
    ) -> list[BackendResult]:
        """Jobs of one size and one batch key (steps, guidance, strength, adapters) in one call.

        Prompts and seeds stay per job: the embeddings are stacked, and each job has its own
        generator, so a job's noise (and so its image) is what it gets alone.
        """
        first = jobs[0]
        timings: dict[str, float] = {}
        with (
            gpu_errors(),
            PeakGpuMemory(self.device) as peak,
            self.adapters.applied(self.denoiser, first.loras),
        ):
            progress(0.0, "encoding prompt")
            t0 = time.perf_counter()
            use_cache = not self._text_encoders_have_job_adapters()
            encoded = [self.prompt_embeddings(job.prompt, use_cache=use_cache) for job in jobs]
            timings["encode_prompt"] = time.perf_counter() - t0
            execution_device = self.denoiser._execution_device
            embeds = torch.cat([e for e, _, _ in encoded]).to(execution_device, self.dtype)
            pooled = torch.cat([p for _, p, _ in encoded]).to(execution_device, self.dtype)
            generators = [make_generator(job.seed) for job in jobs]
            t1 = time.perf_counter()
            out = self.denoiser(
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                image=list(images) if len(jobs) > 1 else images[0],
                mask_image=list(masks) if len(jobs) > 1 else masks[0],
                width=images[0].width,
                height=images[0].height,
                strength=first.strength,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                generator=generators if len(jobs) > 1 else generators[0],
                max_sequence_length=self.config.max_sequence_length,
                callback_on_step_end=step_progress(progress, first.steps),
                output_type="pil",
            )
            timings["denoise"] = time.perf_counter() - t1
        return [
            BackendResult(
                image=image,
                peak_gpu_memory_bytes=peak.peak_bytes,
                prompt_cache_hit=hit,
                timings=dict(timings),
            )
            for image, (_, _, hit) in zip(out.images, encoded, strict=True)
        ]
