"""Image jobs end to end on the local stack.

inpaint runs its OpenCV backend (the local default: a real, visible result without a GPU);
edit runs a tiny random-weight InstructPix2Pix built by the session fixture, through the
production loader: its picture is noise, but every step of the path is the real one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.contract import JobDoc, JobStatus
from devkit.sample_images import make_sample
from infra.client import Client

pytestmark = pytest.mark.pipelines("inpaint", "edit")


def _follow(client: Client, job_id: str) -> tuple[JobDoc, list[JobDoc]]:
    seen: list[JobDoc] = []
    return client.follow(job_id, seen.append, timeout=120), seen


def test_inpaint_opencv_removes_a_drawn_mark(client: Client, uid: str, tmp_path: Path) -> None:
    clean, marked, mask = make_sample(320, 240)
    marked.save(tmp_path / "marked.png")
    mask.save(tmp_path / "mask.png")
    inputs = {
        "image": client.upload(tmp_path / "marked.png", uid),
        "mask": client.upload(tmp_path / "mask.png", uid),
        "prompt": "an empty sky",
        "seed": 3,
    }
    job_id = client.create_job(uid, "inpaint", inputs)
    job, seen = _follow(client, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    out = job.outputs or {}
    assert out["backend"] == "opencv" and out["seed"] == 3
    assert out["image"] == out["files"][out["result_file"]]
    assert out["image"].startswith(f"gs://{client.settings.media_bucket}/results/{uid}/{job_id}/1/")
    assert any(s.progress and s.status is JobStatus.RUNNING for s in seen)

    result = np.asarray(
        Image.open(client.download(out["image"], tmp_path / "result.png")).convert("RGB"), float
    )
    assert result.shape == (240, 320, 3)
    inside = np.asarray(mask) > 127
    before = np.abs(np.asarray(marked, float) - np.asarray(clean, float))[inside].mean()
    after = np.abs(result - np.asarray(clean, float))[inside].mean()
    assert after < 0.2 * before, (before, after)  # the mark is gone
    assert np.array_equal(result[~inside], np.asarray(marked, float)[~inside])  # the rest untouched


def test_edit_runs_through_the_production_loader(client: Client, uid: str, tmp_path: Path) -> None:
    _clean, marked, _mask = make_sample(96, 64)
    marked.save(tmp_path / "photo.jpg", quality=95)
    image = client.upload(tmp_path / "photo.jpg", uid)
    job_id = client.create_job(
        uid, "edit", {"image": image, "instruction": "make it sunset", "steps": 3, "seed": 7}
    )
    job, seen = _follow(client, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    out = job.outputs or {}
    assert out["backend"] == "StableDiffusionInstructPix2PixPipeline"
    assert out["memory_strategy"]  # chosen from the device and recorded
    assert out["format"] == "jpeg" and out["image"].endswith(".jpg")
    result = Image.open(client.download(out["image"], tmp_path / "result.jpg"))
    assert result.size == (96, 64)
    fractions = [s.progress.fraction for s in seen if s.progress and s.progress.stage == "denoising"]
    assert fractions == sorted(fractions)


def test_not_an_image_is_refused_before_any_model_work(client: Client, uid: str, tmp_path: Path) -> None:
    fake = tmp_path / "cat.png"
    fake.write_text("this is a text file with a .png name")
    image = client.upload(fake, uid, content_type="image/png")
    job = client.follow(client.create_job(uid, "edit", {"image": image, "instruction": "x"}), timeout=60)
    # Rejected from its header before it was ever queued: no GPU time, and a code an app can act on.
    assert job.status is JobStatus.REJECTED and job.queued_at is None
    assert job.error and job.error.code == "invalid_image" and not job.error.retryable
    assert "PNG, JPEG or WebP" in job.error.message
