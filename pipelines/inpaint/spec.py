"""The ``inpaint`` pipeline's contract: inputs, outputs, config. Pydantic only (cheap to import)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.spec import PipelineSpec
from pipelines.imaging.fields import DiffusionConfig, ImageFile, ImageJobInputs, ImageJobOutputs, pixel_limits


class InpaintInputs(ImageJobInputs):
    """A job: replace the white area of ``mask`` in ``image``."""

    mask: ImageFile = Field(description="white marks what to replace, black what to keep")
    prompt: str = Field(
        default="", max_length=2000, description="what to paint in the masked area (flux backend)"
    )
    steps: int = Field(default=28, ge=1, le=100, description="denoising steps (flux backend)")
    guidance: float = Field(
        default=30.0, ge=0.0, le=100.0, description="Flux guidance; FLUX.1 Fill is tuned for 30"
    )
    strength: float = Field(default=1.0, gt=0.0, le=1.0, description="1 repaints the masked area from noise")


class InpaintOutputs(ImageJobOutputs):
    """What a finished inpaint job reports (the service adds ``files`` and fills ``image``)."""

    backend: Literal["flux", "opencv"]
    work_width: int = Field(description="size the model ran at (rounded for the model, then restored)")
    work_height: int
    steps: int | None = None
    guidance: float | None = None
    strength: float | None = None
    memory_strategy: str | None = None
    prompt_cache_hit: bool | None = None
    notes: list[str] = Field(default_factory=list, description="adjustments made to the inputs")


class InpaintConfig(DiffusionConfig):
    """Operator settings. The default ``opencv`` backend needs no weights and no GPU."""

    backend: Literal["flux", "opencv"] = "opencv"
    # flux backend (with the inherited device, dtype, memory, work-size and adapter settings)
    model_dir: str | None = Field(
        default=None, description="local FLUX.1-Fill-dev directory (diffusers layout)"
    )
    transformer_gguf: str | None = Field(
        default=None, description="local GGUF file (e.g. Q8_0) for the transformer"
    )
    text_encoder_device: Literal["auto", "pipeline", "stream", "cpu"] = Field(
        default="auto",
        description="where CLIP and T5 run: 'pipeline' placed with the rest, 'stream' (host memory, moved to the "
        "GPU block by block per new prompt), 'cpu', or 'auto': by their measured size against the "
        "memory this pipeline may use",
    )
    gguf_dequantize: Literal["auto", "never"] = Field(
        default="auto",
        description="'auto' dequantizes a GGUF transformer once at load when its share of the GPU holds "
        "the dequantized weights (no per-step dequantization); 'never' keeps it quantized",
    )
    prompt_cache_size: int = Field(default=32, ge=0, description="prompts whose embeddings are kept (LRU)")
    max_sequence_length: int = Field(default=512, ge=8, le=512, description="T5 tokens per prompt")
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
    precheck="pipelines.imaging.fields:precheck_loras",
    costs=pixel_limits("image", "mask"),
    description="Replace the masked area of an image (FLUX.1 Fill, or OpenCV without a GPU)",
)
