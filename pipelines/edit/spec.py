"""The ``edit`` pipeline's contract: inputs, outputs, config. Pydantic only (cheap to import)."""

from __future__ import annotations

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


class EditInputs(PipelineModel):
    """A job: change ``image`` as ``instruction`` says (e.g. "make it snow")."""

    image: ImageFile
    instruction: str = Field(min_length=1, max_length=2000, description="what to change, in words")
    negative_prompt: str = Field(default="", max_length=2000, description="what to avoid (models with CFG)")
    steps: int = Field(default=30, ge=1, le=100, description="denoising steps")
    guidance: float | None = Field(
        default=None, ge=0.0, le=50.0, description="text guidance; default: the model's (Qwen 4.0, IP2P 7.5)"
    )
    image_guidance: float | None = Field(
        default=None,
        ge=0.0,
        le=20.0,
        description="how closely to keep the input (InstructPix2Pix; default 1.5)",
    )
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="omit for a random seed (reported back)"
    )
    output_format: OutputFormat | None = Field(default=None, description="default: the input image's format")
    loras: LoraList = Field(default_factory=list, description="adapters from the service's adapter directory")


class EditOutputs(PipelineModel):
    """What a finished edit job reports (the service adds ``files`` and fills ``image``)."""

    image: str | None = Field(default=None, description="gs:// URI of the result, filled in by the service")
    result_file: str = Field(description="key of the result in the job's files, e.g. 'result.png'")
    width: int
    height: int
    format: OutputFormat
    seed: int
    backend: str = Field(description="the diffusers pipeline class that ran")
    work_width: int = Field(description="size the model ran at; the result is resized back")
    work_height: int
    steps: int
    guidance: float
    image_guidance: float | None = None
    loras: list[LoraRef] = Field(default_factory=list)
    memory_strategy: str
    peak_gpu_memory_bytes: int | None = None
    notes: list[str] = Field(default_factory=list, description="adjustments made to the input")
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class EditConfig(ImageLimitsConfig):
    """Operator settings. ``model_dir`` is required to load (there is no classical fallback)."""

    model_dir: str | None = Field(
        default=None,
        description="local diffusers directory, e.g. Qwen-Image-Edit (any supported edit pipeline)",
    )
    device: str = Field(default="auto", description="'auto', 'cuda', 'cuda:N' or 'cpu'")
    dtype: DtypeName = "bfloat16"
    memory_strategy: StrategyChoice = "auto"
    max_work_pixels: int = Field(default=1024 * 1024, gt=0, description="larger inputs run downscaled")
    lora_dir: str | None = Field(default=None, description="directory job adapters are named relative to")
    lora_cache_size: int = Field(default=8, ge=0)
    fixed_lora: FixedLora | None = None


SPEC = PipelineSpec(
    name="edit",
    inputs=EditInputs,
    outputs=EditOutputs,
    config=EditConfig,
    loader="pipelines.edit.pipeline:load",
    drop_field=None,
    description="Edit an image from a written instruction (Qwen-Image-Edit class models)",
)
