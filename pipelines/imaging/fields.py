"""Input/output field types shared by the diffusion pipelines (inpaint, edit, t2v), and the base
classes of their ``Inputs``, ``Outputs`` and ``Config`` (the fields they declare alike). Pydantic
only: cheap to import.

LoRA adapters: a job names adapters by a path *relative to the service's adapter directory*
(``config.lora_dir``), e.g. ``{"path": "styles/ink.safetensors", "weight": 0.8}``. Absolute paths,
``..`` and ``gs://`` URIs are refused when the job is validated: adapters are operator-provided
files (in production a bucket mounted at ``lora_dir`` with Cloud Storage FUSE, or baked into the
image), not arbitrary user uploads, so a job cannot make the service read any other file and the
service does not need to download anything per job.

Two LoRA modes, one per pipeline config (``lora_mode``):

``runtime`` (the default)
    each job names its adapters; they are loaded for the job and removed after it
    (:mod:`pipelines.imaging.lora`). Flexible; costs a load per new adapter and a small slowdown
    per step while they are active.
``fused``
    a fixed set (``fused_loras``) is merged into the weights once at load: no per-job cost, but
    only that set. A job may repeat an adapter of the set at its configured weight (a no-op); any
    other adapter is rejected (:func:`check_job_loras`, also run in the functions as the
    pipelines' precheck, so such a job is ``rejected`` before it is queued).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import InvalidInput, shown
from core.spec import CostLimit, FileInput, GsUri, PipelineModel
from pipelines.imaging.memory import StrategyChoice

IMAGE_CONTENT_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
IMAGE_MAX_BYTES = 20 * 2**20

ImageFile = Annotated[
    GsUri,
    FileInput(
        IMAGE_CONTENT_TYPES,
        IMAGE_MAX_BYTES,
        header_check="pipelines.imaging.headers:check_image_header",
        probe="pipelines.imaging.headers:measure_image",
    ),
]
"""A PNG, JPEG or WebP object in Storage, at most 20 MiB; format and dimensions are checked from
its header before the job is queued."""

OutputFormat = Literal["png", "jpeg", "webp"]
DtypeName = Literal["bfloat16", "float16", "float32"]
LoraMode = Literal["runtime", "fused"]

SEED_MAX = 2**32 - 1
MAX_LORAS_PER_JOB = 4
LORA_SUFFIX = ".safetensors"


def _check_relative_adapter_path(value: str) -> str:
    if value.startswith("gs://") or "://" in value:
        raise ValueError(
            "adapters are read from the service's adapter directory: give a path relative to it, "
            "e.g. 'styles/ink.safetensors' (URIs are not accepted; copy the adapter into the adapter bucket)"
        )
    if "\\" in value:
        raise ValueError("use '/' as the separator in adapter paths")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"adapter path {value!r} must be relative to the adapter directory, without '..'")
    if path.suffix != LORA_SUFFIX:
        raise ValueError(f"adapter path {value!r} must name a {LORA_SUFFIX} file")
    return value


class LoraRef(PipelineModel):
    """One LoRA adapter for a job: a file in the adapter directory and its strength."""

    path: Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_check_relative_adapter_path)]
    weight: float = Field(default=1.0, ge=-2.0, le=2.0)


@dataclass(frozen=True)
class ResolvedLora:
    """A job's adapter and the local file it names (checked to exist inside ``lora_dir``)."""

    ref: LoraRef
    path: Path


def _check_unique_paths(value: list[LoraRef]) -> list[LoraRef]:
    paths = [ref.path for ref in value]
    if len(set(paths)) != len(paths):
        raise ValueError("each adapter may be named once; combine weights into one entry")
    return value


LoraList = Annotated[list[LoraRef], Field(max_length=MAX_LORAS_PER_JOB), AfterValidator(_check_unique_paths)]


class FixedLora(BaseModel):
    """Operator setting: an adapter applied to every job (fused into the weights where possible).

    ``path`` is absolute, or relative to ``lora_dir``.
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    weight: float = 1.0


class ImageLimitsConfig(BaseModel):
    """Operator limits on input images, checked before any model work."""

    model_config = ConfigDict(extra="forbid")

    max_input_pixels: int = Field(
        default=40_000_000, gt=0, description="decompression-bomb guard: width*height read from the header"
    )
    max_side: int = Field(default=8192, gt=0, description="longest accepted side in pixels")
    min_side: int = Field(default=16, gt=0, description="shortest accepted side in pixels")
    jpeg_quality: int = Field(default=95, ge=1, le=100)
    webp_lossless: bool = Field(default=True, description="lossless WebP keeps pixels outside the mask exact")


def pixel_limits(*fields: str) -> tuple[CostLimit, ...]:
    """The cost cap of image inputs: decoded pixels (``max_input_pixels``), read from the header
    in the functions (a range read) and again in the worker, before any pixel is decoded."""
    return tuple(
        CostLimit(
            "pixels",
            "max_input_pixels",
            "image_too_large",
            name,
            unit="pixels",
            checked="functions (header, range read); worker (header of the file, before decoding)",
        )
        for name in fields
    )


class ImageJobInputs(PipelineModel):
    """The inputs every image job takes; each pipeline's ``Inputs`` adds its own."""

    image: ImageFile
    seed: int | None = Field(
        default=None, ge=0, le=SEED_MAX, description="omit for a random seed (reported back)"
    )
    output_format: OutputFormat | None = Field(default=None, description="default: the input image's format")
    loras: LoraList = Field(default_factory=list, description="adapters from the service's adapter directory")


