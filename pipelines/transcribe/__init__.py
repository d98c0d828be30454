"""Speech to text with faster-whisper (CTranslate2 Whisper).

Only the spec is imported here (:mod:`pipelines.transcribe.spec`: pydantic models and ``SPEC``), so
the functions can validate jobs without importing faster-whisper, CTranslate2 or numpy. The model
itself is loaded by :func:`pipelines.transcribe.model.load`.
"""

from pipelines.transcribe.spec import (
    SPEC,
    WHISPER_LANGUAGES,
    Segment,
    SpokenLanguage,
    TranscribeConfig,
    TranscribeInputs,
    TranscribeOutputs,
    Word,
)

__all__ = [
    "SPEC",
    "WHISPER_LANGUAGES",
    "Segment",
    "SpokenLanguage",
    "TranscribeConfig",
    "TranscribeInputs",
    "TranscribeOutputs",
    "Word",
]
