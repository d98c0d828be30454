"""The ``inpaint`` pipeline with its default OpenCV backend (no weights, no GPU), end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import Cancelled, InvalidInput, PermanentError
from core.spec import RunContext
from devkit.progress import ProgressLog
from devkit.sample_images import make_sample
from pipelines.inpaint import SPEC, InpaintConfig, InpaintInputs
from pipelines.inpaint.pipeline import InpaintPipeline

URIS = {"image": "gs://bucket/in/image.png", "mask": "gs://bucket/in/mask.png"}


@pytest.fixture(scope="module")
def telea() -> InpaintPipeline:
    pipeline = SPEC.load(InpaintConfig())
    assert isinstance(pipeline, InpaintPipeline)
    return pipeline


def _job(tmp: Path, image: Image.Image, mask: Image.Image, *, fmt: str = "PNG") -> dict[str, Path]:
    ext = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}[fmt]
    image_path, mask_path = tmp / f"image.{ext}", tmp / "mask.png"
    image.save(image_path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    mask.save(mask_path)
    return {"image": image_path, "mask": mask_path}


def _run(
    pipeline: InpaintPipeline,
    tmp: Path,
    files: dict[str, Path],
    progress: ProgressLog | None = None,
    **inputs: object,
) -> tuple[object, np.ndarray, Image.Image]:
    workdir = tmp / "work"
    workdir.mkdir(exist_ok=True)
    ctx = RunContext(job_id="job-1", workdir=workdir, files=files, progress=progress or ProgressLog())
    result = pipeline.run(InpaintInputs.model_validate({**URIS, **inputs}), ctx)
    assert list(result.files) == [result.outputs.result_file]
    written = Image.open(result.files[result.outputs.result_file])
    return result, np.asarray(written.convert("RGB")).astype(np.int16), written


def test_spec_is_cheap_to_import_and_defaults_to_the_opencv_backend() -> None:
    code = (
        "import sys, json, pipelines.inpaint, pipelines.edit;"
        "print(json.dumps([m for m in ('torch', 'PIL', 'numpy', 'cv2', 'diffusers') if m in sys.modules]))"
    )
    heavy = json.loads(
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    )
    assert heavy == []
    assert SPEC.name == "inpaint" and set(SPEC.file_fields()) == {"image", "mask"}
    assert SPEC.file_fields()["image"].accepts("image/webp") and not SPEC.file_fields()["mask"].accepts(
        "image/gif"
    )
    assert InpaintConfig().backend == "opencv"


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_inpaint_opencv_removes_a_drawn_mark(tmp_path: Path, method: str) -> None:
    pipeline = SPEC.load(InpaintConfig.model_validate({"opencv_method": method}))
    assert isinstance(pipeline, InpaintPipeline)
    clean, marked, mask = make_sample(256, 192)
    result, out, written = _run(pipeline, tmp_path, _job(tmp_path, marked, mask))

    inside = np.asarray(mask) > 0
    clean_arr, marked_arr = np.asarray(clean).astype(np.int16), np.asarray(marked).astype(np.int16)
    error_marked = np.abs(marked_arr - clean_arr)[inside].mean()
    error_out = np.abs(out - clean_arr)[inside].mean()
    assert error_marked > 30
    assert error_out < 0.15 * error_marked
    assert (out[~inside] == marked_arr[~inside]).all()  # outside the mask: bit for bit
    assert written.format == "PNG" and written.size == (256, 192)
    assert result.outputs.backend == "opencv" and result.outputs.result_file == "result.png"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_inpaint_opencv_result_has_the_input_size_and_format(
    telea: InpaintPipeline, tmp_path: Path, fmt: str, suffix: str
) -> None:
    _clean, marked, mask = make_sample(100, 75)
    result, out, written = _run(telea, tmp_path, _job(tmp_path, marked, mask, fmt=fmt), seed=3)
    outputs = result.outputs  # type: ignore[attr-defined]
    assert written.format == fmt and written.size == (100, 75)
    assert outputs.result_file == f"result.{suffix}" and (outputs.width, outputs.height) == (100, 75)
    assert outputs.seed == 3 and outputs.image is None
    if fmt != "JPEG":
        original = np.asarray(Image.open(tmp_path / f"image.{suffix}").convert("RGB")).astype(np.int16)
        outside = np.asarray(mask) == 0
        assert (out[outside] == original[outside]).all()


def test_inpaint_opencv_output_format_overrides_the_input_format(
    telea: InpaintPipeline, tmp_path: Path
) -> None:
    _clean, marked, mask = make_sample(64, 48)
    result, _out, written = _run(telea, tmp_path, _job(tmp_path, marked, mask), output_format="webp")
    assert written.format == "WEBP" and result.outputs.result_file == "result.webp"  # type: ignore[attr-defined]


def test_inpaint_opencv_exif_rotated_jpeg_comes_out_upright(telea: InpaintPipeline, tmp_path: Path) -> None:
    _clean, marked, _mask = make_sample(80, 60)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 CCW to display: shown as 60x80
    image_path = tmp_path / "phone.jpg"
    marked.save(image_path, format="JPEG", exif=exif.tobytes())
    upright_mask = Image.new("L", (60, 80), 0)
    upright_mask.paste(255, (10, 10, 30, 30))
    upright_mask.save(tmp_path / "mask.png")

    result, _out, written = _run(telea, tmp_path, {"image": image_path, "mask": tmp_path / "mask.png"})

    assert written.size == (60, 80) and written.format == "JPEG"
    assert "exif_orientation_8_applied" in result.outputs.notes  # type: ignore[attr-defined]
    assert not written.getexif().get(0x0112)


def test_inpaint_opencv_rgba_input_is_composited_on_white(telea: InpaintPipeline, tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    rgba.paste((30, 90, 200, 255), (0, 0, 32, 48))
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (10, 10, 20, 20))
    result, out, written = _run(telea, tmp_path, _job(tmp_path, rgba, mask))
    assert written.mode == "RGB"
    assert tuple(out[40, 60]) == (255, 255, 255) and tuple(out[40, 5]) == (30, 90, 200)
    assert "alpha_composited_on_white" in result.outputs.notes  # type: ignore[attr-defined]


def test_inpaint_opencv_reports_coarse_progress_ending_at_one(telea: InpaintPipeline, tmp_path: Path) -> None:
    _clean, marked, mask = make_sample(64, 48)
    progress = ProgressLog()
    _run(telea, tmp_path, _job(tmp_path, marked, mask), progress=progress)
    fractions = progress.fractions
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [s for _, s in progress.calls] == [
        "checking inputs",
        "inpainting",
        "compositing",
        "writing result",
    ]


def test_inpaint_opencv_cancellation_through_progress_stops_the_run(
    telea: InpaintPipeline, tmp_path: Path
) -> None:
    _clean, marked, mask = make_sample(64, 48)
    progress = ProgressLog(cancel_at=("inpainting", 1))
    with pytest.raises(Cancelled):
        _run(telea, tmp_path, _job(tmp_path, marked, mask), progress=progress)
    assert not list((tmp_path / "work").iterdir())  # no result written
    assert progress.calls[-1][1] == "inpainting"


def test_inpaint_opencv_rejects_adapters(telea: InpaintPipeline, tmp_path: Path) -> None:
    _clean, marked, mask = make_sample(64, 48)
    with pytest.raises(InvalidInput, match="need the flux backend"):
        _run(telea, tmp_path, _job(tmp_path, marked, mask), loras=[{"path": "a.safetensors"}])


def test_inpaint_rejects_bad_inputs_before_any_model_work(telea: InpaintPipeline, tmp_path: Path) -> None:
    _clean, marked, mask = make_sample(64, 48)
    files = _job(tmp_path, marked, mask)
    (tmp_path / "notes.txt").write_text("hello")
    progress = ProgressLog()
    with pytest.raises(InvalidInput, match="not an image"):
        _run(telea, tmp_path, {**files, "image": tmp_path / "notes.txt"}, progress=progress)
    mask.resize((64, 64)).save(tmp_path / "square.png")
    with pytest.raises(InvalidInput, match="mask is 64x64 but the image is 64x48"):
        _run(telea, tmp_path, {**files, "mask": tmp_path / "square.png"}, progress=progress)
    assert {s for _, s in progress.calls} == {"checking inputs"}
    with pytest.raises(PermanentError, match="'mask' was not provided"):
        _run(telea, tmp_path, {"image": files["image"]})


def test_inpaint_accepts_inputs_as_a_plain_dict(telea: InpaintPipeline, tmp_path: Path) -> None:
    _clean, marked, mask = make_sample(64, 48)
    files = _job(tmp_path, marked, mask)
    ctx = RunContext(job_id="j", workdir=tmp_path, files=files)
    result = telea.run({**URIS, "seed": 1}, ctx)  # type: ignore[arg-type]
    assert result.outputs.seed == 1
    with pytest.raises(InvalidInput, match="invalid inpaint inputs"):
        telea.run({**URIS, "steps": 0}, ctx)  # type: ignore[arg-type]
