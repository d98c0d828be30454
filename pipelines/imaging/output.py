"""Work sizes, compositing and writing the result file."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipelines.imaging.fields import ImageLimitsConfig

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
RESULT_STEM = "result"


def fit_work_size(width: int, height: int, *, multiple: int, max_pixels: int | None) -> tuple[int, int]:
    """The size a model runs at: about ``max_pixels`` at most (aspect kept), sides in ``multiple``s.

    Sides are rounded half up to the nearest multiple (never below one multiple), so a 100x75 image runs
    at 96x80 for Flux (multiple 16); the result is resized back to the original size afterwards.
    """
    scale = 1.0
    if max_pixels is not None and width * height > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))

    def side(n: int) -> int:
        return max(multiple, int(n * scale / multiple + 0.5) * multiple)

    return side(width), side(height)


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` inside the mask, ``original`` (bit for bit) outside it, at the original's size.

    ``generated`` may be at the work size; it is resized with LANCZOS first.
    """
    if generated.size != original.size:
        generated = generated.resize(original.size, Image.Resampling.LANCZOS)
    inside = np.asarray(mask.convert("L")) >= 128
    out = np.where(
        inside[..., None], np.asarray(generated.convert("RGB")), np.asarray(original.convert("RGB"))
    )
    return Image.fromarray(out.astype(np.uint8), "RGB")


def result_key(fmt: str) -> str:
    """The file name the result is published under, e.g. ``result.png``."""
    return f"{RESULT_STEM}.{EXTENSIONS[fmt]}"


def save_result(
    image: Image.Image,
    workdir: Path,
    fmt: str,
    limits: ImageLimitsConfig,
    *,
    icc_profile: bytes | None = None,
) -> tuple[str, Path]:
    """Write ``image`` as ``result.<ext>`` in ``workdir``; return ``(key, path)``.

    PNG and (by default, lossless) WebP keep every pixel exact; JPEG is lossy at ``jpeg_quality``.
    """
    key = result_key(fmt)
    path = workdir / key
    options: dict[str, Any] = {}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if fmt == "jpeg":
        options.update(quality=limits.jpeg_quality, subsampling=0 if limits.jpeg_quality >= 90 else 2)
    elif fmt == "webp":
        if limits.webp_lossless:
            options.update(lossless=True, quality=100, method=4)
        else:
            options.update(quality=limits.jpeg_quality)
    elif fmt == "png":
        options.update(compress_level=6)
    image.save(path, format=fmt.upper(), **options)
    return key, path
