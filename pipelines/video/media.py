"""Local media files: what ffprobe measures, and ffmpeg's audio extraction, kept to local files.

Shared by the download step (:mod:`.ingest`), the connection guard (:mod:`.net`) and the frame
sampler (:mod:`.frames`); imports nothing else of the video package.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, PermanentError, RetryableError
from pipelines.video import VideoConfig

# Demuxers ffprobe/ffmpeg/PyAV may open a downloaded file with. Playlist formats (hls, dash, concat)
# are left out on purpose: their files name other URLs or paths, which ffmpeg would then open.
VIDEO_DEMUXERS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,flv,mpegts,avi,asf,ogg,mpeg,mxf"
# ffmpeg options that keep it to the local file it is given.
FFMPEG_INPUT_GUARD = ("-protocol_whitelist", "file", "-format_whitelist", VIDEO_DEMUXERS)
# The same for PyAV's av.open(options=...).
AV_OPEN_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": VIDEO_DEMUXERS}


@dataclass(frozen=True)
class MediaInfo:
    """What ffprobe measured. ``duration`` in seconds; width/height of the first video stream."""

    duration: float
    width: int | None
    height: int | None
    has_audio: bool
    has_video: bool
    format_name: str
    size_bytes: int


def too_large(config: VideoConfig, size: int) -> InvalidInput:
    return InvalidInput(
        f"The video is larger than this service accepts ({size / 2**20:.0f} MiB; the limit is "
        f"{config.max_bytes / 2**20:.0f} MiB)",
        code="too_large",
    )


def too_long(config: VideoConfig, duration: float) -> InvalidInput:
    return InvalidInput(
        f"The video is {_clock(duration)} long; this service accepts videos up to "
        f"{_clock(config.max_duration_seconds)}",
        code="too_long",
    )


def _clock(seconds: float) -> str:
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _run(cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise PermanentError(
            f"{cmd[0]} is not installed on this service; cannot {what}", code="internal"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise RetryableError(
            f"{cmd[0]} took longer than {timeout:g} s to {what}", code="media_timeout"
        ) from exc


def _stderr_tail(stderr: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in stderr.strip().splitlines()[-lines:]) or "no details"


def probe(path: Path, *, timeout: float = 120.0) -> MediaInfo:
    """Measure ``path`` with ffprobe (JSON output).

    Only container formats in :data:`VIDEO_DEMUXERS` are opened, and only as a local file.

    Raises:
        InvalidInput: ``unsupported_media`` if ffprobe cannot read it or its length is unknown.
    """
    cmd = [
        "ffprobe", "-v", "error", *FFMPEG_INPUT_GUARD,
        "-print_format", "json", "-show_format", "-show_streams", str(path),
    ]  # fmt: skip
    result = _run(cmd, timeout, "read the video")
    if result.returncode != 0:
        raise InvalidInput(
            f"The file could not be read as a video ({_stderr_tail(result.stderr)}). Use a common video "
            "format such as MP4, MOV, MKV or WebM.",
            code="unsupported_media",
        )
    data = json.loads(result.stdout or "{}")
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    durations = [_float(fmt.get("duration"))] + [_float(s.get("duration")) for s in videos + audios]
    known = [d for d in durations if d is not None and d > 0]
    if not known:
        raise InvalidInput("The length of the video could not be determined", code="unsupported_media")
    video = videos[0] if videos else {}
    return MediaInfo(
        duration=round(max(known), 3),
        width=_int(video.get("width")),
        height=_int(video.get("height")),
        has_audio=bool(audios),
        has_video=bool(videos),
        format_name=str(fmt.get("format_name") or ""),
        size_bytes=_int(fmt.get("size")) or path.stat().st_size,
    )


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def check_media(media: MediaInfo, config: VideoConfig) -> None:
    """Enforce the limits ffprobe can see (yt-dlp often does not know the duration).

    Raises:
        InvalidInput: ``unsupported_media`` without a video stream, ``too_long``, ``too_large``.
    """
    if not media.has_video:
        raise InvalidInput(
            "The file has no video stream (it is audio only?). Use the transcribe pipeline for audio.",
            code="unsupported_media",
        )
    if media.duration > config.max_duration_seconds:
        raise too_long(config, media.duration)
    if media.size_bytes > config.max_bytes:
        raise too_large(config, media.size_bytes)


def extract_audio(video: Path, out_wav: Path, *, timeout: float = 900.0) -> Path:
    """Write the first audio track of ``video`` as 16 kHz mono 16-bit WAV to ``out_wav``.

    Raises:
        InvalidInput: ``unsupported_media`` if ffmpeg cannot decode it (or there is no audio).
    """
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", *FFMPEG_INPUT_GUARD, "-i", str(video),
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(out_wav),
    ]  # fmt: skip
    result = _run(cmd, timeout, "extract the audio")
    if result.returncode != 0 or not out_wav.is_file():
        raise InvalidInput(
            f"The video's audio could not be decoded ({_stderr_tail(result.stderr)})",
            code="unsupported_media",
        )
    return out_wav


__all__ = [
    "AV_OPEN_OPTIONS",
    "FFMPEG_INPUT_GUARD",
    "VIDEO_DEMUXERS",
    "MediaInfo",
    "check_media",
    "extract_audio",
    "probe",
]
