"""Image header checks: format and dimensions from the first bytes, before any pixel is decoded.

Shared by the functions (a range read of the object's head, before the job is queued: a bad image
is rejected up front, no GPU time spent) and by the worker's full checks (``checks.py``), so both
give the same verdict with the same error codes. Pillow and pydantic only: cheap to import.

=====================  ===================================================================
code                   when
=====================  ===================================================================
``invalid_image``      not a PNG, JPEG or WebP by its content (whatever its name or type)
``image_too_large``    more pixels than ``max_input_pixels`` (decompression bombs) or a side
                       over ``max_side``
``image_too_small``    a side under ``min_side``
=====================  ===================================================================
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from core.errors import InvalidInput
from pipelines.imaging.fields import ImageLimitsConfig, OutputFormat

ACCEPTED_FORMATS: dict[str, OutputFormat] = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
_UPLOAD = "upload a PNG, JPEG or WebP file"


def open_header(source: io.BytesIO | str | object, what: str, limits: ImageLimitsConfig) -> Image.Image:
    """Open an image lazily (header only), turning Pillow's errors into job errors."""
    try:
        with warnings.catch_warnings():
            # Our own limit is checked after; Pillow's warning level would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)  # type: ignore[arg-type]
    except Image.DecompressionBombError as e:
        raise InvalidInput(
            f"the {what} is too large to process safely; upload at most {limits.max_input_pixels:,} pixels",
            code="image_too_large",
        ) from e
    except UnidentifiedImageError as e:
        raise InvalidInput(f"the {what} is not an image we can read: {_UPLOAD}", code="invalid_image") from e


def check_facts(img: Image.Image, what: str, limits: ImageLimitsConfig) -> OutputFormat:
    """Format and dimensions, from the header. Returns the image's real format."""
    fmt = ACCEPTED_FORMATS.get(img.format or "")
    if fmt is None:
        raise InvalidInput(
            f"the {what} is a {img.format or 'unknown'} image: {_UPLOAD}", code="invalid_image"
        )
    width, height = img.size
    if width * height > limits.max_input_pixels:
        raise InvalidInput(
            f"the {what} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_input_pixels:,}: downscale it and try again",
            code="image_too_large",
        )
    if max(width, height) > limits.max_side:
        raise InvalidInput(
            f"the {what} is {width}x{height}; the longest side may be at most {limits.max_side} pixels: "
            "downscale it and try again",
            code="image_too_large",
        )
    if min(width, height) < limits.min_side:
        raise InvalidInput(
            f"the {what} is {width}x{height}; each side must be at least {limits.min_side} pixels",
            code="image_too_small",
        )
    return fmt


def check_image_header(head: bytes, *, complete: bool, what: str, config: BaseModel) -> None:
    """``FileInput.header_check`` of image inputs: reject what the header already condemns.

    ``head`` is the object's first bytes (``complete``: all of them). A header that Pillow cannot
    finish parsing from an incomplete head is let through: the worker checks the whole file again.
    """
    limits = config if isinstance(config, ImageLimitsConfig) else ImageLimitsConfig()
    if not head:
        raise InvalidInput(f"the {what} is empty: {_UPLOAD}", code="invalid_image")
    try:
        img = open_header(io.BytesIO(head), what, limits)
    except InvalidInput as exc:
        if exc.code == "invalid_image" and not complete and len(head) < 64:
            return  # too little to judge (cannot happen with a normal head size)
        raise
    except (OSError, SyntaxError, ValueError):
        if complete:
            raise InvalidInput(
                f"the {what} is damaged or truncated: {_UPLOAD}", code="invalid_image"
            ) from None
        return
    with img:
        check_facts(img, what, limits)


def measure_image(path: Path, *, complete: bool, size: int) -> dict[str, float]:
    """``FileInput.probe`` of image inputs: the decoded size (``pixels``) from the header only.

    Whatever cannot be read is left to :func:`check_image_header` and the full checks, which
    name the problem; this only measures.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except Exception:
        return {}
    return {"pixels": float(width * height)}
