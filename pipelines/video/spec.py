"""The ``video`` pipeline's cheap half: its pydantic models and :data:`SPEC` only (the standard
library and pydantic), so the functions can validate jobs without yt-dlp, PyAV or Tesseract."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import InvalidInput
from core.spec import CostLimit, FileInput, GsUri, PipelineModel, PipelineSpec
from pipelines.transcribe.spec import Segment, SpokenLanguage, TranscribeConfig
from pipelines.video.urls import check_url_syntax

MAX_VIDEO_BYTES = 1 * 2**30
#: defaults of the cost caps (``PIPELINES__VIDEO__MAX_FRAME_PIXELS``, ...): 4K frames, an hour at 60 fps
MAX_FRAME_PIXELS = 4096 * 2160
MAX_DECODED_FRAMES = 3600 * 60
MAX_SAMPLE_RATE = 192_000
_WHERE = "functions (`probe` on an upload's head); worker (`probe` on the upload or the download)"


class VideoInputs(PipelineModel):
    """``job.inputs`` of a ``video`` job: exactly one of ``url`` and ``video``."""

    url: str | None = Field(
        None,
        max_length=4096,
        description="An http(s) URL of a video or of a page with one (anything yt-dlp supports).",
    )
    video: Annotated[
        GsUri | None, FileInput(("video/*",), MAX_VIDEO_BYTES, probe="pipelines.media:measure_video")
    ] = Field(None, description="gs://BUCKET/PATH of an uploaded video (up to 1 GiB).")
    frame_interval_seconds: float | None = Field(
        None,
        ge=0.5,
        le=60.0,
        description="Read the on-screen text every this many seconds (0.5 to 60); default 2 s.",
    )
    language: SpokenLanguage = Field(
        None, description="Spoken language as an ISO 639-1 code such as 'en'; omit it to detect it."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_url_syntax(value)
        except InvalidInput as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> VideoInputs:
        if self.url is None and self.video is None:
            raise ValueError("give the video as either url (an http(s) link) or video (a gs:// upload)")
        if self.url is not None and self.video is not None:
            raise ValueError("give either url or video, not both")
        return self


class OcrFrame(BaseModel):
    """Text shown on screen from ``time`` until ``until`` (seconds), read from sampled frames."""

    time: float
    until: float
    text: str


class VideoMetadata(BaseModel):
    """What is known about the video itself."""

    title: str | None = None
    duration: float = Field(description="Length in seconds, measured with ffprobe.")
    source_url: str | None = Field(None, description="The page or file URL (None for an upload).")
    extractor: str | None = Field(None, description="The yt-dlp extractor that handled the URL.")
    width: int | None = None
    height: int | None = None


class VideoOutputs(BaseModel):
    """``job.outputs`` of a ``video`` job (the service adds ``files``)."""

    text: str = Field(description="The transcript of the speech ('' if the video has no sound).")
    segments: list[Segment]
    ocr: list[OcrFrame] = Field(description="On-screen text, one entry per stretch that shows it.")
    combined_text: str = Field(description="Transcript and on-screen text in one plain-text document.")
    metadata: VideoMetadata


class FramePreprocess(BaseModel):
    """What is done to each sampled frame before OCR (all off: the frame as it is).

    Tesseract reads clean slides and captions as they are; upscaling helps small text, and Otsu
    thresholding helps low-contrast text on plain backgrounds but hurts on busy ones.
    """

    model_config = ConfigDict(extra="forbid")

    grayscale: bool = False
    upscale: float = Field(1.0, ge=1.0, le=4.0, description="Enlarge the frame by this factor.")
    threshold: bool = Field(False, description="Binarize with Otsu's threshold (implies grayscale).")
    max_width: int = Field(1920, ge=160, description="Shrink wider frames to this width first.")


class VideoConfig(BaseModel):
    """Settings of the video pipeline (``PIPELINES__VIDEO__*`` variables)."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(MAX_VIDEO_BYTES, ge=1, description="Largest download in bytes.")
    max_duration_seconds: float = Field(3600.0, gt=0, description="Longest video accepted, in seconds.")
    download_timeout_seconds: float = Field(900.0, gt=0, description="Wall-clock limit for a download.")
    socket_timeout_seconds: float = Field(30.0, gt=0, description="Connect/read timeout per request.")
    max_height: int = Field(1080, ge=144, description="Prefer formats at most this many pixels high.")
    allow_loopback: bool = Field(
        False, description="Allow URLs on 127.0.0.0/8 and ::1. For tests against a local server only."
    )
    allowed_domains: list[str] = Field(
        default_factory=list,
        description="If not empty, only these domains (and their subdomains) may be downloaded from, "
        "including redirect targets and media/CDN hosts.",
    )
    ffmpeg_timeout_seconds: float = Field(900.0, gt=0, description="Limit for one ffprobe/ffmpeg run.")
    max_frame_pixels: int = Field(
        MAX_FRAME_PIXELS, gt=0, description="Largest width x height of a frame (resolution_exceeded)."
    )
    max_decoded_frames: int = Field(
        MAX_DECODED_FRAMES,
        gt=0,
        description="Most frames in the video (duration x frame rate): every one is decoded to sample "
        "the screen (frames_exceeded).",
    )
    max_sample_rate: int = Field(
        MAX_SAMPLE_RATE, gt=0, description="Highest audio sample rate accepted, in Hz (sample_rate_exceeded)."
    )

    frame_interval_seconds: float = Field(2.0, ge=0.5, le=60.0, description="Default sampling interval.")
    max_frames: int = Field(1800, ge=1, description="Sample at most this many frames (the interval grows).")
    skip_unchanged_frames: bool = Field(True, description="Reuse the previous text for an unchanged frame.")
    unchanged_frame_threshold: int = Field(
        32,
        ge=0,
        le=255,
        description="A frame whose 160x90 grayscale thumbnail differs from the last one read by at most "
        "this much (0-255) in every pixel counts as unchanged.",
    )
    dedupe_similarity: float = Field(
        0.9, ge=0.0, le=1.0, description="Consecutive frame texts at least this similar are merged."
    )

    ocr_backend: Literal["tesseract", "vision"] = "tesseract"
    preprocess: FramePreprocess = Field(default_factory=lambda: FramePreprocess.model_validate({}))
    tesseract_lang: str = Field("eng", description="Tesseract language(s), such as 'eng' or 'eng+deu'.")
    tesseract_psm: int = Field(3, ge=0, le=13, description="Tesseract page segmentation mode.")
    tesseract_timeout_seconds: float = Field(30.0, gt=0, description="Limit for one frame.")
    vision_language_hints: list[str] = Field(default_factory=list)
    vision_timeout_seconds: float = Field(60.0, gt=0, description="Limit for one Cloud Vision request.")

    transcribe: TranscribeConfig = Field(
        default_factory=lambda: TranscribeConfig.model_validate({}),
        description="The speech model used when the video runs in-process.",
    )


SPEC = PipelineSpec(
    name="video",
    inputs=VideoInputs,
    outputs=VideoOutputs,
    config=VideoConfig,
    loader="pipelines.video.pipeline:load",
    join="pipelines.video.join:join",
    drop_field="video",
    parts=("speech", "screen"),
    precheck="pipelines.video.urls:precheck",
    description="Video to text: transcript of the speech plus OCR of the text on screen (URL or upload).",
    costs=(
        CostLimit("duration_seconds", "max_duration_seconds", "too_long", "video", unit="s", checked=_WHERE),
        CostLimit("frames", "max_decoded_frames", "frames_exceeded", "video", checked=_WHERE),
        CostLimit(
            "frame_pixels", "max_frame_pixels", "resolution_exceeded", "video", unit="pixels", checked=_WHERE
        ),
        CostLimit(
            "sample_rate", "max_sample_rate", "sample_rate_exceeded", "video", unit="Hz", checked=_WHERE
        ),
    ),
)
