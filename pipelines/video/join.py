"""The video pipeline's parts' shapes and its join: pure, and cheap to import (no model, no media
tools), so whichever instance ends the last part can end the job without loading anything."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pipelines.transcribe.spec import Segment
from pipelines.video.ocr import combine
from pipelines.video.spec import OcrFrame, VideoInputs, VideoMetadata, VideoOutputs


class PreparedVideo(BaseModel):
    """The state the prepare step hands to the parts and the join (stored on the job)."""

    metadata: VideoMetadata
    media: dict[str, Any]
    video_key: str
    audio_key: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)


class SpeechPart(BaseModel):
    text: str
    segments: list[Segment]
    language: str | None = None


class ScreenPart(BaseModel):
    ocr: list[OcrFrame]
    stats: dict[str, Any] = Field(default_factory=dict)


def join(inputs: VideoInputs, state: dict[str, Any], parts: dict[str, dict[str, Any] | None]) -> VideoOutputs:
    """Merge what the parts that succeeded produced; a failed part leaves its fields empty."""
    prepared = PreparedVideo.model_validate(state)
    speech = (
        SpeechPart.model_validate(parts["speech"])
        if parts.get("speech")
        else SpeechPart(text="", segments=[])
    )
    screen = ScreenPart.model_validate(parts["screen"]) if parts.get("screen") else ScreenPart(ocr=[])
    return VideoOutputs(
        text=speech.text,
        segments=speech.segments,
        ocr=screen.ocr,
        combined_text=combine(speech.text, screen.ocr),
        metadata=prepared.metadata,
    )
