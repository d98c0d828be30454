"""Sample inputs and a before/after picture for demos of the image pipelines.

``make_sample`` draws a smooth scene, scribbles a dark mark over it and returns the mask of the
mark; ``side_by_side`` puts the input, the mask and the result next to each other in one PNG::

    clean, marked, mask = make_sample()
    image_path, mask_path = write_sample(tmp)          # marked.png, mask.png
    ...run the inpaint job, download result.png...
    side_by_side(marked, Image.open(result), tmp / "before_after.png", mask=mask)

``local_demo(out_dir)`` does all of it in-process with the default (OpenCV) inpaint backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_sample(width: int = 320, height: int = 240) -> tuple[Image.Image, Image.Image, Image.Image]:
    """``(clean, marked, mask)``: a smooth gradient scene, the same with a black scribble, its mask.

    The mask is the scribble dilated by a few pixels (255 = replace), as a user would paint it.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 60 + 150 * x / max(1, width - 1)
    g = 90 + 120 * y / max(1, height - 1)
    b = 200 - 80 * (x + y) / max(1, width + height - 2)
    sun = np.exp(-(((x - 0.72 * width) ** 2 + (y - 0.3 * height) ** 2) / (2 * (0.12 * width) ** 2)))
    rgb = np.stack([r + 40 * sun, g + 30 * sun, b - 20 * sun], axis=-1)
    clean = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")

    stroke = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(stroke)
    line_width = max(2, width // 80)
    points = [(0.12 * width, 0.75 * height), (0.35 * width, 0.35 * height), (0.55 * width, 0.7 * height)]
    points += [(0.85 * width, 0.55 * height)]
    draw.line(points, fill=255, width=line_width, joint="curve")
    draw.line([(0.2 * width, 0.2 * height), (0.45 * width, 0.22 * height)], fill=255, width=line_width)

    marked = clean.copy()
    marked.paste((10, 10, 10), mask=stroke)
    mask = stroke.filter(ImageFilter.MaxFilter(2 * (line_width // 2) + 5))
    return clean, marked, mask


def write_sample(out_dir: Path, width: int = 320, height: int = 240) -> tuple[Path, Path]:
    """Write ``marked.png`` and ``mask.png`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean, marked, mask = make_sample(width, height)
    image_path, mask_path = out_dir / "marked.png", out_dir / "mask.png"
    marked.save(image_path)
    mask.save(mask_path)
    return image_path, mask_path


def side_by_side(
    before: Image.Image,
    after: Image.Image,
    out_path: Path,
    *,
    mask: Image.Image | None = None,
    gap: int = 8,
) -> Path:
    """Write ``before | mask | after`` (mask optional) as one labelled PNG at ``out_path``."""
    before = before.convert("RGB")
    after = after.convert("RGB").resize(before.size, Image.Resampling.LANCZOS)
    panels = [("before", before)]
    if mask is not None:
        overlay = before.copy()
        red = Image.new("RGB", before.size, (230, 30, 30))
        alpha = (
            mask.convert("L").resize(before.size, Image.Resampling.NEAREST).point(lambda v: 140 if v else 0)
        )
        overlay.paste(red, mask=alpha)
        panels.append(("mask", overlay))
    panels.append(("after", after))
    label_h = 18
    w, h = before.size
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, panel) in enumerate(panels):
        left = i * (w + gap)
        canvas.paste(panel, (left, label_h))
        draw.text((left + 4, 3), label, fill=(0, 0, 0))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path, format="PNG")
    return out_path


def local_demo(out_dir: Path, width: int = 320, height: int = 240) -> Path:
    """Run the ``inpaint`` pipeline (default config: OpenCV, no GPU) on the sample in-process.

    Writes ``marked.png``, ``mask.png``, ``result.png`` and ``before_after.png`` into ``out_dir``
    and returns the path of ``before_after.png``.
    """
    from core.spec import RunContext
    from pipelines.inpaint import SPEC, InpaintConfig, InpaintInputs

    image_path, mask_path = write_sample(out_dir, width, height)
    pipeline = SPEC.load(InpaintConfig())
    inputs = InpaintInputs(image="gs://demo-bucket/marked.png", mask="gs://demo-bucket/mask.png")
    result = pipeline.run(inputs, RunContext("demo", out_dir, {"image": image_path, "mask": mask_path}))
    with Image.open(image_path) as before, Image.open(mask_path) as mask:
        after_path = next(iter(result.files.values()))
        with Image.open(after_path) as after:
            return side_by_side(before, after, out_dir / "before_after.png", mask=mask)
