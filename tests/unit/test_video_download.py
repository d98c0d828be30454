"""Downloading with yt-dlp from a server on 127.0.0.1, probing, and the connection-time SSRF guard.

Every test here runs with a spy on ``socket.socket.connect`` that fails the test on any attempt to
connect anywhere but 127.0.0.1 (or ::1): refusals must happen before ``connect``.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import Cancelled, InvalidInput, JobError, RetryableError
from devkit.video_server import (
    VideoServer,
    make_audio_only,
    make_silent_video,
    make_slides_video,
    serve,
    video_page,
)
from pipelines.video import VideoConfig
from pipelines.video.ingest import Downloaded, download
from pipelines.video.media import FFMPEG_INPUT_GUARD, MediaInfo, check_media, extract_audio, probe
from pipelines.video.net import BlockedConnection, ConnectionGuard, GuardedRequestsRH, GuardedYoutubeDL

SLIDES = ["PROJECT ATLAS 2024", "Release date March 15"]
SPEECH = "This is a short test video. The first slide shows the project name."


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    make_slides_video(root / "talk.mp4", SLIDES, SPEECH)
    make_audio_only(root / "tone.m4a")
    make_silent_video(root / "silent.mp4")
    # An HLS playlist named like an mp4: ffmpeg would fetch its segment if it were opened as HLS.
    (root / "playlist.mp4").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/talk.mp4?fetched-by-ffmpeg\n#EXT-X-ENDLIST\n"
    )
    (root / "garbage.mp4").write_bytes(b"this is not a video at all" * 100)
    # The same talk as DASH (separate video and audio, merged by ffmpeg) and as HLS.
    (root / "dash").mkdir()
    _ffmpeg("-i", str(root / "talk.mp4"), "-map", "0:v", "-map", "0:a", "-c", "copy", "-f", "dash",
            "-seg_duration", "4", str(root / "dash" / "manifest.mpd"))  # fmt: skip
    (root / "hls").mkdir()
    _ffmpeg("-i", str(root / "talk.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "4",
            "-hls_playlist_type", "vod", str(root / "hls" / "index.m3u8"))  # fmt: skip
    # An HLS playlist whose segments live on the metadata server.
    (root / "evil").mkdir()
    (root / "evil" / "index.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-PLAYLIST-TYPE:VOD\n"
        "#EXTINF:4.0,\nhttp://169.254.169.254/computeMetadata/v1/seg0.ts\n"
        "#EXTINF:4.0,\nhttp://169.254.169.254/computeMetadata/v1/seg1.ts\n#EXT-X-ENDLIST\n"
    )
    return root


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def server(media: Path) -> Iterator[VideoServer]:
    with serve(media) as srv:
        yield srv


@pytest.fixture(autouse=True)
def only_loopback_connections(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every outgoing connect this test's thread makes; fail on any address that is not
    loopback. (Other threads of the test process, such as an emulator client's, are not the
    download's.)"""
    attempts: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    test_thread = threading.current_thread()

    def check(address: Any) -> None:
        if threading.current_thread() is not test_thread:
            return
        attempts.append(address)
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
            raise AssertionError(f"attempted a connection to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts


def config(**overrides: Any) -> VideoConfig:
    values: dict[str, Any] = {
        "allow_loopback": True,
        "max_bytes": 20_000_000,
        "max_duration_seconds": 60,
        "socket_timeout_seconds": 2,
    }
    values.update(overrides)
    return VideoConfig(**values)


def resolver(table: dict[str, list[str]]) -> Callable[[str], list[str]]:
    def resolve(host: str) -> list[str]:
        return list(table.get(host, []))

    return resolve


def test_download_probe_and_extract_audio(server: VideoServer, tmp_path: Path, media: Path) -> None:
    reports: list[tuple[float, str]] = []
    result = download(server.url("talk.mp4"), tmp_path, config(), lambda f, s: reports.append((f, s)))

    assert isinstance(result, Downloaded)
    assert result.path.parent == tmp_path
    assert result.path.read_bytes() == (media / "talk.mp4").read_bytes()
    assert result.info["extractor"] == "generic"
    assert result.info["webpage_url"] == server.url("talk.mp4")
    assert result.info["filesize"] == result.path.stat().st_size
    assert reports[0] == (0.0, "downloading") and reports[-1] == (1.0, "downloading")
    assert all(0.0 <= f <= 1.0 and stage == "downloading" for f, stage in reports)

    info = probe(result.path)
    assert info == MediaInfo(
        duration=pytest.approx(10.0, abs=0.1),
        width=640,
        height=360,
        has_audio=True,
        has_video=True,
        format_name=info.format_name,
        size_bytes=result.path.stat().st_size,
        frames=pytest.approx(250, abs=3),  # 10 s at 25 fps: what decoding every frame costs
        sample_rate=info.sample_rate,
    )
    assert "mp4" in info.format_name
    check_media(info, config())

    wav = extract_audio(result.path, tmp_path / "audio.wav")
    with wave.open(str(wav), "rb") as audio:
        assert (audio.getframerate(), audio.getnchannels(), audio.getsampwidth()) == (16000, 1, 2)
        assert audio.getnframes() / audio.getframerate() == pytest.approx(10.0, abs=0.1)


def test_a_page_with_a_video_element_is_followed(server: VideoServer, tmp_path: Path) -> None:
    url = server.add_page("page/talk.html", video_page("/talk.mp4", title="Quarterly talk"))
    result = download(url, tmp_path, config())
    assert result.info["extractor"] == "html5"
    assert probe(result.path).has_video


@pytest.mark.parametrize("path", ["dash/manifest.mpd", "hls/index.m3u8"])
def test_dash_and_hls_download_natively(server: VideoServer, tmp_path: Path, path: str) -> None:
    """Fragments through the guarded handler; DASH's separate tracks merged by (guarded) ffmpeg."""
    result = download(server.url(path), tmp_path, config())
    info = probe(result.path)
    assert (info.has_video, info.has_audio) == (True, True)
    assert info.duration == pytest.approx(10.0, abs=0.2)
    assert [p.name for p in tmp_path.iterdir()] == [result.path.name]  # parts merged and removed


def test_fragments_on_a_forbidden_host_are_refused(
    server: VideoServer, tmp_path: Path, only_loopback_connections: list[Any]
) -> None:
    error = _expect(
        InvalidInput, "blocked_address", lambda: download(server.url("evil/index.m3u8"), tmp_path, config())
    )
    assert "169.254.169.254" in error.message
    assert {address[0] for address in only_loopback_connections} == {"127.0.0.1"}
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_to_the_video_on_the_same_host_is_fine(server: VideoServer, tmp_path: Path) -> None:
    url = server.add_redirect("moved.mp4", server.url("talk.mp4"))
    assert download(url, tmp_path, config()).path.stat().st_size > 10_000


def _expect(error: type[JobError], code: str, call: Callable[[], object]) -> JobError:
    with pytest.raises(error) as caught:
        call()
    assert caught.value.code == code, caught.value.message
    return caught.value


@pytest.mark.parametrize(
    ("path", "error", "code"),
    [
        ("novideo.html", InvalidInput, "unsupported_url"),
        ("status/404", InvalidInput, "not_found"),
        ("status/410", InvalidInput, "not_found"),
        ("status/403", InvalidInput, "access_denied"),
        ("status/500", RetryableError, "download_failed"),
        ("status/503", RetryableError, "download_failed"),
        ("status/429", RetryableError, "download_failed"),
        ("huge.mp4", InvalidInput, "too_large"),  # Content-Length: 10 GiB, refused on the header
        ("endless.mp4", InvalidInput, "too_large"),  # no Content-Length: stopped by the byte count
        ("redirect?to=file:///etc/passwd", InvalidInput, "unsupported_scheme"),
    ],
)
def test_download_errors_are_job_errors(
    server: VideoServer, tmp_path: Path, path: str, error: type[JobError], code: str
) -> None:
    _expect(error, code, lambda: download(server.url(path), tmp_path, config(max_bytes=5_000_000)))
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_the_size_limit_uses_the_real_byte_count(server: VideoServer, tmp_path: Path) -> None:
    """A file smaller than its Content-Length claims is still checked on what arrived."""
    error = _expect(
        InvalidInput,
        "too_large",
        lambda: download(server.url("talk.mp4"), tmp_path, config(max_bytes=10_000)),
    )
    assert "limit" in error.message


def test_a_known_too_long_duration_is_refused_before_downloading(server: VideoServer, tmp_path: Path) -> None:
    url = server.add_page("page/long.html", video_page(server.url("talk.mp4?long"), duration_iso="PT2H"))
    error = _expect(
        InvalidInput, "too_long", lambda: download(url, tmp_path, config(max_duration_seconds=600))
    )
    assert "2:00:00" in error.message
    # yt-dlp looked at the start of the file to see what it is, but downloaded nothing.
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_duration_is_enforced_after_download(server: VideoServer, tmp_path: Path) -> None:
    cfg = config(max_duration_seconds=5)
    result = download(server.url("talk.mp4"), tmp_path, cfg)  # yt-dlp cannot know the length
    error = _expect(InvalidInput, "too_long", lambda: check_media(probe(result.path), cfg))
    assert "0:10" in error.message and "0:05" in error.message


def test_audio_only_is_unsupported_media(server: VideoServer, tmp_path: Path) -> None:
    result = download(server.url("tone.m4a"), tmp_path, config())
    info = probe(result.path)
    assert (info.has_audio, info.has_video) == (True, False)
    _expect(InvalidInput, "unsupported_media", lambda: check_media(info, config()))


def test_a_video_without_sound_is_fine(media: Path, tmp_path: Path) -> None:
    info = probe(media / "silent.mp4")
    assert (info.has_audio, info.has_video) == (False, True)
    check_media(info, config())
    _expect(
        InvalidInput, "unsupported_media", lambda: extract_audio(media / "silent.mp4", tmp_path / "a.wav")
    )


@pytest.mark.parametrize("name", ["garbage.mp4", "playlist.mp4"])
def test_probe_refuses_what_is_not_a_video_file(server: VideoServer, media: Path, name: str) -> None:
    before = server.hits["/talk.mp4"]
    _expect(InvalidInput, "unsupported_media", lambda: probe(media / name))
    # ffprobe did not follow the playlist (it may only open the local file, as a video container).
    assert server.hits["/talk.mp4"] == before


def test_a_read_timeout_is_retryable(server: VideoServer, tmp_path: Path) -> None:
    server.set_slow_seconds(2.0)
    _expect(
        RetryableError,
        "download_failed",
        lambda: download(server.url("slow.mp4"), tmp_path, config(socket_timeout_seconds=0.3)),
    )


def test_a_refused_connection_is_retryable(tmp_path: Path) -> None:
    with socket.socket() as probe_socket:  # a port nothing listens on
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    _expect(
        RetryableError,
        "download_failed",
        lambda: download(f"http://127.0.0.1:{port}/a.mp4", tmp_path, config()),
    )


def test_the_download_time_limit(server: VideoServer, tmp_path: Path) -> None:
    error = _expect(
        RetryableError,
        "download_timeout",
        lambda: download(server.url("trickle.mp4"), tmp_path, config(download_timeout_seconds=0.3)),
    )
    assert "0.3" in error.message


def test_progress_can_cancel_the_download(server: VideoServer, tmp_path: Path) -> None:
    calls: list[float] = []

    def progress(fraction: float, stage: str) -> None:
        calls.append(fraction)
        if len(calls) == 2:  # the first report from inside the download
            raise Cancelled("the client cancelled the job")

    with pytest.raises(Cancelled):
        download(server.url("talk.mp4"), tmp_path, config(), progress)
    assert len(calls) == 2 and 0 < calls[1] < 1
    assert list(tmp_path.iterdir()) == []


# --- SSRF: URL checks before download, and the guard at connection time -------------------------


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "unsupported_scheme"),
        ("ftp://127.0.0.1/a.mp4", "unsupported_scheme"),
        ("http://169.254.169.254/computeMetadata/v1/instance/", "blocked_address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "blocked_host"),
        ("http://10.20.30.40/a.mp4", "blocked_address"),
        ("http://[fd00::1]/a.mp4", "blocked_address"),
        ("http://internal.corp.test/a.mp4", "blocked_address"),  # resolves to 192.168.7.7
        ("http://user:pw@videos.test/a.mp4", "credentials_in_url"),
    ],
)
def test_urls_are_checked_before_anything_is_fetched(
    tmp_path: Path, only_loopback_connections: list[Any], url: str, code: str
) -> None:
    resolve = resolver({"internal.corp.test": ["192.168.7.7"], "videos.test": ["127.0.0.1"]})
    _expect(InvalidInput, code, lambda: download(url, tmp_path, config(), resolve=resolve))
    assert only_loopback_connections == []


