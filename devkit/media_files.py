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


#: One sample per container a media policy accepts: (file name, content type, ffmpeg output args).
#: A few seconds each from ffmpeg's test sources; the longer audio ones are larger than the
#: functions' 256 KiB head, so that a head-only read must estimate or find the length elsewhere.
_TONE = ("-f", "lavfi", "-i", "sine=f=440:sample_rate=44100")
_PICTURE = ("-f", "lavfi", "-i", "testsrc=s=64x48:r=25")
SAMPLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("tone.wav", "audio/wav", (*_TONE, "-t", "4", "-ac", "2", "-c:a", "pcm_s16le")),
    ("tone.w64", "audio/wav", (*_TONE, "-t", "2", "-c:a", "pcm_s16le")),
    ("tone.aiff", "audio/aiff", (*_TONE, "-t", "2", "-c:a", "pcm_s16be")),
    ("tone.mp3", "audio/mpeg", (*_TONE, "-t", "40", "-c:a", "libmp3lame", "-b:a", "64k")),
    ("tone-vbr.mp3", "audio/mpeg", (*_TONE, "-t", "30", "-c:a", "libmp3lame", "-q:a", "4")),
    ("tone.flac", "audio/flac", (*_TONE, "-t", "8", "-c:a", "flac")),
    ("tone.ogg", "audio/ogg", (*_TONE, "-t", "30", "-c:a", "libvorbis", "-q:a", "2")),
    ("tone.opus", "audio/opus", (*_TONE, "-t", "30", "-ar", "48000", "-c:a", "libopus", "-b:a", "64k")),
    ("tone.m4a", "audio/mp4", (*_TONE, "-t", "30", "-c:a", "aac", "-b:a", "96k")),
    ("tone.aac", "audio/aac", (*_TONE, "-t", "30", "-c:a", "aac", "-b:a", "96k", "-f", "adts")),
    ("tone.caf", "audio/x-caf", (*_TONE, "-t", "2", "-c:a", "pcm_s16le")),
    ("tone-audio.webm", "audio/webm", (*_TONE, "-t", "30", "-ar", "48000", "-c:a", "libopus")),
    ("clip.mp4", "video/mp4", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
                               "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "-movflags", "+faststart")),
    ("clip-late-index.mp4", "video/mp4", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "libx264", "-preset",
                                          "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest")),
    ("clip.mov", "video/quicktime", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
                                     "-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", "-shortest")),
    ("clip.webm", "video/webm", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "libvpx", "-deadline", "realtime",
                                 "-b:v", "200k", "-c:a", "libopus", "-shortest")),
    ("clip.mkv", "video/x-matroska", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "libx264", "-preset", "ultrafast",
                                      "-pix_fmt", "yuv420p", "-c:a", "flac", "-shortest")),
    ("clip.ogv", "video/ogg", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "libtheora", "-c:a", "libvorbis",
                               "-shortest")),
    ("clip.avi", "video/x-msvideo", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "mpeg4", "-c:a", "libmp3lame",
                                     "-shortest")),
    ("clip.ts", "video/mp2t", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "mpeg2video", "-c:a", "mp2", "-shortest")),
    ("clip.mpg", "video/mpeg", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "mpeg1video", "-c:a", "mp2",
                                "-shortest", "-f", "mpeg")),
    ("clip.flv", "video/x-flv", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "flv1", "-c:a", "libmp3lame",
                                 "-ar", "44100", "-shortest")),
    ("clip.wmv", "video/x-ms-wmv", (*_PICTURE, *_TONE, "-t", "3", "-c:v", "wmv2", "-c:a", "wmav2",
                                    "-shortest", "-f", "asf")),
    ("silent-clip.mp4", "video/mp4", (*_PICTURE, "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
                                      "-pix_fmt", "yuv420p")),
)  # fmt: skip


def samples(folder: Path) -> list[tuple[Path, str]]:
    """Every file of :data:`SAMPLES` in ``folder`` (made once): (path, content type)."""
    made = []
    for name, content_type, args in SAMPLES:
        path = folder / name
        if not path.exists():
            _ffmpeg(*args, str(path))
        made.append((path, content_type))
    return made


def flac_with_large_tag(flac: Path, path: Path, tag_bytes: int) -> Path:
    """``flac`` with a Vorbis comment block of ``tag_bytes`` (up to 16 MiB - 1) after its
    STREAMINFO: zeros, in a sparse file. A reader allocates the whole block while reading the
    header, so it needs that much memory before it knows anything else."""
    data = flac.read_bytes()
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0, "a FLAC file starts with its STREAMINFO"
    end = 8 + int.from_bytes(data[5:8], "big")
    with path.open("wb") as out:
        out.write(b"fLaC" + bytes([data[4] & 0x7F]) + data[5:end])  # STREAMINFO, not the last block
        out.write(bytes([4]) + tag_bytes.to_bytes(3, "big"))  # VORBIS_COMMENT
        out.seek(tag_bytes, 1)
        out.write(data[end:])
    return path