class ImageJobOutputs(PipelineModel):
    """What every finished image job reports; each pipeline's ``Outputs`` adds its own."""

    image: str | None = Field(default=None, description="gs:// URI of the result, filled in by the service")
    result_file: str = Field(description="key of the result in the job's files, e.g. 'result.png'")
    width: int
    height: int
    format: OutputFormat
    seed: int
    loras: list[LoraRef] = Field(default_factory=list)
    peak_gpu_memory_bytes: int | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class AdapterConfig(BaseModel):
    """Operator settings for LoRA adapters, shared by every diffusion pipeline."""

    model_config = ConfigDict(extra="forbid")

    lora_dir: str | None = Field(
        default=None,
        description="directory adapters are named relative to (in production a bucket mounted read-only)",
    )
    lora_cache_size: int = Field(default=8, ge=0, description="runtime mode: adapter files kept in memory")
    lora_mode: LoraMode = Field(
        default="runtime", description="'runtime': per-job adapters; 'fused': fused_loras merged at load"
    )
    fused_loras: list[FixedLora] = Field(
        default_factory=list, description="fused mode: the adapters merged into the weights at load"
    )
    fixed_lora: FixedLora | None = Field(
        default=None, description="runtime mode: one adapter under every job's (fused when possible)"
    )

    @field_validator("fused_loras", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # From the environment (PIPELINES__T2V__FUSED_LORAS) the list arrives as JSON text.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"fused_loras is not a JSON list of {{path, weight}}: {e}") from e
        return value

    @model_validator(mode="after")
    def _mode_fits_the_adapters(self) -> AdapterConfig:
        if self.lora_mode == "runtime" and self.fused_loras:
            raise ValueError("fused_loras is only used with lora_mode 'fused'")
        if self.lora_mode == "fused" and self.fixed_lora is not None:
            raise ValueError("with lora_mode 'fused', list the fixed adapter in fused_loras")
        paths = [lora.path for lora in self.fused_loras]
        if len(set(paths)) != len(paths):
            raise ValueError("fused_loras names an adapter twice")
        return self


class DiffusionConfig(ImageLimitsConfig, AdapterConfig):
    """Operator settings for a local diffusers model: device, precision, memory, work size, adapters."""

    device: str = Field(default="auto", description="'auto', 'cuda', 'cuda:N' or 'cpu'")
    dtype: DtypeName = "bfloat16"
    memory_strategy: StrategyChoice = "auto"
    max_work_pixels: int = Field(default=1024 * 1024, gt=0, description="larger inputs run downscaled")


def check_job_loras(loras: list[LoraRef], config: AdapterConfig) -> None:
    """Refuse adapters the configured mode cannot honour (pure: runs in the functions too).

    In fused mode a job may only name adapters of the fused set at their fused weight (they are
    already in the weights); runtime mode takes any adapter, resolved later against ``lora_dir``.

    Raises:
        InvalidInput: ``lora_unavailable``.
    """
    if config.lora_mode != "fused":
        return
    fused = {lora.path: lora.weight for lora in config.fused_loras}
    for ref in loras:
        if ref.path not in fused:
            offered = ", ".join(f"{p} at {w:g}" for p, w in fused.items()) or "none"
            raise InvalidInput(
                f"adapter {shown(ref.path, 120)} cannot be applied: this service runs with a fixed set of "
                f"adapters merged into the model ({offered}); remove it from 'loras'",
                code="lora_unavailable",
            )
        if ref.weight != fused[ref.path]:
            raise InvalidInput(
                f"adapter {shown(ref.path, 120)} is merged into the model at weight {fused[ref.path]:g}; "
                f"this service cannot run it at {ref.weight:g}: use that weight or leave it out",
                code="lora_unavailable",
            )


class HasLoras(Protocol):
    loras: list[LoraRef]


def precheck_loras(inputs: HasLoras, config: AdapterConfig) -> None:
    """``PipelineSpec.precheck`` of the image pipelines: the adapter mode check, before queueing."""
    check_job_loras(inputs.loras, config)


def pick_seed(seed: int | None) -> int:
    """The job's seed, or a fresh random one to report back so the result can be reproduced."""
    return seed if seed is not None else secrets.randbelow(SEED_MAX + 1)
