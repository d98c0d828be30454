"""Input checks, sizes, compositing and result files shared by the image pipelines (Pillow only)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidInput
from devkit.sample_images import local_demo, make_sample, side_by_side, write_sample
from pipelines.imaging.checks import load_image, load_mask
from pipelines.imaging.fields import ImageLimitsConfig
from pipelines.imaging.output import composite, fit_work_size, result_key, save_result

LIMITS = ImageLimitsConfig()


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` but holds almost no data (a 'bomb' header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _solid(
    path: Path, size: tuple[int, int], color: tuple[int, ...], mode: str = "RGB", **save: object
) -> Path:
    Image.new(mode, size, color).save(path, **save)  # type: ignore[arg-type]
    return path


# -- images -----------------------------------------------------------------------------------


def test_image_check_rejects_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "photo.png"
    fake.write_text("this is not a picture")
    with pytest.raises(InvalidInput, match="not an image"):
        load_image(fake, LIMITS)


def test_image_check_rejects_formats_other_than_png_jpeg_webp(tmp_path: Path) -> None:
    gif = _solid(tmp_path / "anim.png", (32, 32), (1, 2, 3), format="GIF")  # wrong extension on purpose
    with pytest.raises(InvalidInput, match="GIF"):
        load_image(gif, LIMITS)


def test_image_check_rejects_a_png_over_the_pixel_limit_before_decoding(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 7000, 7000)  # 49 Mpx claimed, a few bytes of data
    with pytest.raises(InvalidInput, match="over the limit of 40,000,000"):
        load_image(bomb, LIMITS)


def test_image_check_turns_pillows_decompression_bomb_error_into_invalid_input(tmp_path: Path) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)  # beyond Pillow's own hard limit
    with pytest.raises(InvalidInput, match="too large"):
        load_image(bomb, LIMITS)


def test_image_check_uses_the_configured_pixel_limit(tmp_path: Path) -> None:
    png = _solid(tmp_path / "a.png", (300, 200), (9, 9, 9))
    with pytest.raises(InvalidInput, match="60,000 pixels, over the limit of 50,000"):
        load_image(png, ImageLimitsConfig(max_input_pixels=50_000))


def test_image_check_rejects_sides_out_of_bounds(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="at most 256"):
        load_image(_solid(tmp_path / "wide.png", (300, 20), (0, 0, 0)), ImageLimitsConfig(max_side=256))
    with pytest.raises(InvalidInput, match="at least 16"):
        load_image(_solid(tmp_path / "tiny.png", (8, 40), (0, 0, 0)), LIMITS)


def test_image_check_rejects_a_truncated_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = tmp_path / "full.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:400])
    with pytest.raises(InvalidInput, match="damaged or truncated"):
        load_image(cut, LIMITS)


def test_image_check_applies_exif_orientation_so_a_rotated_jpeg_comes_out_upright(tmp_path: Path) -> None:
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 30, 40))  # stored: left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left column becomes the top row
    path = tmp_path / "phone.jpg"
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())

    checked = load_image(path, LIMITS)

    assert checked.size == (40, 60)
    assert checked.format == "jpeg"
    top, bottom = checked.image.getpixel((20, 5)), checked.image.getpixel((20, 55))
    assert isinstance(top, tuple) and isinstance(bottom, tuple)
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue at the bottom
    assert "exif_orientation_6_applied" in checked.notes


def test_image_check_composites_rgba_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))  # fully transparent
    rgba.paste((200, 10, 10, 255), (0, 0, 20, 30))  # opaque red left half
    path = tmp_path / "cutout.png"
    rgba.save(path)

    checked = load_image(path, LIMITS)

    assert checked.image.mode == "RGB"
    assert checked.image.getpixel((5, 5)) == (200, 10, 10)
    assert checked.image.getpixel((35, 5)) == (255, 255, 255)
    assert "alpha_composited_on_white" in checked.notes


def test_image_check_reads_16_bit_greyscale_without_clipping(tmp_path: Path) -> None:
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(path)
    checked = load_image(path, LIMITS)
    pixel = checked.image.getpixel((0, 0))
    assert isinstance(pixel, tuple)
    assert 120 <= pixel[0] <= 136


# -- masks ------------------------------------------------------------------------------------


def test_mask_check_rejects_a_mask_of_another_aspect_ratio(tmp_path: Path) -> None:
    mask = _solid(tmp_path / "m.png", (50, 50), (255,), mode="L")
    with pytest.raises(InvalidInput, match="mask is 50x50 but the image is 100x75"):
        load_mask(mask, (100, 75), LIMITS)


def test_mask_check_resizes_a_mask_of_the_same_aspect_ratio_with_nearest(tmp_path: Path) -> None:
    small = Image.new("L", (50, 40), 0)
    small.paste(255, (10, 10, 20, 20))
    path = tmp_path / "m.png"
    small.save(path)
    notes: list[str] = []

    mask = load_mask(path, (100, 80), LIMITS, notes=notes)

    arr = np.asarray(mask)
    assert mask.size == (100, 80)
    assert set(np.unique(arr)) == {0, 255}  # NEAREST: still binary, no grey edge
    assert arr[20:40, 20:40].all() and arr[:20].sum() == 0
    assert notes == ["mask_resized_from_50x40"]


def test_mask_check_rejects_an_empty_mask(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="marks nothing"):
        load_mask(_solid(tmp_path / "m.png", (32, 32), (0,), mode="L"), (32, 32), LIMITS)


def test_mask_check_thresholds_grey_and_reads_strokes_on_a_transparent_layer(tmp_path: Path) -> None:
    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 8, 32))  # opaque white stroke
    layer.paste((255, 255, 255, 60), (8, 0, 16, 32))  # faint stroke: under 50 % after compositing
    path = tmp_path / "layer.png"
    layer.save(path)

    arr = np.asarray(load_mask(path, (32, 32), LIMITS))

    assert arr[:, :8].min() == 255 and arr[:, 8:].max() == 0


def test_mask_check_rejects_a_non_image_mask(tmp_path: Path) -> None:
    bad = tmp_path / "m.png"
    bad.write_bytes(b"GIF89a nope")
    with pytest.raises(InvalidInput, match="mask is not an image"):
        load_mask(bad, (32, 32), LIMITS)


# -- sizes, compositing, files ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "multiple", "max_pixels", "expected"),
    [
        ((100, 75), 16, None, (96, 80)),
        ((100, 75), 8, None, (104, 72)),
        ((100, 75), 1, None, (100, 75)),
        ((10, 5), 16, None, (16, 16)),
        ((2048, 1536), 16, 1024 * 1024, (1184, 880)),
    ],
)
def test_fit_work_size_rounds_to_the_model_multiple_within_the_pixel_budget(
    size: tuple[int, int], multiple: int, max_pixels: int | None, expected: tuple[int, int]
) -> None:
    assert fit_work_size(*size, multiple=multiple, max_pixels=max_pixels) == expected


def test_composite_keeps_every_pixel_outside_the_mask() -> None:
    rng = np.random.default_rng(1)
    original = Image.fromarray(rng.integers(0, 255, (75, 100, 3), dtype=np.uint8))
    generated = Image.new("RGB", (96, 80), (0, 255, 0))  # work size: resized back inside
    mask_arr = np.zeros((75, 100), dtype=np.uint8)
    mask_arr[10:30, 40:70] = 255
    out = np.asarray(composite(original, generated, Image.fromarray(mask_arr)))
    inside = mask_arr > 0
    assert (out[~inside] == np.asarray(original)[~inside]).all()
    assert (out[inside] == (0, 255, 0)).all()


@pytest.mark.parametrize(
    ("fmt", "pil_format", "suffix"),
    [("png", "PNG", "png"), ("jpeg", "JPEG", "jpg"), ("webp", "WEBP", "webp")],
)
def test_save_result_writes_result_file_in_the_requested_format(
    tmp_path: Path, fmt: str, pil_format: str, suffix: str
) -> None:
    rng = np.random.default_rng(2)
    image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    key, path = save_result(image, tmp_path, fmt, LIMITS)
    assert key == result_key(fmt) == f"result.{suffix}" and path == tmp_path / key
    with Image.open(path) as written:
        assert written.format == pil_format and written.size == (40, 30)
        if fmt != "jpeg":  # PNG and lossless WebP are exact
            assert (np.asarray(written.convert("RGB")) == np.asarray(image)).all()


def test_demo_sample_and_side_by_side(tmp_path: Path) -> None:
    clean, marked, mask = make_sample(160, 120)
    assert clean.size == marked.size == mask.size == (160, 120)
    inside = np.asarray(mask) > 0
    assert 0.01 < inside.mean() < 0.2
    changed = (np.asarray(marked) != np.asarray(clean)).any(axis=-1)
    assert not (changed & ~inside).any()  # the mask covers the whole mark
    image_path, mask_path = write_sample(tmp_path / "in", 160, 120)
    assert image_path.exists() and mask_path.exists()
    out = side_by_side(marked, clean, tmp_path / "ba.png", mask=mask)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (3 * 160 + 2 * 8, 120 + 18)


def test_local_demo_writes_a_before_after_picture_with_the_mark_removed(tmp_path: Path) -> None:
    picture = local_demo(tmp_path, 160, 120)
    assert picture == tmp_path / "before_after.png" and (tmp_path / "result.png").exists()
    clean, marked, mask = make_sample(160, 120)
    inside = np.asarray(mask) > 0
    result = np.asarray(Image.open(tmp_path / "result.png")).astype(np.int16)
    error_before = np.abs(np.asarray(marked).astype(np.int16) - np.asarray(clean))[inside].mean()
    error_after = np.abs(result - np.asarray(clean))[inside].mean()
    assert error_after < 0.2 * error_before
