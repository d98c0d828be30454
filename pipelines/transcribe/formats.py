"""Subtitle writers: SubRip (``.srt``) and WebVTT (``.vtt``). Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Protocol


class Cue(Protocol):
    """Anything with a time span in seconds and a text (a transcript ``Segment``, for one)."""

    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def text(self) -> str: ...


_BLANK_LINES = re.compile(r"\n\s*\n+")


def format_timestamp(seconds: float, decimal_marker: str = ",") -> str:
    """``HH:MM:SS,mmm`` (SRT) or, with ``decimal_marker="."``, ``HH:MM:SS.mmm`` (WebVTT).

    Hours take as many digits as they need past two (``100:00:00,000``); negative times clamp to 0.
    """
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{millis:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both formats, so it must not occur inside one.
    lines = [line.strip() for line in _BLANK_LINES.sub("\n", text.strip()).splitlines()]
    return "\n".join(line for line in lines if line)


def _cues(segments: Iterable[Cue]) -> list[tuple[float, float, str]]:
    cues = []
    for seg in segments:
        text = _cue_text(seg.text)
        if text:
            cues.append((seg.start, max(seg.start, seg.end), text))
    return cues


def to_srt(segments: Iterable[Cue]) -> str:
    """SubRip subtitles: numbered cues from 1, ``-->`` between times, a blank line after each.

    Segments whose text is empty are left out (numbering stays continuous).
    """
    blocks = [
        f"{i}\n{format_timestamp(start)} --> {format_timestamp(end)}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(segments), start=1)
    ]
    return "\n".join(blocks)


def _escape_vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(segments: Iterable[Cue]) -> str:
    """WebVTT subtitles: the ``WEBVTT`` header, then one cue per segment.

    ``&``, ``<`` and ``>`` in the text are escaped (so ``-->`` cannot end up inside a cue).
    """
    blocks = ["WEBVTT\n"]
    blocks += [
        f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{_escape_vtt(text)}\n"
        for start, end, text in _cues(segments)
    ]
    return "\n".join(blocks)
