"""The ``t2v`` pipeline: Wan 2.1 text-to-video through diffusers' ``WanPipeline``, from a local
directory only.

Memory plan for Wan2.1-T2V-1.3B on one 24 GB L4 (about 22.5 GB free after the CUDA context);
sizes are parameter counts times bytes per parameter:

=====================  ===========  ==========================================================
component              size         where it lives
=====================  ===========  ==========================================================
transformer (1.4 B)    ~2.8 GB      bf16 (fp32 would be ~5.7 GB). Always on the GPU when it
                                    fits: it runs every step, twice with guidance.
UMT5-XXL encoder        ~11.4 GB    bf16 (fp32 ~22.7 GB: never fp32 on an L4). Used once per
(5.7 B)                             job; the largest component.
VAE (0.13 B)           ~0.5 GB      fp32, as Wan's reference code runs it (half precision
                                    decodes visibly worse); slicing/tiling when memory is tight.
activations            ~2-6 GB      grow with frames x pixels: 81 frames at 832x480 is ~33k
                                    tokens per transformer call, and the VAE decode of the clip
                                    is the peak. ``headroom_gb`` (6 by default) covers them.
=====================  ===========  ==========================================================

So on an L4 everything (~14.7 GB) fits with 6 GB of headroom: ``memory_strategy: auto`` picks
``gpu`` with VAE slicing and tiling (tight: less than two headrooms to spare). On a 16 GB GPU (or
a smaller share of the process's GPU budget) it picks ``model_offload`` (the encoder moves in for
the prompt, out for the denoising; ~1 s of PCIe copies per job); below that the load is refused
with the numbers. Wan2.1-T2V-14B (transformer ~28 GB in bf16) does not fit an L4 except with
``memory_strategy: sequential_offload`` set by the operator, many times slower: use a larger GPU.
Peak GPU memory (``torch.cuda.max_memory_allocated``) is reported with every job on CUDA.

A job: check the request (limits, adapter mode), apply its adapters (runtime mode), denoise with
a progress report and cancellation checkpoint after every step, decode, encode the MP4 with ffmpeg
(H.264, yuv420p) and write the poster frame.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import PermanentError
from core.spec import RunContext, RunResult
from pipelines.imaging.diffusion import (
    PeakGpuMemory,
    apply_memory_strategy,
    component_bytes,
    gpu_errors,
    make_generator,
    plan_memory,
    resolve_device,
    step_progress,
    torch_dtype,
)
from pipelines.imaging.fields import pick_seed
from pipelines.imaging.lora import LoraAdapters
from pipelines.imaging.memory import GiB, MemoryStrategy
from pipelines.imaging.pipeline import ImagePipeline
from pipelines.t2v.encode import POSTER_FILE, VIDEO_FILE, to_uint8, write_mp4, write_poster
from pipelines.t2v.spec import T2VConfig, T2VInputs, T2VOutputs, check_request

log = logging.getLogger(__name__)

PIPELINE_CLASS = "WanPipeline"


def load_wan(config: T2VConfig, dtype: torch.dtype) -> Any:
    """``WanPipeline`` from ``config.model_dir``, the VAE in fp32.

    Raises:
        PermanentError: no directory, not a Wan text-to-video pipeline, or unreadable weights.
    """
    if not config.model_dir:
        raise PermanentError(
            "the t2v pipeline needs config.model_dir (a local diffusers WanPipeline directory)"
        )
    index = Path(config.model_dir) / "model_index.json"
    try:
        found = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError) as e:
        raise PermanentError(f"cannot read {str(index)!r}: is model_dir a diffusers directory? ({e})") from e
    if found != PIPELINE_CLASS:
        raise PermanentError(
            f"{config.model_dir!r} holds a {found}, not a {PIPELINE_CLASS} (Wan text-to-video)"
        )

    import diffusers

    # diffusers is untyped
    pipeline_cls: Any = diffusers.WanPipeline
    vae_cls: Any = diffusers.AutoencoderKLWan
    try:
        vae = vae_cls.from_pretrained(
            config.model_dir, subfolder="vae", dtype=torch.float32, local_files_only=True
        )
        pipe = pipeline_cls.from_pretrained(config.model_dir, vae=vae, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise PermanentError(f"cannot load Wan from {config.model_dir!r}: {e}") from e
    pipe.set_progress_bar_config(disable=True)
    return pipe


class T2VPipeline(ImagePipeline[T2VInputs, T2VOutputs]):
    """Loaded once per process; :meth:`run` per job (one at a time)."""

    inputs_model = T2VInputs
    what = "t2v"

    def __init__(
        self, config: T2VConfig, pipe: Any, device: str, strategy: MemoryStrategy, adapters: LoraAdapters
    ) -> None:
        super().__init__()
        self.config = config
        self.pipe = pipe
        self.device = device
        self.strategy = strategy
        self.adapters = adapters

    @property
    def backend(self) -> str:
        return type(self.pipe).__name__

    def _run(self, inputs: T2VInputs, ctx: RunContext) -> RunResult[T2VOutputs]:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        ctx.progress(0.0, "checking inputs")
        check_request(inputs, self.config)
        loras = self.adapters.resolve(inputs.loras)
        seed = pick_seed(inputs.seed)
        log.info(
            "t2v job %s: %d frames %dx%d at %d fps, %d steps, seed %d",
            ctx.job_id, inputs.num_frames, inputs.width, inputs.height, inputs.fps, inputs.steps, seed,
        )  # fmt: skip
        t1 = time.perf_counter()
        with gpu_errors(), PeakGpuMemory(self.device) as peak, self.adapters.applied(self.pipe, loras):
            out = self.pipe(
                prompt=inputs.prompt,
                negative_prompt=inputs.negative_prompt,
                width=inputs.width,
                height=inputs.height,
                num_frames=inputs.num_frames,
                num_inference_steps=inputs.steps,
                guidance_scale=inputs.guidance,
                generator=make_generator(seed),
                max_sequence_length=self.config.max_sequence_length,
                callback_on_step_end=step_progress(ctx.progress, inputs.steps),
                output_type="np",
            )
        timings["inference"] = time.perf_counter() - t1
        frames = to_uint8(np.asarray(out.frames[0]))
        if frames.shape[:3] != (inputs.num_frames, inputs.height, inputs.width):
            raise PermanentError(
                f"the model made frames shaped {frames.shape[:3]}, not "
                f"({inputs.num_frames}, {inputs.height}, {inputs.width})"
            )

        t2 = time.perf_counter()
        ctx.progress(1.0, "encoding video")
        workdir = Path(ctx.workdir)
        video, poster = workdir / VIDEO_FILE, workdir / POSTER_FILE
        write_mp4(frames, inputs.fps, video, crf=self.config.crf, timeout=self.config.encode_timeout_seconds)
        write_poster(frames, poster)
        timings["encode"] = time.perf_counter() - t2
        timings["total"] = time.perf_counter() - t0
        outputs = T2VOutputs(
            video_file=VIDEO_FILE,
            poster_file=POSTER_FILE,
            width=inputs.width,
            height=inputs.height,
            num_frames=inputs.num_frames,
            fps=inputs.fps,
            duration_seconds=round(inputs.num_frames / inputs.fps, 4),
            seed=seed,
            steps=inputs.steps,
            guidance=inputs.guidance,
            loras=inputs.loras,
            lora_mode=self.config.lora_mode,
            backend=self.backend,
            memory_strategy=self.strategy.name,
            peak_gpu_memory_bytes=peak.peak_bytes,
            timings={k: round(v, 4) for k, v in timings.items()},
        )
        return RunResult(
            outputs=outputs,
            files={VIDEO_FILE: video, POSTER_FILE: poster},
            metadata={"backend": self.backend, "memory_strategy": self.strategy.name},
            uri_fields={"video": VIDEO_FILE, "poster": POSTER_FILE},
        )


def load(config: T2VConfig) -> T2VPipeline:
    """The spec's loader: load Wan once, set up adapters, choose and apply the memory strategy."""
    if not isinstance(config, T2VConfig):
        config = T2VConfig.model_validate(config)
    device = resolve_device(config.device)
    pipe = load_wan(config, torch_dtype(config.dtype, device))
    adapters = LoraAdapters.prepare(pipe, config, quantized=False)
    strategy = plan_memory(
        config.memory_strategy,
        device,
        component_bytes(pipe),
        what="t2v",
        headroom_bytes=int(config.headroom_gb * GiB),
    )
    apply_memory_strategy(pipe, strategy, device)
    log.info(
        "wan loaded from %s (%s, memory %s, adapters %s)",
        config.model_dir,
        device,
        strategy.name,
        config.lora_mode,
    )
    return T2VPipeline(config, pipe, device, strategy, adapters)
