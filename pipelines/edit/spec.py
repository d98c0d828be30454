"""The ``edit`` pipeline's contract: inputs, outputs, config. Pydantic only (cheap to import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.spec import PipelineSpec
from pipelines.imaging.fields import DiffusionConfig, ImageJobInputs, ImageJobOutputs, pixel_limits


class EditInputs(ImageJobInputs):
    """A job: change ``image`` as ``instruction`` says (e.g. "make it snow")."""

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


class EditOutputs(ImageJobOutputs):
    """What a finished edit job reports (the service adds ``files`` and fills ``image``)."""

    backend: str = Field(description="the diffusers pipeline class that ran")
    work_width: int = Field(description="size the model ran at; the result is resized back")
    work_height: int
    steps: int
    guidance: float
    image_guidance: float | None = None
    memory_strategy: str
    notes: list[str] = Field(default_factory=list, description="adjustments made to the input")


class EditConfig(DiffusionConfig):
    """Operator settings. ``model_dir`` is required to load (there is no classical fallback)."""

    model_dir: str | None = Field(
        default=None,
        description="local diffusers directory, e.g. Qwen-Image-Edit (any supported edit pipeline)",
    )
    transformer_gguf: str | None = Field(
        default=None,
        description="local GGUF file for the transformer (e.g. a Q4_K Qwen-Image-Edit: what lets it fit an L4)",
    )
    text_encoder_device: Literal["auto", "pipeline", "stream"] = Field(
        default="auto",
        description="'pipeline' places the text encoder with the rest; 'stream' keeps it in host memory and "
        "runs it on the GPU block by block; 'auto' streams it when it does not fit beside the denoiser",
    )


SPEC = PipelineSpec(
    name="edit",
    inputs=EditInputs,
    outputs=EditOutputs,
    config=EditConfig,
    loader="pipelines.edit.pipeline:load",
    drop_field=None,
    precheck="pipelines.imaging.fields:precheck_loras",
    costs=pixel_limits("image"),
    description="Edit an image from a written instruction (Qwen-Image-Edit class models)",
)
