"""A throwaway HTTP server on 127.0.0.1 for the video download tests, and the media they fetch.

:class:`VideoServer` serves a directory and a few special routes that yt-dlp meets in the wild:

* ``/redirect?to=URL`` (or routes added with :meth:`VideoServer.add_redirect`): ``302`` to a URL;
* ``/status/CODE``: an empty response with that status (404, 410, 500, 503...);
* ``/huge.mp4``: a ``video/mp4`` response that announces ``Content-Length: 10 GiB`` and then sends
  a few bytes (yt-dlp must give up on the header alone);
* ``/endless.mp4``: a ``video/mp4`` response with no length that streams zeros until the client
  goes away (only a byte count during the download can stop it);
* ``/trickle.mp4``: a ``video/mp4`` response with no length, 1 KiB every 50 ms (a slow download);
* ``/slow.mp4``: headers, then silence (a read timeout);
* ``/novideo.html``: a page with no video on it;
* ``/page/NAME.html``: pages added with :meth:`VideoServer.add_page`.

Requests are counted per path in :attr:`VideoServer.hits`. Nothing listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

NO_VIDEO_HTML = b"""<!doctype html>
<html><head><title>Just text</title></head>
<body><h1>No video here</h1><p>Only words.</p></body></html>
"""


def video_page(src: str, *, title: str = "Demo talk", duration_iso: str | None = None) -> bytes:
    """An HTML page with a video: a ``<video>`` element, or with ``duration_iso`` a JSON-LD VideoObject
    only (the one page type from which yt-dlp learns the duration before downloading)."""
    if duration_iso is None:
        body = f'<video controls><source src="{src}" type="video/mp4"></video>'
        head = ""
    else:
        body = "<p>A talk.</p>"
        head = (
            '<script type="application/ld+json">{"@context": "https://schema.org", "@type": "VideoObject", '
            f'"name": "{title}", "contentUrl": "{src}", "duration": "{duration_iso}", '
            '"uploadDate": "2024-01-01", "thumbnailUrl": "thumb.jpg", "description": "d"}</script>'
        )
    return (
        f"<!doctype html><html><head><title>{title}</title>{head}</head><body>{body}</body></html>".encode()
    )


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence the console
        pass

    def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_body(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        with self.server.lock:
            self.server.hits[path] += 1
        if path in self.server.redirects:
            self._send_empty(302, {"Location": self.server.redirects[path]})
        elif path == "/redirect":
            target = parse_qs(parts.query).get("to", ["/"])[0]
            self._send_empty(302, {"Location": target})
        elif path.startswith("/status/"):
            self._send_empty(int(path.rsplit("/", 1)[1]))
        elif path == "/novideo.html":
            self._send_body(NO_VIDEO_HTML, "text/html; charset=utf-8")
        elif path in self.server.pages:
            self._send_body(self.server.pages[path], "text/html; charset=utf-8")
        elif path == "/huge.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(10 * 2**30))
            self.end_headers()
            if self.command != "HEAD":
                self._write_quietly(b"\0" * 4096)
            self.close_connection = True
        elif path == "/endless.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command != "HEAD":
                chunk = b"\0" * 65536
                for _ in range(100_000):  # 6.5 GB at most
                    if not self._write_quietly(chunk):
                        break
        elif path == "/trickle.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if self.command != "HEAD":
                for _ in range(100):  # 1 KiB every 50 ms for 5 s at most
                    if not self._write_quietly(b"\0" * 1024):
                        break
                    time.sleep(0.05)
        elif path == "/slow.mp4":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            self.close_connection = True
            time.sleep(self.server.slow_seconds)
        else:
            super().do_GET()

    def _write_quietly(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except OSError:
            return False


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up early (as yt-dlp does on purpose) are not errors here

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.redirects: dict[str, str] = {}
        self.pages: dict[str, bytes] = {}
        self.slow_seconds = 5.0

        def handler(*args: Any, **kwargs: Any) -> _Handler:
            return _Handler(*args, directory=str(directory), **kwargs)

        super().__init__(("127.0.0.1", 0), handler)


class VideoServer:
    """A running server; use :func:`serve`."""

    def __init__(self, server: _Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def root(self) -> Path:
        return self._server.directory

    @property
    def hits(self) -> Counter[str]:
        return self._server.hits

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add_redirect(self, path: str, location: str) -> str:
        """Make ``path`` answer ``302 Location: location``; returns the full URL of ``path``."""
        self._server.redirects["/" + path.lstrip("/")] = location
        return self.url(path)

    def add_page(self, path: str, html: bytes) -> str:
        """Serve ``html`` at ``path``; returns its URL."""
        self._server.pages["/" + path.lstrip("/")] = html
        return self.url(path)

    def set_slow_seconds(self, seconds: float) -> None:
        self._server.slow_seconds = seconds


@contextmanager
def serve(directory: Path) -> Iterator[VideoServer]:
    """Serve ``directory`` on 127.0.0.1 (a free port) for the duration of the block."""
    server = _Server(directory)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="video-test-server", daemon=True
    )
    thread.start()
    try:
        yield VideoServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- media --------------------------------------------------------------------------------------

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


def _ffmpeg(*args: str) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("the video tests need the ffmpeg command (apt-get install ffmpeg)")
    subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_slides_video(path: Path, slides: list[str], speech: str, *, seconds_per_slide: float = 5.0) -> Path:
    """An mp4 of white slides with ``slides`` burned in (black, centred), speech from espeak-ng.

    640x360 H.264 at 25 fps with 44.1 kHz AAC, ``len(slides) * seconds_per_slide`` long. Uses the
    Debian espeak-ng and ffmpeg commands, so it needs no model (about 0.5 s for 10 s).
    """
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError("the video tests need the espeak-ng command (apt-get install espeak-ng)")
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".speech.wav")
    subprocess.run([espeak, "-v", "en-us", "-w", str(wav), speech], check=True)
    length = seconds_per_slide * len(slides)
    chain = "[0:v]null"
    for i, slide in enumerate(slides):
        text_file = path.with_suffix(f".slide{i}.txt")
        text_file.write_text(slide, encoding="utf-8")
        chain += (
            f",drawtext=fontfile={FONT}:textfile={text_file}:expansion=none:fontsize=40:fontcolor=black"
            f":x=(w-text_w)/2:y=(h-text_h)/2"
            f":enable='gte(t,{i * seconds_per_slide:.3f})*lt(t,{(i + 1) * seconds_per_slide:.3f})'"
        )
    _ffmpeg(
        "-f", "lavfi", "-i", f"color=c=white:s=640x360:r=25:d={length:.3f}",
        "-i", str(wav),
        "-filter_complex", f"{chain}[v];[1:a]apad,atrim=0:{length:.3f},aresample=44100[a]",
        "-map", "[v]", "-map", "[a]",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "64k", "-t", f"{length:.3f}", "-movflags", "+faststart",
        str(path),
    )  # fmt: skip
    return path


def make_audio_only(path: Path, seconds: float = 2.0) -> Path:
    """An m4a (AAC) with a tone and no video stream."""
    _ffmpeg("-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}", "-c:a", "aac", str(path))
    return path


def make_silent_video(path: Path, seconds: float = 3.0, text: str = "SILENT CLIP") -> Path:
    """An mp4 with burned-in ``text`` and no audio stream."""
    _ffmpeg(
        "-f", "lavfi", "-i", f"color=c=white:s=320x180:r=10:d={seconds}",
        "-vf", f"drawtext=fontfile={FONT}:text='{text}':fontsize=28:fontcolor=black:x=(w-text_w)/2:y=(h-text_h)/2",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path),
    )  # fmt: skip
    return path
