"""Connection-time SSRF enforcement for yt-dlp.

Checking the URL a client sent (:func:`pipelines.video.urls.check_url`) is not enough on its own:
the page may redirect to ``http://169.254.169.254/``, name a media URL on an internal host, or the
host's DNS answer may change between the check and the download (DNS rebinding). So every TCP
connection yt-dlp makes is checked again, when it is made, on the address it is made to.

How:

* :class:`GuardedYoutubeDL` builds its request director with **one** request handler,
  :class:`GuardedRequestsRH`, instead of every registered one. yt-dlp's director falls through to
  the next handler when one fails with an unexpected error, so a guard inside one handler of
  several could be bypassed by the next; with a single handler there is no next. Nothing is
  registered globally (``register_rh`` would change every ``YoutubeDL`` in the process).
* :class:`GuardedRequestsRH` is yt-dlp's ``requests`` handler whose urllib3 connection classes
  replace ``_new_conn`` (the one place a socket is opened): the host is checked (metadata names,
  allow-list), resolved **once**, every address is checked with
  :func:`~pipelines.video.urls.guard_address`, and only then is a socket connected, to exactly
  those vetted IPs (numerically, so there is no second lookup that could answer differently).
  This covers the first request, every redirect hop (requests follows them through the same
  pool manager), media and fragment hosts, and requests made from yt-dlp's fragment threads,
  because the check lives in the handler rather than in thread-local state. TLS still uses the
  host name for SNI and certificate checks.
* A refusal raises :class:`BlockedConnection` (a yt-dlp ``RequestError``: the director re-raises
  it instead of trying another handler, and the HTTP downloader does not retry it) *before*
  ``connect``; the reason is also kept on the :class:`ConnectionGuard`, so the caller reports the
  real cause however yt-dlp wraps the error.
* Proxies are refused (a proxy would make the checked address the proxy's). Only yt-dlp's native
  downloaders may run (:meth:`GuardedYoutubeDL.dl`): ffmpeg, aria2c, curl or rtmpdump as a
  downloader would open their own connections. In case yt-dlp delegates to ffmpeg internally
  (its HLS downloader does for some streams), ffmpeg gets ``-protocol_whitelist file,pipe`` on
  its inputs through ``external_downloader_args``, so it cannot open network URLs either.
* ffmpeg post-processors (merging video and audio, fix-ups) only open their inputs as local
  files in a video container format (``postprocessor_args``), so a downloaded "video" that is
  really a playlist cannot make them read other files or URLs.

Alternatives not taken: wrapping ``socket.getaddrinfo``/``create_connection`` for "the download
thread" misses yt-dlp's fragment threads (and is process-wide in effect); a ``sys.addaudithook``
on ``socket.connect`` cannot be removed and needs thread scoping too; yt-dlp's ``source_address``
only picks the local end. This module depends on yt-dlp's ``networking._requests`` (private, but
stable since 2023.11) and on ``requests``/``urllib3`` being installed; the tests pin the behaviour.
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Sequence
from typing import Any

import urllib3
import yt_dlp
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection
from yt_dlp.downloader import get_suitable_downloader
from yt_dlp.downloader.dash import DashSegmentsFD
from yt_dlp.downloader.hls import HlsFD
from yt_dlp.downloader.http import HttpFD
from yt_dlp.networking._requests import RequestsRH
from yt_dlp.networking.exceptions import RequestError, UnsupportedRequest

from core.errors import InvalidInput, JobError
from pipelines.video.media import FFMPEG_INPUT_GUARD
from pipelines.video.urls import Resolver, check_host, default_resolve

# Downloaders that fetch through YoutubeDL.urlopen, i.e. through the guarded handler.
NATIVE_DOWNLOADERS: tuple[type[Any], ...] = (HttpFD, HlsFD, DashSegmentsFD)


def _ffmpeg_postprocessor_input_guard() -> dict[str, list[str]]:
    """``postprocessor_args`` giving every ffmpeg post-processor (merging, fix-ups) the input guard.

    They run on downloaded files, whose content the remote side chose: a "video" that is really an
    HLS or concat playlist would make ffmpeg open the files or URLs it names.
    """
    import yt_dlp.postprocessor as postprocessors
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    classes: list[Any] = [
        cls
        for cls in vars(postprocessors).values()
        if isinstance(cls, type) and issubclass(cls, FFmpegPostProcessor)
    ]
    keys = {str(cls.pp_key()).lower() for cls in classes}
    return {f"{key}+ffmpeg_i": list(FFMPEG_INPUT_GUARD) for key in sorted(keys)}


# Params that keep every download inside yt-dlp's own (guarded) HTTP stack.
GUARD_PARAMS: dict[str, Any] = {
    "proxy": "",  # no proxy, and ignore HTTP(S)_PROXY from the environment
    "external_downloader": {"default": "native"},
    "hls_prefer_native": True,
    "external_downloader_args": {"ffmpeg_i": ["-protocol_whitelist", "file,pipe"]},
    "postprocessor_args": _ffmpeg_postprocessor_input_guard(),
    "enable_file_urls": False,
}


class BlockedConnection(RequestError):  # type: ignore[misc]  # yt-dlp is untyped
    """A connection the guard refused; ``reason`` is the job error to report."""

    def __init__(self, reason: JobError) -> None:
        super().__init__(str(reason))
        self.reason = reason


class ConnectionGuard:
    """The policy for one download, and what it refused.

    Args:
        allow_loopback: let 127.0.0.0/8 and ::1 through (tests against a local server only).
        allowed_domains: if not empty, every connection's host must be one of these or a subdomain.
        resolve: host name to addresses (tests pass their own; default ``getaddrinfo``).
    """

    def __init__(
        self,
        *,
        allow_loopback: bool = False,
        allowed_domains: Sequence[str] = (),
        resolve: Resolver = default_resolve,
    ) -> None:
        self.allow_loopback = allow_loopback
        self.allowed_domains = tuple(allowed_domains)
        self.resolve = resolve
        self._lock = threading.Lock()
        self.refused: list[JobError] = []
        self.connected: list[tuple[str, str, int]] = []

    @property
    def first_refusal(self) -> JobError | None:
        with self._lock:
            return self.refused[0] if self.refused else None

    def addresses(self, host: str) -> tuple[str, ...]:
        """The vetted addresses of ``host``; raises :class:`BlockedConnection` if it is refused."""
        try:
            _, addresses = check_host(
                host,
                resolve=self.resolve,
                allow_loopback=self.allow_loopback,
                allowed_domains=self.allowed_domains,
            )
        except JobError as exc:
            raise self.refuse(exc) from exc
        return addresses

    def refuse(self, reason: JobError) -> BlockedConnection:
        """Record ``reason`` and return the exception to raise for it."""
        with self._lock:
            self.refused.append(reason)
        return BlockedConnection(reason)

    def record_connect(self, host: str, address: str, port: int) -> None:
        with self._lock:
            self.connected.append((host, address, port))


def _guarded_new_conn(conn: Any, guard: ConnectionGuard) -> socket.socket:
    """urllib3's ``HTTPConnection._new_conn`` with the guard between resolving and connecting."""
    host = str(getattr(conn, "_dns_host", conn.host)).strip("[]")
    addresses = guard.addresses(host)
    error: Exception | None = None
    for address in addresses:
        try:
            # A numeric host: getaddrinfo inside does no DNS, so this connects to `address` only.
            sock = urllib3_connection.create_connection(
                (address, conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            error = ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            )
            error.__cause__ = exc
        except OSError as exc:
            error = NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
            error.__cause__ = exc
        else:
            guard.record_connect(host, address, conn.port)
            return sock
    assert error is not None
    raise error


def _connection_classes(guard: ConnectionGuard) -> tuple[type[Any], type[Any]]:
    def new_conn(self: Any) -> socket.socket:
        return _guarded_new_conn(self, guard)

    http = type("GuardedHTTPConnection", (urllib3.connection.HTTPConnection,), {"_new_conn": new_conn})
    https = type("GuardedHTTPSConnection", (urllib3.connection.HTTPSConnection,), {"_new_conn": new_conn})
    return http, https


class GuardedRequestsRH(RequestsRH):  # type: ignore[misc]  # yt-dlp is untyped
    """yt-dlp's ``requests`` handler that checks every connection with a :class:`ConnectionGuard`."""

    _SUPPORTED_PROXY_SCHEMES = ()
    _SUPPORTED_FEATURES = ()

    def __init__(self, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guard = guard
        http_conn, https_conn = _connection_classes(guard)
        self._pool_classes = {
            "http": type(
                "GuardedHTTPConnectionPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": http_conn}
            ),
            "https": type(
                "GuardedHTTPSConnectionPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }

    def _check_proxies(self, proxies: dict[str, str | None]) -> None:
        for key, proxy in proxies.items():
            if key == "no" or proxy in (None, "__noproxy__"):
                continue
            raise UnsupportedRequest("proxies are not allowed: they would bypass the SSRF guard")

    def _get_proxies(self, request: Any) -> dict[str, str]:
        return {}

    def _create_instance(self, cookiejar: Any, legacy_ssl_support: bool | None = None) -> Any:
        session = super()._create_instance(cookiejar=cookiejar, legacy_ssl_support=legacy_ssl_support)
        for adapter in {id(a): a for a in session.adapters.values()}.values():
            adapter.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)
        return session


class GuardedYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]  # yt-dlp is untyped
    """A ``YoutubeDL`` whose only network path is :class:`GuardedRequestsRH` with ``guard``.

    Pass :data:`GUARD_PARAMS` in ``params`` too (``download`` in :mod:`pipelines.video.ingest` does).
    """

    def __init__(self, params: dict[str, Any], *, guard: ConnectionGuard) -> None:
        self.guard = guard
        super().__init__({**params, **GUARD_PARAMS})

    def build_request_director(self, handlers: Any, preferences: Any = None) -> Any:
        return super().build_request_director([functools.partial(GuardedRequestsRH, guard=self.guard)])

    def dl(self, name: str, info: dict[str, Any], subtitle: bool = False, test: bool = False) -> Any:
        if info.get("url"):
            downloader = get_suitable_downloader(dict(info), self.params, to_stdout=(name == "-"))
            if downloader not in NATIVE_DOWNLOADERS:
                protocol = info.get("protocol") or "unknown"
                reason = InvalidInput(
                    f"This video can only be fetched with the {protocol!r} protocol, which the service "
                    "does not support (only plain HTTP(S), HLS and DASH downloads are allowed)",
                    code="unsupported_url",
                )
                raise self.guard.refuse(reason)
        return super().dl(name, info, subtitle=subtitle, test=test)


__all__ = [
    "GUARD_PARAMS",
    "NATIVE_DOWNLOADERS",
    "BlockedConnection",
    "ConnectionGuard",
    "GuardedRequestsRH",
    "GuardedYoutubeDL",
]
