"""The example plugin end to end on the stack, enabled by name alone: the installed distribution's
entry point gives the functions and the GPU service its spec, and the stack its route."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from core.contract import JobDoc, JobStatus
from infra.client import Client
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("automaton")

PIPELINE = "automaton"


def test_the_plugin_is_not_named_in_the_plugins_setting_or_the_topology_file(stack: LocalStack) -> None:
    assert PIPELINE not in stack.env.get("PLUGINS", "") + stack.config.env.get("PLUGINS", "")
    sub = stack.topology.subscription(PIPELINE)  # from the spec, through gpujobs
    assert (sub.ack_deadline_seconds, sub.retry_policy.minimum_backoff_seconds) == (300, 5)
    written = (stack.config.state_dir / "topology.yaml").read_text()
    assert f"\n  {PIPELINE}:\n" in written  # what the components (and the parity test) read


def test_the_gpu_service_loads_it_and_reports_no_broken_plugin(stack: LocalStack) -> None:
    health = httpx.get(f"{stack.env['GPU_SERVICE_URL']}/healthz", timeout=10).json()
    assert health["pipelines"][PIPELINE] == "ready"
    assert health["broken_plugins"] == []


def test_an_automaton_job_renders_an_mp4_with_progress(client: Client, uid: str, tmp_path: Path) -> None:
    inputs = {
        "dimensions": 2,
        "rule": "B3/S23",
        "seed": 11,
        "width": 320,
        "height": 240,
        "frames": 240,
        "fps": 30,
    }
    # Long enough (about 2 s of rendering) for per-frame progress to reach a listener through the
    # service's progress throttle, even on an idle machine.
    job_id = client.create_job(uid, PIPELINE, inputs)
    seen: list[JobDoc] = []
    job = client.follow(job_id, seen.append, timeout=120)
    assert job.status is JobStatus.SUCCEEDED, job.error
    stages = [s.progress.stage for s in seen if s.progress and s.status is JobStatus.RUNNING]
    assert any(stage.startswith("frame ") and stage.endswith(" of 240") for stage in stages), stages
    out = job.outputs or {}
    assert out["video"] == out["files"]["automaton.mp4"]
    assert out["video"].startswith(f"gs://{client.settings.media_bucket}/results/{uid}/{job_id}/1/")
    assert (out["frames"], out["width"], out["height"], out["rule"]) == (240, 320, 240, "B3/S23")

    video = client.download(out["video"], tmp_path / "automaton.mp4")
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,nb_read_frames", "-of", "json", str(video)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    stream = json.loads(probe.stdout)["streams"][0]
    assert stream == {"codec_name": "h264", "width": 320, "height": 240, "nb_read_frames": "240"}


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ({"rule": "300"}, "rule is a Wolfram code from 0 to 255"),
        (
            {"dimensions": 2, "rule": "B3/S23", "frames": 1800, "width": 1024, "height": 1024},
            "at most 64,000,000",
        ),
    ],
    ids=["rule", "too-much-work"],
)
def test_a_bad_input_rejects_the_job_before_any_work(
    client: Client, uid: str, inputs: dict[str, object], says: str
) -> None:
    job = client.follow(client.create_job(uid, PIPELINE, inputs), timeout=60)
    assert job.status is JobStatus.REJECTED and job.error is not None
    assert job.error.code == "invalid_inputs" and says in job.error.message
