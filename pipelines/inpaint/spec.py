"""The ``inpaint`` pipeline's contract: inputs, outputs, config. Pydantic only (cheap to import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.base import PipelineModel, PipelineSpec
from pipelines.imaging.fields import (
    SEED_MAX,
    DtypeName,
    FixedLora,
    ImageFile,
    ImageLimitsConfig,
    LoraList,
    LoraRef,
    OutputFormat,
)
from pipelines.imaging.memory import StrategyChoice


class InpaintInputs(PipelineModel):
    """A job: replace the white area of ``mask`` in ``image``."""

    image: ImageFile
    mask: ImageFile = Field(description="white marks what to replace, black what to keep")
    prompt: str = Field(
        default="", max_length=2000, description="what to paint in the masked area (flux backend)"
    )
    steps: int = Field(default=28, ge=1, le=100, description="denoising steps (flux backend)")
    guidance: float = Field(
        default=30.0, ge=0.0, le=100.0, description="Flux guidance; FLUX.1 Fill is tuned for 30"
    )
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="omit for a random seed (reported back)"
    )
    strength: float = Field(default=1.0, gt=0.0, le=1.0, description="1 repaints the masked area from noise")
    output_format: OutputFormat | None = Field(default=None, description="default: the input image's format")
    loras: LoraList = Field(default_factory=list, description="adapters from the service's adapter directory")


class InpaintOutputs(PipelineModel):
    """What a finished inpaint job reports (the service adds ``files`` and fills ``image``)."""

    image: str | None = Field(default=None, description="gs:// URI of the result, filled in by the service")
    result_file: str = Field(description="key of the result in the job's files, e.g. 'result.png'")
    width: int
    height: int
    format: OutputFormat
    seed: int
    backend: Literal["flux", "opencv"]
    work_width: int = Field(description="size the model ran at (rounded for the model, then restored)")
    work_height: int
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    loras: list[LoraRef] = Field(default_factory=list)
    memory_strategy: str | None = None
    peak_gpu_memory_bytes: int | None = None
    prompt_cache_hit: bool | None = None
    notes: list[str] = Field(default_factory=list, description="adjustments made to the inputs")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class InpaintConfig(ImageLimitsConfig):
    """Operator settings. The default ``opencv`` backend needs no weights and no GPU."""

    backend: Literal["flux", "opencv"] = "opencv"
    # flux backend
    model_dir: str | None = Field(
        default=None, description="local FLUX.1-Fill-dev directory (diffusers layout)"
    )
    transformer_gguf: str | None = Field(
        default=None, description="local GGUF file (e.g. Q8_0) for the transformer"
    )
    device: str = Field(default="auto", description="'auto', 'cuda', 'cuda:N' or 'cpu'")
    dtype: DtypeName = "bfloat16"
    memory_strategy: StrategyChoice = "auto"
    text_encoder_device: Literal["auto", "cpu"] = Field(
        default="auto", description="'cpu' keeps CLIP and T5 in host memory; 'auto' follows memory_strategy"
    )
    prompt_cache_size: int = Field(default=32, ge=0, description="prompts whose embeddings are kept (LRU)")
    max_sequence_length: int = Field(default=512, ge=8, le=512, description="T5 tokens per prompt")
    max_work_pixels: int = Field(default=1024 * 1024, gt=0, description="larger inputs run downscaled")
    lora_dir: str | None = Field(default=None, description="directory job adapters are named relative to")
    lora_cache_size: int = Field(default=8, ge=0)
    fixed_lora: FixedLora | None = None
    # opencv backend
    opencv_method: Literal["telea", "ns"] = "telea"
    opencv_radius: int = Field(default=5, ge=1, le=50)


SPEC = PipelineSpec(
    name="inpaint",
    inputs=InpaintInputs,
    outputs=InpaintOutputs,
    config=InpaintConfig,
    loader="pipelines.inpaint.pipeline:load",
    drop_field=None,
    description="Replace the masked area of an image (FLUX.1 Fill, or OpenCV without a GPU)",
)
