"""Media files whose cost is not their size, made offline with ffmpeg: long silence in a few
hundred kilobytes, a long video of tiny frames, and HLS playlists that name a local file."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


def silent_flac(
    path: Path, seconds: float, *, rate: int = 8000, stated: bool = True, frame_size: int | None = None
) -> Path:
    """``seconds`` of digital silence as FLAC: hours of audio in a few MB (at ffmpeg's default
    frame size), or in about 100 KB (``frame_size=16384``).

    ``stated=False`` writes it through a pipe, so the header states no length (total samples 0):
    only decoding tells how long it is.
    """
    frames = ("-frame_size", str(frame_size)) if frame_size else ()
    source = (
        "-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-t", f"{seconds:.3f}", "-c:a", "flac", *frames,
    )  # fmt: skip
    if stated:
        _ffmpeg(*source, str(path))
        return path
    with path.open("wb") as out:
        cmd = ["ffmpeg", "-nostdin", "-v", "error", *source, "-f", "flac", "pipe:1"]
        subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.PIPE)
    return path


def long_video(
    path: Path,
    seconds: float,
    *,
    size: str = "32x32",
    fps: int = 1,
    faststart: bool = True,
    moving: bool = False,
) -> Path:
    """A video of ``seconds`` with tiny frames (H.264 MP4): long, yet a few hundred KB (still
    frames; ``moving``: a test pattern, about 1 MB an hour at 32x24)."""
    flags = ("-movflags", "+faststart") if faststart else ()
    source = f"testsrc=s={size}:r={fps}" if moving else f"color=c=gray:s={size}:r={fps}"
    _ffmpeg(
        "-f", "lavfi", "-i", source, "-t", f"{seconds:.3f}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *flags, str(path),
    )  # fmt: skip
    return path


def to_mp3(wav: Path, path: Path) -> Path:
    _ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-b:a", "64k", str(path))
    return path


def playlist(target: Path, path: Path, *, pad_to: int = 0) -> Path:
    """An HLS playlist naming the local file ``target`` as its one segment, padded with comment
    lines to at least ``pad_to`` bytes (so a reader of its first bytes does not see all of it)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:60", "#EXT-X-MEDIA-SEQUENCE:0"]
    body = "\n".join(lines) + "\n"
    comment = "# " + "x" * 1000 + "\n"
    while len(body) < pad_to:
        body += comment
    body += f"#EXTINF:60.0,\n{target.resolve()}\n#EXT-X-ENDLIST\n"
    path.write_text(body)
    return path
