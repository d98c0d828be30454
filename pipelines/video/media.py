"""The video pipeline's media: what ffprobe measures, the caps on it, and the audio extraction.

Files are opened through :mod:`pipelines.media` (the video container formats, the local file
only); shared by the download step (:mod:`.ingest`), the connection guard (:mod:`.net`) and the
frame sampler (:mod:`.frames`); imports nothing else of the video package.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidInput, PermanentError, RetryableError
from pipelines import media as shared
from pipelines.video.spec import SPEC, VideoConfig

#: ffmpeg options that keep it to the local file it is given, in the video container formats
#: (yt-dlp's ffmpeg post-processors get them too, see :mod:`.net`).
FFMPEG_INPUT_GUARD = shared.VIDEO.ffmpeg_guard()


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
    frames: int | None = None
    sample_rate: int | None = None

    def quantities(self) -> dict[str, float]:
        """The cost-bearing quantities, named as the spec's ``CostLimit`` names them."""
        found = {"duration_seconds": self.duration}
        if self.width and self.height:
            found["frame_pixels"] = float(self.width * self.height)
        if self.frames:
            found["frames"] = float(self.frames)
        if self.sample_rate:
            found["sample_rate"] = float(self.sample_rate)
        return found


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


def probe(path: Path, *, timeout: float = 120.0) -> MediaInfo:
    """Measure ``path`` with ffprobe, through :func:`pipelines.media.probe` (video formats only).

    Raises:
        InvalidInput: ``unsupported_media`` if ffprobe cannot read it or its length is unknown.
    """
    facts = shared.probe(path, shared.VIDEO, timeout=timeout)
    if facts.duration is None:
        raise InvalidInput("The length of the video could not be determined", code="unsupported_media")
    return MediaInfo(
        duration=facts.duration,
        width=facts.width,
        height=facts.height,
        has_audio=facts.has_audio,
        has_video=facts.has_video,
        format_name=facts.format_name,
        size_bytes=path.stat().st_size,
        frames=facts.frames,
        sample_rate=facts.sample_rate,
    )


def check_media(media: MediaInfo, config: VideoConfig) -> None:
    """Enforce the limits ffprobe can see (yt-dlp often does not know the duration).

    Raises:
        InvalidInput: ``unsupported_media`` without a video stream, ``too_long``, ``too_large``,
            ``frames_exceeded``, ``resolution_exceeded``, ``sample_rate_exceeded``.
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
    # The rest of the spec's caps (frames, pixels per frame, sample rate): the same checks as on
    # an upload, here for a file fetched from a URL.
    SPEC.check_file_costs("video", media.quantities(), config)


def extract_audio(video: Path, out_wav: Path, *, timeout: float = 900.0) -> Path:
    """Write the first audio track of ``video`` as 16 kHz mono 16-bit WAV to ``out_wav``.

    Raises:
        InvalidInput: ``unsupported_media`` if ffmpeg cannot decode it (or there is no audio).
    """
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", *shared.VIDEO.ffmpeg_input(video),
        "-map", "0:a:0", "-vn", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(out_wav),
    ]  # fmt: skip
    result = _run(cmd, timeout, "extract the audio")
    if result.returncode != 0 or not out_wav.is_file():
        raise InvalidInput(
            f"The video's audio could not be decoded ({shared.stderr_tail(result.stderr)})",
            code="unsupported_media",
        )
    return out_wav


__all__ = [
    "FFMPEG_INPUT_GUARD",
    "MediaInfo",
    "check_media",
    "extract_audio",
    "probe",
]
