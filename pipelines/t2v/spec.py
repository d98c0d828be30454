"""The ``t2v`` pipeline's contract: inputs, outputs, config. Pydantic only (cheap to import).

What the schema cannot know (the operator's limits on frames and size, the adapter mode) is
checked by :func:`check_request`, which runs in the functions before the job is queued (the
spec's precheck) and again in the service.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from core.spec import CostLimit, PipelineModel, PipelineSpec
from pipelines.imaging.fields import SEED_MAX, AdapterConfig, DtypeName, LoraList, LoraRef, check_job_loras
from pipelines.imaging.memory import StrategyChoice

#: Wan's VAE compresses time 4x: a video has 4k+1 frames.
FRAME_STEP = 4
#: Sides are multiples of the VAE's 8x and the transformer's 2x2 patches.
SIZE_MULTIPLE = 16
MAX_FRAMES = 257
MIN_SIDE, MAX_SIDE = 16, 1280


class T2VInputs(PipelineModel):
    """A job: a video of ``num_frames`` frames at ``fps`` from ``prompt``."""

    prompt: str = Field(min_length=1, max_length=2000, description="what the video shows")
    negative_prompt: str = Field(default="", max_length=2000, description="what to avoid")
    num_frames: int = Field(
        default=33, ge=1, le=MAX_FRAMES, description="4k+1 frames (Wan's VAE works in groups of 4)"
    )
    fps: int = Field(default=16, ge=1, le=60, description="frames per second of the MP4 (Wan 2.1: 16)")
    width: int = Field(default=832, ge=MIN_SIDE, le=MAX_SIDE, description="a multiple of 16")
    height: int = Field(default=480, ge=MIN_SIDE, le=MAX_SIDE, description="a multiple of 16")
    steps: int = Field(default=30, ge=1, le=100, description="denoising steps")
    guidance: float = Field(default=5.0, ge=0.0, le=20.0, description="classifier-free guidance (<= 1: off)")
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX, description="omit for a random seed (reported)")
    loras: LoraList = Field(default_factory=list, description="adapters from the service's adapter directory")

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        if value % FRAME_STEP != 1:
            lower = value - (value - 1) % FRAME_STEP
            raise ValueError(
                f"Wan makes 4k+1 frames (1, 5, 9, ... 81, ...); {value} is not one: use {lower} or {lower + FRAME_STEP}"
            )
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % SIZE_MULTIPLE:
            lower = value - value % SIZE_MULTIPLE
            raise ValueError(
                f"{value} is not a multiple of {SIZE_MULTIPLE}: use {max(lower, SIZE_MULTIPLE)} or {lower + SIZE_MULTIPLE}"
            )
        return value


class T2VOutputs(PipelineModel):
    """What a finished t2v job reports (the service adds ``files`` and fills the URIs)."""

    video: str | None = Field(default=None, description="gs:// URI of the MP4, filled in by the service")
    poster: str | None = Field(default=None, description="gs:// URI of the poster frame (PNG)")
    video_file: str = Field(description="key of the MP4 in the job's files")
    poster_file: str = Field(description="key of the poster in the job's files")
    width: int
    height: int
    num_frames: int
    fps: int
    duration_seconds: float
    seed: int
    steps: int
    guidance: float
    loras: list[LoraRef] = Field(default_factory=list)
    lora_mode: str
    backend: str = Field(description="the diffusers pipeline class that ran")
    memory_strategy: str
    peak_gpu_memory_bytes: int | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")


class T2VConfig(AdapterConfig):
    """Operator settings. ``model_dir`` is required to load."""

    model_dir: str | None = Field(default=None, description="local diffusers WanPipeline directory")
    device: str = Field(default="auto", description="'auto', 'cuda', 'cuda:N' or 'cpu'")
    dtype: DtypeName = Field(
        default="bfloat16", description="transformer and text encoder (the VAE runs fp32)"
    )
    memory_strategy: StrategyChoice = "auto"
    headroom_gb: float = Field(
        default=6.0, ge=0.0, description="GPU memory kept free for activations and the VAE decode of a clip"
    )
    max_frames: int = Field(default=81, ge=1, le=MAX_FRAMES, description="longest clip a job may ask for")
    max_pixels: int = Field(default=832 * 480, gt=0, description="largest width*height a job may ask for")
    max_sequence_length: int = Field(default=512, ge=8, le=512, description="UMT5 tokens per prompt")
    crf: int = Field(default=18, ge=0, le=51, description="H.264 quality (lower is better and larger)")
    encode_timeout_seconds: float = Field(default=300.0, gt=0)


def check_request(inputs: T2VInputs, config: T2VConfig) -> None:
    """The operator's limits and the adapter mode (the spec's precheck; the service runs it too).

    Raises:
        InvalidInput: too many frames or pixels for this service, or adapters fused mode refuses.
    """
    SPEC.check_input_costs(inputs, config)  # frames, and pixels a frame: the spec's declared caps
    check_job_loras(inputs.loras, config)


def _frames(inputs: T2VInputs) -> float:
    return float(inputs.num_frames)


def _frame_pixels(inputs: T2VInputs) -> float:
    return float(inputs.width * inputs.height)


# The denoiser's work and memory follow frames x pixels (latent tokens), bounded by these two caps;
# the code stays invalid_inputs, as it always was for them.
_WHERE = "functions (inputs, before queueing); worker (the precheck again, before the model runs)"


SPEC = PipelineSpec(
    name="t2v",
    inputs=T2VInputs,
    outputs=T2VOutputs,
    config=T2VConfig,
    loader="pipelines.t2v.pipeline:load",
    drop_field=None,
    description="Generate a short video from a prompt (Wan 2.1 text-to-video)",
    precheck="pipelines.t2v.spec:check_request",
    costs=(
        CostLimit("frames", "max_frames", "invalid_inputs", "num_frames", measure=_frames, checked=_WHERE),
        CostLimit(
            "frame_pixels",
            "max_pixels",
            "invalid_inputs",
            "width x height",
            measure=_frame_pixels,
            unit="pixels",
            checked=_WHERE,
        ),
    ),
)
