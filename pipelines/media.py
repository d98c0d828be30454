"""One way to open media: every pipeline reads audio and video files through this module.

ffmpeg (and PyAV, which is ffmpeg) opens far more than files: playlists (HLS, DASH) and the concat
demuxer name other files or URLs, which it then opens, and its protocols reach the network. A
media file from a user must be read as what it claims to be and nothing else, so here:

* each pipeline has a :class:`MediaPolicy`: the container formats (ffmpeg demuxers) it accepts,
  and no others. Playlists (``hls``, ``dash``), ``concat``, image sequences and raw devices are in
  none of them;
* only the ``file`` protocol, only for the one local file given (``protocol_whitelist=file``);
* the local copy of an upload is named after its validated content type (:func:`local_suffix`),
  never after the name the user gave it (``talk.m3u8`` sent as ``audio/mpeg`` is an ``.mp3``);
* :func:`probe` measures what drives a job's cost (duration, sample rate, frames, pixels) from a
  file's header, so the caps in each pipeline's spec (``core.spec.CostLimit``) can be checked in
  the functions (on the object's first bytes, a range read) and again in the worker (on the whole
  file) before anything is decoded.

Cheap to import: the standard library, core and :mod:`pipelines.prober` only (PyAV is imported
where it is used, and by the prober's children).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, PermanentError, RetryableError
from pipelines import prober

#: ffmpeg's warning when it guesses a duration from the bit rate and the file size
_ESTIMATED = "Estimating duration from bitrate"

# Container formats, as ffmpeg demuxer names (one demuxer may carry several names: "mov,mp4,...").
_AUDIO_FORMATS = ("wav", "w64", "flac", "mp3", "ogg", "aac", "aiff", "caf", "mov", "matroska", "webm")
_VIDEO_FORMATS = ("mov", "matroska", "webm", "flv", "mpegts", "avi", "asf", "ogg", "mpeg", "mxf")
#: never accepted, whatever a policy lists: they name other files or URLs that ffmpeg would open
FORBIDDEN_FORMATS = frozenset({"hls", "applehttp", "dash", "concat", "ffconcat", "image2", "sdp", "rtsp"})


@dataclass(frozen=True)
class MediaPolicy:
    """How one kind of input is opened: its container formats, and the local file protocol only."""

    name: str
    formats: tuple[str, ...]

    def __post_init__(self) -> None:
        bad = FORBIDDEN_FORMATS.intersection(self.formats)
        if bad or not self.formats:
            raise ValueError(f"media policy {self.name}: formats {sorted(bad)} open other files or URLs")

    @property
    def format_whitelist(self) -> str:
        return ",".join(self.formats)

    def ffmpeg_guard(self) -> tuple[str, ...]:
        """ffmpeg/ffprobe options to put before ``-i`` (yt-dlp's post-processors take these)."""
        return ("-protocol_whitelist", "file", "-format_whitelist", self.format_whitelist)

    def ffmpeg_input(self, path: Path) -> list[str]:
        """``[guard..., "-i", url]`` for ffmpeg or ffprobe: the local ``path`` and nothing else."""
        return [*self.ffmpeg_guard(), "-i", local_url(path)]

    def av_options(self) -> dict[str, str]:
        """Options for PyAV's ``av.open(url, options=...)``."""
        return {"protocol_whitelist": "file", "format_whitelist": self.format_whitelist}

    def open_av(self, path: Path) -> Any:
        """``av.open`` of the local file ``path`` under this policy (a context manager).

        Raises:
            InvalidInput: ``unsupported_media`` if it is not one of the accepted formats or cannot
                be opened.
        """
        import av

        try:
            return av.open(local_url(path), mode="r", options=self.av_options(), metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise unreadable(self) from exc


AUDIO = MediaPolicy("audio", _AUDIO_FORMATS)
VIDEO = MediaPolicy("video", _VIDEO_FORMATS)
#: audio, or a video with an audio track (what transcription takes)
AUDIO_OR_VIDEO = MediaPolicy("audio or video", tuple(dict.fromkeys(_AUDIO_FORMATS + _VIDEO_FORMATS)))

_EXAMPLES = {
    "audio": "WAV, MP3, M4A, OGG, FLAC or WebM",
    "video": "MP4, MOV, MKV or WebM",
    "audio or video": "WAV, MP3, M4A, OGG, FLAC, MP4, MOV or WebM",
}


def unreadable(policy: MediaPolicy, detail: str = "") -> InvalidInput:
    return InvalidInput(
        f"The file could not be read as {policy.name}{detail}. Upload a common format such as "
        f"{_EXAMPLES.get(policy.name, 'MP4')}.",
        code="unsupported_media",
    )


def local_url(path: Path) -> str:
    """``file:`` URL of an existing local file (so no name can be taken for another protocol).

    Raises:
        PermanentError: ``path`` is not a regular local file.
    """
    path = Path(path)
    if not path.is_file():
        raise PermanentError(f"media file {path.name!r} is not a local file", code="internal")
    return "file:" + str(path.resolve())


# -- local file names -----------------------------------------------------------------------------

_SUFFIXES: Mapping[str, str] = {
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/vnd.wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/webm": ".webm",
    "audio/mp4": ".m4a",
    "audio/m4a": ".m4a",
    "audio/x-m4a": ".m4a",
    "audio/aac": ".aac",
    "audio/aiff": ".aiff",
    "audio/x-aiff": ".aiff",
    "video/mp4": ".mp4",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
    "video/x-matroska": ".mkv",
    "video/ogg": ".ogv",
    "video/mpeg": ".mpg",
    "video/mp2t": ".ts",
    "video/x-msvideo": ".avi",
    "video/x-flv": ".flv",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
}


def local_suffix(content_type: str | None) -> str:
    """The file suffix of a local copy, from the object's validated content type (``.bin`` for
    any other type). The upload's own name never decides how a file is read."""
    ct = (content_type or "").split(";")[0].strip().lower()
    return _SUFFIXES.get(ct, ".bin")


# -- measuring --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MediaFacts:
    """What ffprobe read from a file's header. ``None``: not known (not in the header)."""

    format_name: str
    duration: float | None
    has_audio: bool
    has_video: bool
    sample_rate: int | None = None
    channels: int | None = None
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None
    frames: int | None = None

    def quantities(self) -> dict[str, float]:
        """The cost-bearing quantities known, by the names ``CostLimit.quantity`` uses."""
        found: dict[str, float] = {}
        if self.duration is not None:
            found["duration_seconds"] = self.duration
        if self.sample_rate is not None:
            found["sample_rate"] = float(self.sample_rate)
        if self.channels is not None:
            found["channels"] = float(self.channels)
        if self.width is not None and self.height is not None:
            found["frame_pixels"] = float(self.width * self.height)
        if self.frames is not None:
            found["frames"] = float(self.frames)
        return found


def _run(cmd: list[str], timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise PermanentError(f"{cmd[0]} is not installed here; cannot {what}", code="internal") from exc
    except subprocess.TimeoutExpired as exc:
        raise RetryableError(
            f"{cmd[0]} took longer than {timeout:g} s to {what}", code="media_timeout"
        ) from exc


def stderr_tail(stderr: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in stderr.strip().splitlines()[-lines:]) or "no details"


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _rate(value: Any) -> float | None:
    """ffprobe's ``"30000/1001"`` as a number."""
    if not isinstance(value, str) or "/" not in value:
        return _number(value)
    num, _, den = value.partition("/")
    n, d = _number(num), _number(den)
    return n / d if n and d else None


def probe(path: Path, policy: MediaPolicy, *, timeout: float = 60.0, size: int | None = None) -> MediaFacts:
    """Read the header of the local file ``path`` under ``policy``.

    A warm PyAV child of :mod:`pipelines.prober` reads it where this process has one; ffprobe
    reads it where not, and wherever the child could not answer for this file (see
    :func:`probe_warm`): either way the same facts and the same errors.

    ``size``: the size of the whole object when ``path`` holds only its first bytes (a range read
    in the functions). A duration ffmpeg guessed from the bit rate is then scaled to the whole
    object; a duration the container states (FLAC, WAV, MP4 headers) is taken as it is.

    Raises:
        InvalidInput: ``unsupported_media`` if it cannot be read under ``policy``.
    """
    warm = prober.shared()
    facts = probe_warm(path, policy, warm, timeout=timeout, size=size) if warm is not None else None
    return facts or probe_with_ffprobe(path, policy, timeout=timeout, size=size)


def probe_warm(
    path: Path,
    policy: MediaPolicy,
    warm: prober.WarmProber,
    *,
    timeout: float = 60.0,
    size: int | None = None,
) -> MediaFacts | None:
    """:func:`probe` by one of ``warm``'s children; ``None`` where ffprobe must read this file.

    That is where the child could not answer (it missed its deadline, died, or went over its
    memory cap), and where its ffmpeg could not read the file or took its format on a low probe
    score: PyAV's ffmpeg need not be the ffprobe's version, so ffprobe's verdict on an odd file,
    and its error text, stay the job's.
    """
    answer = warm.ask(local_url(path), policy.format_whitelist, timeout=timeout, what=policy.name)
    if answer is None or answer.get("ok") is not True or answer.get("doubtful"):
        return None
    return _facts(answer, bool(answer.get("estimated")), path, size)


def probe_with_ffprobe(
    path: Path, policy: MediaPolicy, *, timeout: float = 60.0, size: int | None = None
) -> MediaFacts:
    """:func:`probe` by one ``ffprobe`` process, whatever the warm prober's state."""
    cmd = [
        "ffprobe", "-v", "warning", *policy.ffmpeg_input(path),
        "-print_format", "json", "-show_format", "-show_streams",
    ]  # fmt: skip
    result = _run(cmd, timeout, f"read the {policy.name}")
    if result.returncode != 0:
        detail = stderr_tail(result.stderr.replace(local_url(path) + ": ", ""), 1)[:200]
        raise unreadable(policy, f" ({detail})")
    try:
        data = json.loads(result.stdout or "{}")
    except ValueError as exc:
        raise unreadable(policy) from exc
    return _facts(data, _ESTIMATED in result.stderr, path, size)


def _facts(data: Mapping[str, Any], estimated: bool, path: Path, size: int | None) -> MediaFacts:
    """:class:`MediaFacts` from ffprobe's ``-show_format -show_streams`` JSON (or the warm
    prober's answer in the same shape); ``estimated``: ffmpeg guessed the length from the bit rate."""
    fmt = data.get("format") or {}
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    known = [d for d in [_number(fmt.get("duration"))] + [_number(s.get("duration")) for s in streams] if d]
    duration = max(known) if known else None
    head_size = Path(path).stat().st_size
    if duration is not None and size and size > head_size and estimated:
        duration *= size / max(head_size, 1)
    video = videos[0] if videos else {}
    rates = [r for r in (_number(s.get("sample_rate")) for s in audios) if r]
    channels = [c for c in (_number(s.get("channels")) for s in audios) if c]
    frame_rate = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    frames = _number(video.get("nb_frames"))
    if frames is None and frame_rate and duration:
        frames = duration * frame_rate
    width, height = _number(video.get("width")), _number(video.get("height"))
    return MediaFacts(
        format_name=str(fmt.get("format_name") or ""),
        duration=round(duration, 3) if duration is not None else None,
        has_audio=bool(audios),
        has_video=bool(videos),
        sample_rate=int(max(rates)) if rates else None,
        channels=int(max(channels)) if channels else None,
        width=int(width) if width else None,
        height=int(height) if height else None,
        frame_rate=round(frame_rate, 3) if frame_rate else None,
        frames=math.ceil(frames) if frames else None,
    )


def _measure(policy: MediaPolicy, path: Path, *, complete: bool, size: int) -> dict[str, float]:
    if complete:
        return probe(path, policy).quantities()
    try:
        return probe(path, policy, size=size).quantities()
    except InvalidInput:
        return {}  # a head ffprobe cannot finish (an MP4 with its index at the end): the worker checks


# ``FileInput.probe`` functions: ``probe(path, complete=, size=) -> {quantity: value}``.


def measure_audio(path: Path, *, complete: bool, size: int) -> dict[str, float]:
    return _measure(AUDIO, path, complete=complete, size=size)


def measure_video(path: Path, *, complete: bool, size: int) -> dict[str, float]:
    return _measure(VIDEO, path, complete=complete, size=size)


def measure_audio_or_video(path: Path, *, complete: bool, size: int) -> dict[str, float]:
    return _measure(AUDIO_OR_VIDEO, path, complete=complete, size=size)


__all__ = [
    "AUDIO",
    "AUDIO_OR_VIDEO",
    "FORBIDDEN_FORMATS",
    "VIDEO",
    "MediaFacts",
    "MediaPolicy",
    "local_suffix",
    "local_url",
    "measure_audio",
    "measure_audio_or_video",
    "measure_video",
    "probe",
    "probe_warm",
    "probe_with_ffprobe",
    "stderr_tail",
]