def test_loopback_is_refused_unless_allowed(
    server: VideoServer, tmp_path: Path, only_loopback_connections: list[Any]
) -> None:
    cfg = config(allow_loopback=False)
    error = _expect(InvalidInput, "blocked_address", lambda: download(server.url("talk.mp4"), tmp_path, cfg))
    assert "loopback" in error.message
    assert only_loopback_connections == []


@pytest.mark.parametrize(
    ("target", "category"),
    [
        ("http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token", "link_local"),
        ("http://10.0.0.1:8080/internal.mp4", "private"),
        ("http://[::ffff:169.254.169.254]/", "link_local"),
        ("http://0x7f.1:{port}/talk.mp4", None),  # loopback is allowed in these tests: fetched
        ("http://private-box.test/x.mp4", "private"),  # the test's DNS: 172.16.0.9
        ("http://metadata.google.internal/computeMetadata/v1/", "blocked_host"),
        ("https://169.254.169.254/", "link_local"),  # refused before any TLS handshake
        ("https://private-box.test:8443/x.mp4", "private"),
        ("http://[fd00::1]:8080/x.mp4", "private"),
        ("http://2852039166/", "link_local"),  # 169.254.169.254 as one number
    ],
)
def test_redirects_are_checked_at_connection_time(
    server: VideoServer,
    tmp_path: Path,
    only_loopback_connections: list[Any],
    target: str,
    category: str | None,
) -> None:
    url = server.url("redirect?to=" + target.format(port=server.port))
    resolve = resolver({"private-box.test": ["172.16.0.9"]})
    if category is None:
        assert download(url, tmp_path, config(), resolve=resolve).path.is_file()
        return
    with pytest.raises(InvalidInput) as caught:
        download(url, tmp_path, config(), resolve=resolve)
    error = caught.value
    if category == "blocked_host":
        assert error.code == "blocked_host"
    else:
        assert error.code == "blocked_address"
        assert getattr(error, "category", None) == category
    # The only connection made was to the test server, for the redirect itself.
    assert {address[0] for address in only_loopback_connections} == {"127.0.0.1"}


