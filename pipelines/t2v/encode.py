"""Frames to files: the H.264 MP4 (through the ffmpeg command) and the poster frame."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import PermanentError, RetryableError

VIDEO_FILE = "video.mp4"
POSTER_FILE = "poster.png"


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames as floats in 0..1 (``(frames, height, width, 3)``, diffusers' ``np`` output) to RGB bytes."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise PermanentError(f"expected frames shaped (n, height, width, 3), got {frames.shape}")
    out: np.ndarray = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return out


def write_mp4(frames: np.ndarray, fps: int, path: Path, *, crf: int, timeout: float) -> None:
    """Encode RGB ``uint8`` frames as H.264 in yuv420p (what browsers and phones play), faststart.

    Raises:
        PermanentError: ffmpeg is missing or refused the frames.
        RetryableError: ffmpeg ran past ``timeout`` (a slow or overloaded instance).
    """
    count, height, width, _ = frames.shape
    cmd = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", str(fps),
        "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf), "-pix_fmt", "yuv420p",
        "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd,
            input=np.ascontiguousarray(frames).tobytes(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise PermanentError("ffmpeg is not installed on this service; cannot encode the video") from e
    except subprocess.TimeoutExpired as e:
        raise RetryableError(
            f"ffmpeg took longer than {timeout:g} s to encode {count} frames", code="media_timeout"
        ) from e
    if done.returncode != 0 or not path.is_file():
        tail = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-3:]) or "no details"
        raise PermanentError(f"ffmpeg could not encode the video: {tail}")


def write_poster(frames: np.ndarray, path: Path) -> None:
    """The first frame as a PNG: what a player shows before the video plays."""
    Image.fromarray(frames[0], mode="RGB").save(path, format="PNG")
