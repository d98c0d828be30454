"""Text-to-video jobs end to end on the local stack.

The stack's t2v runs a tiny random-weight Wan built by the session fixture, through the production
loader, in fused LoRA mode (one adapter merged at load): the video is noise, but the whole path is
the real one, from the job document to the MP4 in Storage. Adapters the fused model cannot honour
and bad sizes are refused by the functions, before the job is queued.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from core.contract import JobDoc, JobStatus
from infra.client import Client
from tests.integration.conftest import T2V_FUSED_LORA

pytestmark = pytest.mark.pipelines("t2v")


def _follow(client: Client, job_id: str) -> tuple[JobDoc, list[JobDoc]]:
    seen: list[JobDoc] = []
    return client.follow(job_id, seen.append, timeout=120), seen


def test_t2v_tiny_random_wan_makes_an_mp4_and_a_poster(client: Client, uid: str, tmp_path: Path) -> None:
    inputs = {
        "prompt": "a red cat on a wooden bench",
        "num_frames": 9,
        "fps": 12,
        "width": 64,
        "height": 32,
        "steps": 3,
        "seed": 5,
        "loras": [T2V_FUSED_LORA],  # already merged into the weights: accepted
    }
    job_id = client.create_job(uid, "t2v", inputs)
    job, seen = _follow(client, job_id)
    assert job.status is JobStatus.SUCCEEDED, job.error
    out = job.outputs or {}
    assert out["backend"] == "WanPipeline" and out["lora_mode"] == "fused" and out["seed"] == 5
    assert out["video"] == out["files"]["video.mp4"] and out["poster"] == out["files"]["poster.png"]
    assert out["video"].startswith(f"gs://{client.settings.media_bucket}/results/{uid}/{job_id}/1/")
    fractions = [s.progress.fraction for s in seen if s.progress and s.progress.stage == "denoising"]
    assert fractions == sorted(fractions)

    video = client.download(out["video"], tmp_path / "video.mp4")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames", "-of", "json", str(video)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert (stream["codec_name"], stream["pix_fmt"]) == ("h264", "yuv420p")
    assert (stream["width"], stream["height"], int(stream["nb_read_frames"])) == (64, 32, 9)
    assert stream["r_frame_rate"] == "12/1"
    assert client.download(out["poster"], tmp_path / "poster.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_t2v_refuses_what_the_service_cannot_make_before_queueing(client: Client, uid: str) -> None:
    cases = [
        (
            {"loras": [{"path": "wan/b/pytorch_lora_weights.safetensors"}]},
            "lora_unavailable",
            "cannot be applied",
        ),
        (
            {"loras": [{**T2V_FUSED_LORA, "weight": 1.0}]},
            "lora_unavailable",
            "merged into the model at weight 0.7",
        ),
        ({"loras": [{"path": "../../etc/x.safetensors"}]}, "invalid_inputs", "without '..'"),
        ({"num_frames": 8}, "invalid_inputs", "4k+1 frames"),
        ({"width": 100}, "invalid_inputs", "not a multiple of 16"),
        ({"num_frames": 85}, "invalid_inputs", "over this service's cap of 81 (max_frames)"),
    ]
    for change, code, message in cases:
        job = client.follow(client.create_job(uid, "t2v", {"prompt": "a cat", **change}), timeout=60)
        assert job.status is JobStatus.REJECTED, (change, job.status)
        assert job.error is not None and job.error.code == code, (change, job.error)
        assert message in job.error.message, (change, job.error.message)
        assert job.started_at is None  # no GPU work was spent on it