def test_dns_rebinding_is_caught_at_connection_time(
    server: VideoServer, tmp_path: Path, only_loopback_connections: list[Any]
) -> None:
    """The name passes the first check (loopback is allowed here), then answers a private address."""
    answers = iter([["127.0.0.1"], ["10.9.8.7"], ["10.9.8.7"], ["10.9.8.7"]])
    url = f"http://rebind.test:{server.port}/talk.mp4"
    error = _expect(
        InvalidInput,
        "blocked_address",
        lambda: download(url, tmp_path, config(), resolve=lambda h: next(answers)),
    )
    assert "10.9.8.7" in error.message
    assert only_loopback_connections == []


def test_allowed_domains_apply_to_every_connection(server: VideoServer, tmp_path: Path) -> None:
    resolve = resolver(
        {"videos.test": ["127.0.0.1"], "cdn.videos.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    )
    cfg = config(allowed_domains=["videos.test"])
    port = server.port
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()

    # The allowed domain and its subdomains download (through the test's DNS, to 127.0.0.1).
    assert download(
        f"http://videos.test:{port}/talk.mp4", tmp_path / "a", cfg, resolve=resolve
    ).path.is_file()
    hop = f"http://videos.test:{port}/redirect?to=http://cdn.videos.test:{port}/talk.mp4"
    assert download(hop, tmp_path / "b", cfg, resolve=resolve).path.is_file()

    # A redirect off the list is refused when it is followed.
    off = f"http://videos.test:{port}/redirect?to=http://other.test:{port}/talk.mp4"
    _expect(InvalidInput, "domain_not_allowed", lambda: download(off, tmp_path / "c", cfg, resolve=resolve))


def test_only_the_guarded_handler_is_used() -> None:
    guard = ConnectionGuard(allow_loopback=True)
    with GuardedYoutubeDL({"quiet": True}, guard=guard) as ydl:
        handlers = ydl._request_director.handlers
        assert list(handlers) == ["GuardedRequests"]
        assert isinstance(handlers["GuardedRequests"], GuardedRequestsRH)
        assert ydl.params["proxy"] == ""
        assert ydl.params["external_downloader"] == {"default": "native"}


def test_proxies_are_refused(server: VideoServer) -> None:
    from yt_dlp.networking import Request
    from yt_dlp.networking.exceptions import NoSupportingHandlers

    guard = ConnectionGuard(allow_loopback=True)
    with GuardedYoutubeDL({"quiet": True}, guard=guard) as ydl:
        with pytest.raises(NoSupportingHandlers, match="proxies are not allowed"):
            ydl.urlopen(Request(server.url("talk.mp4"), proxies={"all": f"http://127.0.0.1:{server.port}"}))
        # Without a proxy the same request goes through, checked by the guard.
        with ydl.urlopen(Request(server.url("talk.mp4"))) as response:
            assert response.status == 200
    assert guard.connected == [("127.0.0.1", "127.0.0.1", server.port)]


@pytest.mark.parametrize(
    "info",
    [
        {"url": "rtmp://127.0.0.1/live/stream", "protocol": "rtmp", "ext": "flv"},
        {"url": "http://127.0.0.1/live.m3u8", "protocol": "m3u8", "ext": "mp4", "is_live": True},
        {"url": "http://127.0.0.1/a.m3u8", "protocol": "m3u8", "ext": "mp4", "is_live": True},
    ],
)
def test_only_native_downloaders_may_run(tmp_path: Path, info: dict[str, Any]) -> None:
    """ffmpeg, rtmpdump, curl... would open their own connections, outside the guard."""
    guard = ConnectionGuard(allow_loopback=True)
    with GuardedYoutubeDL({"quiet": True}, guard=guard) as ydl, pytest.raises(BlockedConnection) as caught:
        ydl.dl(str(tmp_path / "out.mp4"), {**info, "id": "x", "title": "x"})
    assert caught.value.reason.code == "unsupported_url"
    assert guard.refused == [caught.value.reason]


def test_ffmpeg_cannot_open_urls_or_playlists() -> None:
    from yt_dlp.downloader.external import FFmpegFD
    from yt_dlp.postprocessor import FFmpegFixupM3u8PP, FFmpegMergerPP, FFmpegVideoRemuxerPP

    with GuardedYoutubeDL({"quiet": True}, guard=ConnectionGuard()) as ydl:
        # ffmpeg as a downloader (yt-dlp's HLS downloader may delegate to it): local inputs only.
        fd = FFmpegFD(ydl, ydl.params)
        assert fd._configuration_args(("_i1", "_i")) == ["-protocol_whitelist", "file,pipe"]
        # ffmpeg post-processors: local files in video container formats only.
        for pp_class in (FFmpegMergerPP, FFmpegFixupM3u8PP, FFmpegVideoRemuxerPP):
            pp = pp_class(ydl)
            assert pp._configuration_args(pp.basename, ["_i1", "_i"]) == list(FFMPEG_INPUT_GUARD)
