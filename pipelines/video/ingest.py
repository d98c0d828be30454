"""Getting a video: download it with yt-dlp, inside the limits and the connection guard.

Measuring it (ffprobe) and taking its audio out (ffmpeg) are in :mod:`.media`.

Every failure becomes a job error a client can act on:

===============================================  ==============================================
what happened                                    error (code)
===============================================  ==============================================
URL not allowed (scheme, host, address...)       ``InvalidInput`` (see :mod:`.urls`)
redirect / link to a forbidden host              ``InvalidInput`` (``blocked_address``...)
no video found at the URL                        ``InvalidInput`` (``unsupported_url``)
HTTP 404 or 410                                  ``InvalidInput`` (``not_found``)
HTTP 401 or 403                                  ``InvalidInput`` (``access_denied``)
video unavailable, private, removed              ``InvalidInput`` (``unavailable``)
larger than ``max_bytes``                        ``InvalidInput`` (``too_large``)
longer than ``max_duration_seconds``             ``InvalidInput`` (``too_long``)
no video stream, unreadable, not a video format  ``InvalidInput`` (``unsupported_media``)
connection error, timeout, HTTP 429 or 5xx       ``RetryableError`` (``download_failed``...)
anything else yt-dlp reports                     ``PermanentError`` (``download_failed``)
===============================================  ==============================================
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidInput, JobError, PermanentError, RetryableError
from core.spec import ProgressFn
from pipelines.video.media import too_large, too_long
from pipelines.video.net import BlockedConnection, ConnectionGuard, GuardedYoutubeDL
from pipelines.video.spec import VideoConfig
from pipelines.video.urls import Resolver, check_url, default_resolve

log = logging.getLogger(__name__)


_INFO_KEYS = (
    "id",
    "title",
    "extractor",
    "extractor_key",
    "webpage_url",
    "original_url",
    "duration",
    "width",
    "height",
    "ext",
    "filesize",
    "uploader",
    "upload_date",
)


_OUTPUT_STEM = "source"


def _noop_progress(fraction: float, stage: str) -> None:
    pass


@dataclass(frozen=True)
class Downloaded:
    """A downloaded video: the local file and what yt-dlp said about it (JSON-safe, small)."""

    path: Path
    info: dict[str, Any]


@dataclass
class _DownloadState:
    """What the yt-dlp callbacks saw, so errors are reported by cause, not by message text."""

    config: VideoConfig
    progress: ProgressFn
    started: float = field(default_factory=time.monotonic)
    error: JobError | None = None
    too_large: str | None = None
    too_long: float | None = None
    live: bool = False
    bytes_by_file: dict[str, int] = field(default_factory=dict)
    last_report: float = 0.0
    last_fraction: float = -1.0

    def fail(self, error: JobError) -> JobError:
        if self.error is None:
            self.error = error
        return self.error


class _YtdlpLogger:
    """yt-dlp's messages into :mod:`logging`; also notices the max-filesize abort (it raises nothing)."""

    def __init__(self, state: _DownloadState) -> None:
        self.state = state

    def debug(self, msg: str) -> None:
        if "File is larger than max-filesize" in msg:
            self.state.too_large = msg.replace("[download]", "").strip()
        log.debug("yt-dlp: %s", msg)

    def info(self, msg: str) -> None:
        self.debug(msg)

    def warning(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        log.info("yt-dlp: %s", msg)


def _match_filter(state: _DownloadState) -> Any:
    config = state.config

    def match(info: dict[str, Any], *, incomplete: bool = False) -> str | None:
        if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            state.live = True
            return "live streams are not supported"
        duration = info.get("duration")
        if isinstance(duration, int | float) and duration > config.max_duration_seconds:
            state.too_long = float(duration)
            return f"longer than {config.max_duration_seconds:g} s"
        if not incomplete:
            formats = info.get("requested_formats") or [info]
            sizes = [f.get("filesize") for f in formats]
            if all(isinstance(s, int) for s in sizes) and sum(sizes) > config.max_bytes:
                state.too_large = f"{sum(sizes)} bytes"
                return f"larger than {config.max_bytes} bytes"
        return None

    return match


def _progress_hook(state: _DownloadState) -> Any:
    config = state.config

    def hook(status: dict[str, Any]) -> None:
        name = str(status.get("tmpfilename") or status.get("filename") or "")
        downloaded = status.get("downloaded_bytes")
        if isinstance(downloaded, int):
            state.bytes_by_file[name] = downloaded
        total_so_far = sum(state.bytes_by_file.values())
        if total_so_far > config.max_bytes:
            raise state.fail(too_large(config, total_so_far))
        total = status.get("total_bytes")
        if isinstance(total, int) and total > config.max_bytes:
            raise state.fail(too_large(config, total))
        now = time.monotonic()
        if now - state.started > config.download_timeout_seconds:
            raise state.fail(
                RetryableError(
                    f"The download took longer than {config.download_timeout_seconds:g} s",
                    code="download_timeout",
                )
            )
        estimate = total or status.get("total_bytes_estimate")
        fraction = min(1.0, downloaded / estimate) if isinstance(downloaded, int) and estimate else 0.0
        if status.get("status") == "finished":
            fraction = 1.0
        # The progress callback may write to the job store and is the cancellation checkpoint:
        # call it every 2 % or 2 s, not for every block.
        if fraction >= state.last_fraction + 0.02 or now - state.last_report >= 2.0 or fraction == 1.0:
            state.last_fraction, state.last_report = fraction, now
            try:
                state.progress(fraction, "downloading")
            except JobError as exc:  # Cancelled, most likely
                raise state.fail(exc) from None

    return hook


def _ytdlp_options(workdir: Path, config: VideoConfig, state: _DownloadState) -> dict[str, Any]:
    """The ``YoutubeDL`` params for one download into ``workdir``."""
    return {
        "outtmpl": {"default": str(workdir / f"{_OUTPUT_STEM}.%(ext)s")},
        "quiet": True,
        "noprogress": True,
        "no_color": True,
        "logger": _YtdlpLogger(state),
        "progress_hooks": [_progress_hook(state)],
        "match_filter": _match_filter(state),
        "max_filesize": config.max_bytes,
        "socket_timeout": config.socket_timeout_seconds,
        "noplaylist": True,
        "playlist_items": "1",
        "format": "bv*+ba/b",
        "format_sort": [f"res:{config.max_height}"],
        "merge_output_format": "mp4/mkv",
        "retries": 2,
        "fragment_retries": 2,
        "extractor_retries": 1,
        "cachedir": False,
        "updatetime": False,
        "writethumbnail": False,
        "writesubtitles": False,
        "check_formats": False,
        "overwrites": True,
        "continuedl": False,
    }


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps: ``exc_info``, ``cause``, ``__cause__``, ``__context__``."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        if isinstance(exc_info, tuple) and len(exc_info) > 1 and isinstance(exc_info[1], BaseException):
            todo.append(exc_info[1])
        for attr in ("reason", "cause", "orig_exc", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                todo.append(inner)


# yt-dlp's downloader retries network errors itself and then reports them as text only.
_TRANSIENT_HINTS = (
    "timed out",
    "connection reset",
    "connection refused",
    "connection aborted",
    "temporary failure",
    "incompleteread",
    "content too short",
    "giving up after",
)


def _clean_message(message: str) -> str:
    return message.removeprefix("ERROR: ").strip()


def classify_download_error(exc: BaseException, url: str) -> JobError:
    """The job error for an exception out of yt-dlp (see the table in the module docstring)."""
    from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, TransportError
    from yt_dlp.utils import ExtractorError, GeoRestrictedError, UnsupportedError

    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, JobError):
            return cause
        if isinstance(cause, BlockedConnection):
            return cause.reason
    for cause in causes:
        if isinstance(cause, UnsupportedError):
            return InvalidInput(
                f"No video was found at {url} (the page is not a video, or the site is not supported)",
                code="unsupported_url",
            )
        if isinstance(cause, HTTPError):
            status = int(cause.status)
            if status in (404, 410):
                return InvalidInput(
                    f"The video was not found: {url} answered HTTP {status}", code="not_found"
                )
            if status in (401, 403):
                return InvalidInput(
                    f"Access to the video was denied (HTTP {status}); it may be private or need a login",
                    code="access_denied",
                )
            if status == 429 or status >= 500:
                return RetryableError(
                    f"The video site answered HTTP {status}; try again later", code="download_failed"
                )
            return PermanentError(f"The video site answered HTTP {status} for {url}", code="download_failed")
        if isinstance(cause, GeoRestrictedError):
            return PermanentError(
                f"The video is not available in this region: {cause.msg}", code="geo_restricted"
            )
        if isinstance(cause, CertificateVerifyError):
            return PermanentError(f"The site's TLS certificate is not valid: {cause}", code="download_failed")
        if isinstance(cause, TransportError | TimeoutError | ConnectionError):
            return RetryableError(
                f"The download failed: {_clean_message(str(cause))}", code="download_failed"
            )
    for cause in causes:
        if type(cause).__name__ in ("InvalidSchema", "MissingSchema", "InvalidURL"):  # requests' own
            return InvalidInput(
                f"The video URL led to a URL that cannot be downloaded ({cause}); only http(s) is allowed",
                code="unsupported_scheme",
            )
    message = _clean_message(str(exc))
    lowered = message.lower()
    if any(hint in lowered for hint in _TRANSIENT_HINTS):
        return RetryableError(f"The download failed: {message}", code="download_failed")
    if "is not a valid url" in lowered:
        return InvalidInput(f"{url!r} is not a valid URL", code="invalid_url")
    if "no video formats found" in lowered or "requested format is not available" in lowered:
        return InvalidInput(f"No downloadable video was found at {url}: {message}", code="unsupported_url")
    for cause in causes:
        if isinstance(cause, ExtractorError) and cause.expected:
            # "Video unavailable", "Private video", "This video has been removed"...
            return InvalidInput(f"The video cannot be downloaded: {message}", code="unavailable")
    return PermanentError(f"The download failed: {message}", code="download_failed")


def _downloaded_file(info: dict[str, Any] | None) -> tuple[Path | None, dict[str, Any]]:
    if not info:
        return None, {}
    if info.get("_type") in ("playlist", "multi_video"):
        entries = [e for e in info.get("entries") or [] if e]
        return _downloaded_file(entries[0]) if entries else (None, {})
    for item in info.get("requested_downloads") or []:
        path = item.get("filepath")
        if path and Path(path).is_file():
            return Path(path), info
    return None, info


def _remove_partial(workdir: Path) -> None:
    """Delete what an unfinished download left (``source.*``: the file, ``.part``, fragments)."""
    for leftover in workdir.glob(f"{_OUTPUT_STEM}.*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)


def download(
    url: str,
    workdir: Path,
    config: VideoConfig,
    progress: ProgressFn = _noop_progress,
    *,
    resolve: Resolver = default_resolve,
) -> Downloaded:
    """Download the video at ``url`` (a file or a page yt-dlp understands) into ``workdir``.

    The URL is checked first (:func:`~pipelines.video.urls.check_url`), and every connection made
    while downloading is checked again (:mod:`pipelines.video.net`).

    Args:
        url: what the client sent.
        workdir: an existing private directory; the file lands in it as ``source.<ext>``.
        config: limits and the SSRF policy.
        progress: ``progress(fraction, "downloading")`` with the fraction of bytes downloaded (0 if
            the size is unknown); may raise :class:`~core.errors.Cancelled`.
        resolve: host name to addresses (tests pass their own).

    Returns:
        The file and a small dict of what yt-dlp knew (title, extractor, duration if known...).

    Raises:
        InvalidInput: the URL is not allowed or has no (acceptable) video; see the module docstring.
        RetryableError: a network problem, HTTP 429/5xx, a timeout.
        PermanentError: anything else yt-dlp could not do.
        Cancelled: from ``progress``.
    """

    checked = check_url(
        url, resolve=resolve, allow_loopback=config.allow_loopback, allowed_domains=config.allowed_domains
    )
    guard = ConnectionGuard(
        allow_loopback=config.allow_loopback, allowed_domains=config.allowed_domains, resolve=resolve
    )
    state = _DownloadState(config=config, progress=progress)
    progress(0.0, "downloading")
    try:
        with GuardedYoutubeDL(_ytdlp_options(workdir, config, state), guard=guard) as ydl:
            info = ydl.extract_info(checked.url, download=True)
    except Exception as exc:
        _remove_partial(workdir)
        error = state.error or guard.first_refusal or classify_download_error(exc, checked.url)
        log.info("video download of %s failed: %s (%s)", checked.url, error, type(exc).__name__)
        raise error from exc
    path, entry = _downloaded_file(info)
    swallowed = state.error or guard.first_refusal  # in case yt-dlp logged an error and went on
    if path is None or swallowed is not None:
        _remove_partial(workdir)
    if swallowed is not None:
        raise swallowed
    if path is None:
        if state.too_long is not None:
            raise too_long(config, state.too_long)
        if state.too_large is not None:
            raise InvalidInput(
                f"The video is larger than this service accepts (limit {config.max_bytes / 2**20:.0f} MiB; "
                f"{state.too_large})",
                code="too_large",
            )
        if state.live:
            raise InvalidInput(
                "Live streams cannot be processed; try again once it has ended", code="unsupported_url"
            )
        raise PermanentError(
            f"yt-dlp finished without downloading a file from {checked.url}", code="download_failed"
        )
    size = path.stat().st_size
    if size > config.max_bytes:
        raise too_large(config, size)
    summary = {key: entry.get(key) for key in _INFO_KEYS if entry.get(key) is not None}
    summary["filesize"] = size
    return Downloaded(path=path, info=json.loads(json.dumps(summary, default=str)))


__all__ = [
    "Downloaded",
    "classify_download_error",
    "download",
]
