"""Input image and mask checks, run before any model work.

Each check fails with :class:`~core.errors.InvalidInput` and a message a person can act on.
What the checks decide (and the tests pin down):

- **Content, not extension.** The file is opened with Pillow; it must decode as PNG, JPEG or WebP.
  Anything else (text, GIF, a truncated file) is rejected.
- **Decompression bombs.** ``width * height`` from the header is compared with ``max_input_pixels``
  *before* the pixels are decoded; Pillow's own bomb error is turned into the same message.
- **Sizes.** Each side must be within ``min_side..max_side``.
- **EXIF orientation** is applied (``ImageOps.exif_transpose``) to image and mask, so a phone photo
  comes out upright and the result has no orientation tag.
- **Alpha.** A transparent image is composited on white and processed as RGB; the result is RGB.
  (Keeping transparency would make "pixels outside the mask are unchanged" ambiguous for the
  colour under transparent pixels, and the models take RGB.)
- **Mask.** White marks what to replace. A mask with alpha is composited on black first (so strokes
  painted on a transparent layer work), then thresholded at 50 % grey into 0/255. A mask whose size
  differs from the (oriented) image is resized with NEAREST when its aspect ratio matches within 1 %
  (e.g. drawn on a downscaled preview); a different aspect ratio is rejected, since stretching it
  would move the marked area. An all-black mask is rejected: there would be nothing to do.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.errors import InvalidInput
from pipelines.imaging.fields import ImageLimitsConfig, OutputFormat
from pipelines.imaging.headers import check_facts, open_header

ASPECT_TOLERANCE = 0.01


@dataclass
class CheckedImage:
    """A decoded, upright RGB image and what was done to get it."""

    image: Image.Image
    format: OutputFormat  # the input's real format, from its content
    icc_profile: bytes | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def _open_checked(path: Path, what: str, limits: ImageLimitsConfig) -> tuple[Image.Image, OutputFormat]:
    """Open ``path`` as an image and check header-level facts; pixels are not decoded yet."""
    try:
        img = open_header(path, what, limits)
    except OSError as e:
        raise InvalidInput(
            f"the {what} could not be opened ({e}): upload a PNG, JPEG or WebP file", code="invalid_image"
        ) from e
    try:
        fmt = check_facts(img, what, limits)
    except InvalidInput:
        img.close()
        raise
    return img, fmt


def _decode(img: Image.Image, what: str) -> tuple[Image.Image, int]:
    """Decode pixels and apply EXIF orientation; return the upright image and the orientation tag."""
    try:
        orientation = int(img.getexif().get(0x0112, 1) or 1)
        img.load()
        upright = ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise InvalidInput(f"the {what} file is damaged or truncated ({e}): upload it again") from e
    return (upright if upright is not None else img), orientation


def _to_8bit(img: Image.Image) -> Image.Image:
    """High bit-depth greyscale (16-bit PNG) to 8-bit L; Pillow's convert would clip it."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "RGBa", "La", "PA") or (img.mode == "P" and "transparency" in img.info)


def load_image(path: Path, limits: ImageLimitsConfig, *, what: str = "image") -> CheckedImage:
    """Read and check an input image; return it upright, RGB, alpha composited on white.

    Raises:
        InvalidInput: not a PNG/JPEG/WebP image, too many pixels, a side out of bounds, or damaged.
    """
    img, fmt = _open_checked(path, what, limits)
    with img:
        icc = img.info.get("icc_profile")
        upright, orientation = _decode(img, what)
        notes: list[str] = []
        if orientation != 1:
            notes.append(f"exif_orientation_{orientation}_applied")
        upright = _to_8bit(upright)
        if _has_alpha(upright):
            rgba = upright.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(background, rgba).convert("RGB")
            notes.append("alpha_composited_on_white")
        else:
            rgb = upright.convert("RGB")
    return CheckedImage(
        image=rgb, format=fmt, icc_profile=icc if isinstance(icc, bytes) else None, notes=notes
    )


def load_mask(
    path: Path, size: tuple[int, int], limits: ImageLimitsConfig, *, notes: list[str] | None = None
) -> Image.Image:
    """Read and check a mask for an image of ``size``; return a binary ``L`` image (255 = replace).

    Raises:
        InvalidInput: not an image, too large, aspect ratio unlike the image's, or nothing marked.
    """
    img, _ = _open_checked(path, "mask", limits)
    with img:
        upright = _to_8bit(_decode(img, "mask")[0])
        if _has_alpha(upright):
            rgba = upright.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            grey = Image.alpha_composite(background, rgba).convert("L")
        else:
            grey = upright.convert("L")
    if grey.size != size:
        (mw, mh), (w, h) = grey.size, size
        if abs((mw / mh) / (w / h) - 1.0) > ASPECT_TOLERANCE:
            raise InvalidInput(
                f"the mask is {mw}x{mh} but the image is {w}x{h} (after EXIF rotation): "
                "draw the mask on the same image, at the same size or the same aspect ratio"
            )
        grey = grey.resize(size, Image.Resampling.NEAREST)
        if notes is not None:
            notes.append(f"mask_resized_from_{mw}x{mh}")
    binary = (np.asarray(grey) >= 128).astype(np.uint8) * 255
    if not binary.any():
        raise InvalidInput("the mask marks nothing: paint the area to replace in white on a black background")
    return Image.fromarray(binary, "L")
