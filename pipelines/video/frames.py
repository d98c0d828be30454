"""Frames of a video every N seconds (PyAV), and what is done to them before OCR."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageChops, ImageOps

from core.errors import InvalidInput
from pipelines.media import VIDEO
from pipelines.video.spec import FramePreprocess

THUMBNAIL_SIZE = (160, 90)


@dataclass(frozen=True)
class Frame:
    """One sampled frame: its presentation time in seconds and the picture (RGB)."""

    time: float
    image: Image.Image


def effective_interval(interval: float, duration: float, max_frames: int) -> float:
    """``interval``, made longer if needed so that a ``duration``-second video gives ``max_frames``
    frames at most."""
    if duration <= 0 or max_frames <= 0:
        return interval
    return max(interval, duration / max_frames)


def sample_frames(path: Path, interval: float) -> Iterator[Frame]:
    """The first frame at or after each multiple of ``interval`` seconds (0, N, 2N...).

    Decodes the first video stream in order (PyAV, threaded), which is as fast as seeking for
    intervals of a few seconds and exact about times. Frames are yielded one at a time, so a long
    video never has more than one decoded picture in memory here. The file is opened as a local
    file in one of the accepted container formats only.

    Raises:
        InvalidInput: ``unsupported_media`` if the file cannot be opened or has no video stream.
    """
    import av

    if interval <= 0:
        raise ValueError(f"interval must be positive, got {interval}")
    with VIDEO.open_av(path) as container:
        if not container.streams.video:
            raise InvalidInput("The file has no video stream", code="unsupported_media")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_time = 0.0
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                t = float(frame.time)
                if t + 1e-6 < next_time:
                    continue
                image: Image.Image = frame.to_image()
                yield Frame(time=round(max(t, 0.0), 3), image=image)
                next_time = (math.floor(t / interval + 1e-6) + 1) * interval
        except av.FFmpegError as exc:
            raise InvalidInput(f"The video could not be decoded: {exc}", code="unsupported_media") from exc


def preprocess(image: Image.Image, options: FramePreprocess) -> Image.Image:
    """Prepare a frame for OCR: shrink to ``max_width``, then grayscale/upscale/threshold if set."""
    out = image
    if out.width > options.max_width:
        height = max(1, round(out.height * options.max_width / out.width))
        out = out.resize((options.max_width, height), Image.Resampling.LANCZOS)
    if options.grayscale or options.threshold:
        out = ImageOps.grayscale(out)
    if options.upscale > 1.0:
        size = (round(out.width * options.upscale), round(out.height * options.upscale))
        out = out.resize(size, Image.Resampling.LANCZOS)
    if options.threshold:
        level = otsu_threshold(out)
        out = out.point(lambda value: 255 if value > level else 0)
    return out


def otsu_threshold(gray: Image.Image) -> int:
    """Otsu's threshold (0-255) of a grayscale image: the level that best splits its histogram."""
    histogram = gray.convert("L").histogram()
    total = sum(histogram)
    sum_all = sum(i * count for i, count in enumerate(histogram))
    best_level, best_between = 0, -1.0
    weight_bg = 0
    sum_bg = 0.0
    for level, count in enumerate(histogram):
        weight_bg += count
        if weight_bg == 0:
            continue
        weight_fg = total - weight_bg
        if weight_fg == 0:
            break
        sum_bg += level * count
        mean_bg = sum_bg / weight_bg
        mean_fg = (sum_all - sum_bg) / weight_fg
        between = weight_bg * weight_fg * (mean_bg - mean_fg) ** 2
        if between > best_between:
            best_level, best_between = level, between
    return best_level


def thumbnail(image: Image.Image) -> Image.Image:
    """A small grayscale copy (160x90) to tell whether two frames show the same picture."""
    return ImageOps.grayscale(image).resize(THUMBNAIL_SIZE, Image.Resampling.BILINEAR)


def frame_difference(a: Image.Image, b: Image.Image) -> int:
    """The largest per-pixel difference (0-255) between two :func:`thumbnail` results.

    The largest, not the mean: a slide number changing in a corner moves few pixels a lot (about
    70 here), while compression noise on an unchanged slide moves many pixels a little (about 12).
    """
    if a.size != b.size:
        return 255
    _, largest = ImageChops.difference(a, b).getextrema()
    return int(largest)  # type: ignore[arg-type]


__all__ = [
    "Frame",
    "effective_interval",
    "frame_difference",
    "otsu_threshold",
    "preprocess",
    "sample_frames",
    "thumbnail",
]
