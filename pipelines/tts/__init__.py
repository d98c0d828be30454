"""Text to speech: a text or a ``Speaker N:`` script in, one encoded audio file out.

Only the spec is imported here (:mod:`pipelines.tts.spec`: pydantic models and ``SPEC``), so the
functions can validate jobs without numpy, onnxruntime or torch. The pipeline itself (text
handling, the backend, joining, loudness, encoding) is loaded by :func:`pipelines.tts.pipeline.load`.

Backends (``config.backend``): ``piper`` (default; Piper on the CPU, GPL-3.0-or-later, see
:mod:`pipelines.tts.piper_backend`) and ``vibevoice`` (a multi-speaker model on the GPU,
:mod:`pipelines.tts.vibevoice`).
"""

from pipelines.tts.spec import (
    SPEC,
    AudioFormat,
    PiperVoiceConfig,
    SampleRate,
    TtsConfig,
    TtsInputs,
    TtsOutputs,
)

__all__ = [
    "SPEC",
    "AudioFormat",
    "PiperVoiceConfig",
    "SampleRate",
    "TtsConfig",
    "TtsInputs",
    "TtsOutputs",
]
