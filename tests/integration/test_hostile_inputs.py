"""Hostile input, end to end on the emulators: every case ends in a clear, bounded state and
touches nothing else.

Job documents here are written with the backend's own credentials, bypassing the security rules
(which refuse most of them; tests/integration/test_security_rules.py proves that as an end user):
they stand for documents that predate a rule or slipped past one. Each case asserts the final
state, the error code, a bounded message, and that nothing ran.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.cloud import firestore
from PIL import Image

from core.contract import JobDoc, JobStatus, read_job
from core.errors import MAX_MESSAGE_CHARS
from devkit.sample_images import make_sample
from devkit.speech import synthesize
from functions.handlers import derived_job_id
from functions.sweeper import sweep
from infra.client import Client
from infra.jobs import firestore_client
from infra.localstack.stack import LocalStack
from tests.integration.conftest import untriggered_deps

pytestmark = pytest.mark.pipelines("transcribe", "inpaint", "edit", "video", "flaky")

FINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED}


@pytest.fixture(scope="module")
def wav(media_dir: Path) -> Path:
    return synthesize("Hostile input.", media_dir / "hostile.wav")


@pytest.fixture(scope="module")
def png(media_dir: Path) -> Path:
    clean, _marked, _mask = make_sample(64, 64)
    path = media_dir / "small.png"
    clean.save(path)
    return path


def _png_bytes(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, "PNG")
    return buf.getvalue()


def _wait_final(client: Client, job_id: str, timeout: float = 60) -> JobDoc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = client.jobs().document(job_id).get()
        if snap.exists:
            job = read_job(snap.to_dict() or {})
            if job.status in FINAL:
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end in {timeout} s")


def _assert_ended(job: JobDoc, status: JobStatus, code: str) -> None:
    assert job.status is status, (job.status, job.error)
    assert job.error is not None and job.error.code == code, job.error
    assert len(job.error.message) <= MAX_MESSAGE_CHARS and not job.error.retryable
    assert job.attempt == 0 and job.outputs is None  # never ran


# -- job documents -----------------------------------------------------------------------------------

Doc = Callable[[Client, str, Path, Path], dict[str, Any]]


def _base(pipeline: str, inputs: Any, **extra: Any) -> Doc:
    def make(c: Client, uid: str, wav: Path, png: Path) -> dict[str, Any]:
        return {"uid": uid, "pipeline": pipeline, "inputs": inputs, "status": "pending", **extra}

    return make


def _media(**inputs: Any) -> Doc:
    def make(c: Client, uid: str, wav: Path, png: Path) -> dict[str, Any]:
        return {
            "uid": uid,
            "pipeline": "transcribe",
            "inputs": {"media": c.upload(wav, uid), **inputs},
            "status": "pending",
        }

    return make


def _with_file(pipeline: str, build: Callable[[Client, str, Path, Path], dict[str, Any]]) -> Doc:
    def make(c: Client, uid: str, wav: Path, png: Path) -> dict[str, Any]:
        return {"uid": uid, "pipeline": pipeline, "inputs": build(c, uid, wav, png), "status": "pending"}

    return make


def _upload_bytes(c: Client, uid: str, name: str, data: bytes, content_type: str) -> str:
    blob = c.gcs.bucket(c.settings.media_bucket).blob(f"uploads/{uid}/{name}")
    blob.upload_from_string(data, content_type=content_type)
    return f"gs://{c.settings.media_bucket}/uploads/{uid}/{name}"


HUGE = "x" * 600_000

DOCUMENT_CASES: dict[str, tuple[Doc, JobStatus, str]] = {
    "pipeline name of 600 KB": (_base(HUGE, {}), JobStatus.REJECTED, "unknown_pipeline"),
    "unknown pipeline": (_base("paint_my_house", {}), JobStatus.REJECTED, "unknown_pipeline"),
    "inputs not a map": (_base("transcribe", "media please"), JobStatus.REJECTED, "invalid_job"),
    "createdAt garbage": (_base("transcribe", {}, createdAt="garbage"), JobStatus.REJECTED, "invalid_job"),
    "uid outside the pattern": (
        lambda c, uid, w, p: {
            "uid": f"{uid} x;y",
            "pipeline": "transcribe",
            "inputs": {},
            "status": "pending",
        },
        JobStatus.REJECTED,
        "invalid_job",
    ),
    "attempt of the wrong type": (_base("transcribe", {}, attempt="many"), JobStatus.REJECTED, "invalid_job"),
    "inputs nested 12 deep": (
        _base("transcribe", json.loads('{"a":' * 12 + "1" + "}" * 12)),
        JobStatus.REJECTED,
        "invalid_inputs",
    ),
    "inputs of 900 KB": (_base("transcribe", {"pad": "y" * 900_000}), JobStatus.REJECTED, "invalid_inputs"),
    "language of 600 KB": (_media(language=HUGE), JobStatus.REJECTED, "invalid_inputs"),
    "beam size not a number": (_media(beam_size="many"), JobStatus.REJECTED, "invalid_inputs"),
    "unknown input field": (_media(temperature=3), JobStatus.REJECTED, "invalid_inputs"),
    "missing file input": (_base("transcribe", {"language": "en"}), JobStatus.REJECTED, "invalid_inputs"),
    "file as an http URL": (
        _base("transcribe", {"media": "http://127.0.0.1/x.wav"}),
        JobStatus.REJECTED,
        "invalid_inputs",
    ),
    "file in another bucket": (
        lambda c, uid, w, p: _base("transcribe", {"media": f"gs://other-bucket/uploads/{uid}/a.wav"})(
            c, uid, w, p
        ),
        JobStatus.REJECTED,
        "wrong_bucket",
    ),
    "another user's file": (
        _with_file("transcribe", lambda c, uid, w, p: {"media": c.upload(w, f"{uid}-victim")}),
        JobStatus.REJECTED,
        "forbidden_object",
    ),
    "a result file, not an upload": (
        _with_file(
            "transcribe",
            lambda c, uid, w, p: {"media": f"gs://{c.settings.media_bucket}/results/{uid}/j/1/a.wav"},
        ),
        JobStatus.REJECTED,
        "forbidden_object",
    ),
    "path trick in the object name": (
        _with_file(
            "transcribe",
            lambda c, uid, w, p: {
                "media": f"gs://{c.settings.media_bucket}/uploads/{uid}/../{uid}-victim/a.wav"
            },
        ),
        JobStatus.REJECTED,
        "object_not_found",
    ),
    "missing object": (
        _with_file(
            "transcribe",
            lambda c, uid, w, p: {"media": f"gs://{c.settings.media_bucket}/uploads/{uid}/no.wav"},
        ),
        JobStatus.REJECTED,
        "object_not_found",
    ),
    "wrong content type": (
        _with_file(
            "transcribe",
            lambda c, uid, w, p: {"media": c.upload(w, uid, name="n.txt", content_type="text/plain")},
        ),
        JobStatus.REJECTED,
        "unsupported_content_type",
    ),
    "over the size cap": (
        _with_file(
            "transcribe",
            lambda c, uid, w, p: {
                "media": _upload_bytes(c, uid, "big.wav", b"\0" * (4 * 2**20), "audio/wav")
            },
        ),
        JobStatus.REJECTED,
        "too_large",
    ),
    "text file named .png": (
        _with_file(
            "inpaint",
            lambda c, uid, w, p: {
                "image": _upload_bytes(c, uid, "cat.png", b"not an image at all", "image/png"),
                "mask": c.upload(p, uid, name="m.png"),
            },
        ),
        JobStatus.REJECTED,
        "invalid_image",
    ),
    "decompression bomb header": (
        _with_file(
            "inpaint",
            lambda c, uid, w, p: {
                "image": _upload_bytes(c, uid, "bomb.png", _png_bytes(9000, 9000), "image/png"),
                "mask": c.upload(p, uid, name="m.png"),
            },
        ),
        JobStatus.REJECTED,
        "image_too_large",
    ),
    "GIF as a mask": (
        _with_file(
            "inpaint",
            lambda c, uid, w, p: {
                "image": c.upload(p, uid, name="i.png"),
                "mask": _upload_bytes(c, uid, "m.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/png"),
            },
        ),
        JobStatus.REJECTED,
        "invalid_image",
    ),
    "tiny image": (
        _with_file(
            "edit",
            lambda c, uid, w, p: {
                "image": _upload_bytes(c, uid, "dot.png", _png_bytes(2, 2), "image/png"),
                "instruction": "x",
            },
        ),
        JobStatus.REJECTED,
        "image_too_small",
    ),
    "adapter path escaping its folder": (
        _with_file(
            "edit",
            lambda c, uid, w, p: {
                "image": c.upload(p, uid, name="e.png"),
                "instruction": "x",
                "loras": [{"path": "../../etc/passwd.safetensors"}],
            },
        ),
        JobStatus.REJECTED,
        "invalid_inputs",
    ),
    "video URL to the metadata server": (
        _base("video", {"url": "http://169.254.169.254/computeMetadata/v1/"}),
        JobStatus.REJECTED,
        "blocked_address",
    ),
    "video file:// URL": (
        _base("video", {"url": "file:///etc/passwd"}),
        JobStatus.REJECTED,
        "invalid_inputs",
    ),
}


@pytest.mark.parametrize("case", sorted(DOCUMENT_CASES))
def test_a_hostile_job_document_ends_with_a_clear_bounded_error(
    client: Client, uid: str, wav: Path, png: Path, case: str
) -> None:
    make, status, code = DOCUMENT_CASES[case]
    job_id = f"h-{uid}"
    data = make(client, uid, wav, png)
    data.setdefault("createdAt", firestore.SERVER_TIMESTAMP)
    client.jobs().document(job_id).set(data)
    job = _wait_final(client, job_id)
    _assert_ended(job, status, code)


def test_a_job_id_outside_the_pattern_is_rejected(client: Client, uid: str) -> None:
    job_id = f"bad.id.{uid}"
    client.jobs().document(job_id).set(
        {"uid": uid, "pipeline": "transcribe", "inputs": {}, "status": "pending"}
    )
    _assert_ended(_wait_final(client, job_id), JobStatus.REJECTED, "invalid_job_id")


def test_backend_fields_a_document_came_with_are_dropped_when_it_is_queued(
    client: Client, uid: str, flaky_state: Path
) -> None:
    job_id = f"bf-{uid}"
    client.jobs().document(job_id).set(
        {
            "uid": uid,
            "pipeline": "flaky",
            "inputs": {"steps": 2},
            "status": "pending",
            "attempt": 99,
            "outputs": {"result": "forged"},
            "lastError": {"code": "x", "message": "forged"},
        }
    )
    job = client.follow(job_id, timeout=60)
    assert job.status is JobStatus.SUCCEEDED and job.attempt == 1
    assert job.outputs and job.outputs.get("result") != "forged" and job.last_error is None


# -- drop uploads ---------------------------------------------------------------------------------


def _drop(client: Client, uid: str, wav: Path, metadata: dict[str, str], folder: str = "transcribe") -> str:
    name = f"d-{time.monotonic_ns()}.wav"
    uri = client.upload(wav, uid, pipeline=folder, name=name, metadata=metadata)
    blob = client.gcs.bucket(client.settings.media_bucket).get_blob(uri.split("/", 3)[3])
    assert blob is not None
    return derived_job_id(client.settings.media_bucket, blob.name, str(blob.generation))


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        ({"inputs": '{"a":' * 200 + "1" + "}" * 200}, "invalid_inputs"),  # nested 200 levels, 1.4 KB
        ({"inputs": "not json"}, "invalid_inputs"),
        ({"inputs": "[1, 2, 3]"}, "invalid_inputs"),
        ({"inputs": json.dumps({"beam_size": "many"})}, "invalid_inputs"),
        ({"jobId": "has spaces and ;"}, "invalid_job_id"),
    ],
)
def test_a_drop_upload_with_bad_metadata_ends_as_a_rejected_job(
    client: Client, uid: str, wav: Path, metadata: dict[str, str], code: str
) -> None:
    job_id = _drop(client, uid, wav, metadata)
    job = _wait_final(client, job_id)
    _assert_ended(job, JobStatus.REJECTED, code)
    assert job.source and job.source.kind == "upload"


def test_a_drop_upload_to_an_unknown_pipeline_folder_is_rejected(client: Client, uid: str, wav: Path) -> None:
    _assert_ended(
        _wait_final(client, _drop(client, uid, wav, {}, folder="nope")),
        JobStatus.REJECTED,
        "unknown_pipeline",
    )


def _barrier(client: Client, uid: str, wav: Path) -> None:
    """A drop upload made after the case's own, followed until its job ends: the uploads'
    notifications share one subscription, so by then the case's own was handled too."""
    marker = f"marker-{uid}"
    client.upload(wav, uid, pipeline="transcribe", name=f"{marker}.wav", metadata={"jobId": marker})
    assert client.follow(marker, timeout=120).status is JobStatus.SUCCEEDED


def test_a_drop_upload_naming_another_users_job_id_leaves_that_job_alone(
    client: Client, uid: str, wav: Path
) -> None:
    victim = f"{uid}-victim"
    theirs = client.follow(client.create_job(victim, "flaky", {"steps": 1}, job_id=f"v-{uid}"), timeout=60)
    _drop(client, uid, wav, {"jobId": f"v-{uid}"})
    _barrier(client, uid, wav)
    after = client.get(f"v-{uid}")
    assert after is not None and after.uid == victim
    # The notification dispatcher records the end event's delivery on the job after it ended
    # (notifications, updatedAt); nothing else of it may change.
    unrelated = {"notifications", "updated_at"}
    assert after.model_dump(exclude=unrelated) == theirs.model_dump(exclude=unrelated)
    assert [j for j, _ in client.list(uid)] == [f"marker-{uid}"]  # and made no job of its own


def test_an_upload_path_with_an_impossible_uid_creates_nothing(client: Client, uid: str, wav: Path) -> None:
    blob = client.gcs.bucket(client.settings.media_bucket).blob("uploads/a b;c/transcribe/x.wav")
    blob.upload_from_filename(str(wav), content_type="audio/wav")
    blob.reload()
    _barrier(client, uid, wav)
    job_id = derived_job_id(client.settings.media_bucket, blob.name, str(blob.generation))
    assert not client.jobs().document(job_id).get().exists


# -- pushes straight to the GPU service -----------------------------------------------------------


def _push(stack: LocalStack, path: str, message: dict[str, Any] | bytes) -> httpx.Response:
    data = message if isinstance(message, bytes) else json.dumps(message).encode()
    body = {"message": {"data": base64.b64encode(data).decode(), "messageId": "hostile"}}
    return httpx.post(stack.env["GPU_SERVICE_URL"] + path, json=body, timeout=60)


def test_a_pushed_job_that_was_never_validated_is_not_run(
    stack: LocalStack, client: Client, uid: str, wav: Path
) -> None:
    # The attack that once worked: a job naming someone else's upload, kept pending, pushed directly.
    victim_file = client.upload(wav, f"{uid}-victim")
    job_id = f"pp-{uid}"
    ref = client.jobs().document(job_id)
    ref.set({"uid": uid, "pipeline": "transcribe", "inputs": {"media": victim_file}, "status": "pending"})
    rejected = _wait_final(client, job_id)  # its own trigger rejects it
    _assert_ended(rejected, JobStatus.REJECTED, "forbidden_object")
    resp = _push(stack, "/push/transcribe", {"jobId": job_id, "pipeline": "transcribe"})
    assert resp.status_code == 200  # answered: the push was handled, and ran nothing
    # Only the notification dispatcher writes an ended job again (its outbox and updatedAt).
    unrelated = {"notifications", "updated_at"}
    after = client.get(job_id)
    assert after is not None and after.model_dump(exclude=unrelated) == rejected.model_dump(exclude=unrelated)
    assert not list(client.gcs.list_blobs(client.settings.media_bucket, prefix=f"results/{uid}/{job_id}/"))


def test_a_forged_queued_job_naming_another_users_file_fails_before_download(
    stack: LocalStack, client: Client, uid: str, wav: Path
) -> None:
    victim_file = client.upload(wav, f"{uid}-victim")
    job_id = f"fq-{uid}"
    # status queued without the trigger's validation (inputFiles absent): only a backend write
    # could do this, and even then the worker checks again.
    client.jobs().document(job_id).set(
        {"uid": uid, "pipeline": "transcribe", "inputs": {"media": victim_file}, "status": "queued"}
    )
    # The push, or the redriver that finds it queued: whichever claims it, it is checked again.
    resp = _push(stack, "/push/transcribe", {"jobId": job_id, "pipeline": "transcribe"})
    assert resp.status_code in (200, 503)
    job = _wait_final(client, job_id)
    assert job.status is JobStatus.FAILED and job.error and job.error.code == "forbidden_object"
    assert not job.outputs
    assert not list(client.gcs.list_blobs(client.settings.media_bucket, prefix=f"results/{uid}/{job_id}/"))


def test_a_push_on_another_pipelines_route_is_refused_without_touching_the_job(
    stack: LocalStack, client: Client, uid: str
) -> None:
    job_id = f"mr-{uid}"
    # A job of a pipeline this service does not serve (so nothing here may claim it at all).
    client.jobs().document(job_id).set(
        {"uid": uid, "pipeline": "elsewhere", "inputs": {}, "status": "queued"}
    )
    before = client.jobs().document(job_id).get()
    resp = _push(stack, "/push/transcribe", {"jobId": job_id, "pipeline": "transcribe"})
    assert resp.status_code == 200 and resp.json()["detail"] == "misrouted"
    after = client.jobs().document(job_id).get()
    assert after.to_dict() == before.to_dict() and after.update_time == before.update_time


@pytest.mark.parametrize(
    ("path", "message", "status"),
    [
        ("/push/nope", {"jobId": "j1", "pipeline": "nope"}, 503),  # not served here: left for the DLQ
        ("/push/transcribe", {"jobId": "j1", "pipeline": "transcribe", "part": "../x"}, 400),
        ("/push/transcribe", {"jobId": "../../etc", "pipeline": "transcribe"}, 400),
        ("/push/transcribe", {"jobId": "j1", "pipeline": "video"}, 400),  # message and route disagree
        ("/push/transcribe", b"\xff\xfe not json", 400),
        ("/push/transcribe/speech", {"jobId": "j1", "pipeline": "transcribe", "part": "speech"}, 200),
    ],
)
def test_malformed_or_misdirected_pushes_are_answered_and_run_nothing(
    stack: LocalStack, client: Client, path: str, message: dict[str, Any] | bytes, status: int
) -> None:
    resp = _push(stack, path, message)
    assert resp.status_code == status, resp.text
    assert not client.jobs().document("j1").get().exists


def test_an_input_replaced_after_validation_fails_the_job(
    stack: LocalStack, client: Client, uid: str, png: Path, flaky_state: Path
) -> None:
    busy = [client.create_job(uid, "flaky", {"steps": 40, "step_seconds": 0.05}) for _ in range(2)]
    for job_id in busy:
        client.wait_for_status(job_id, {JobStatus.RUNNING}, timeout=30)
    image = client.upload(png, uid, name="swap.png")
    mask = client.upload(png, uid, name="swap-mask.png")
    job_id = client.create_job(uid, "inpaint", {"image": image, "mask": mask})
    queued = client.wait_for_status(job_id, {JobStatus.QUEUED}, timeout=30)
    assert queued.input_files and queued.input_files["image"].size == png.stat().st_size
    # Swapped for a much larger file while the job waits for a slot.
    _upload_bytes(client, uid, "swap.png", _png_bytes(2000, 2000), "image/png")
    job = client.follow(job_id, timeout=60)
    assert job.status is JobStatus.FAILED and job.error and job.error.code == "input_changed"
    assert "validated" in job.error.message and not job.outputs


# -- the sweeper with poison documents present ------------------------------------------------------


def test_poison_documents_never_stop_the_sweeper_recovering_another_users_job(
    stack: LocalStack, uid: str
) -> None:
    deps = untriggered_deps("jobs-poison")
    db = firestore_client(deps.settings)
    coll = db.collection("jobs-poison")
    coll.document(f"p1-{uid}").set(
        {"uid": uid, "pipeline": "flaky", "status": "pending", "createdAt": "garbage"}
    )
    coll.document(f"p2-{uid}").set({"uid": "a b", "pipeline": 7, "status": "pending"})
    coll.document(f"p3-{uid}").set({"uid": uid, "pipeline": HUGE, "inputs": {}, "status": "pending"})
    coll.document(f"p4-{uid}").set({"uid": uid, "pipeline": "flaky", "status": "queued", "inputs": "x"})
    expired = datetime.now(UTC) - timedelta(minutes=5)
    coll.document(f"ok-{uid}").set(
        {
            "uid": f"{uid}-other",
            "pipeline": "flaky",
            "inputs": {},
            "status": "running",
            "attempt": 1,
            "lease": {"owner": "dead-worker", "expiresAt": expired},
            "updatedAt": expired,
        }
    )
    report = sweep(deps, now=datetime.now(UTC) + timedelta(minutes=10))
    assert f"ok-{uid}" in report.requeued
    assert {f"p1-{uid}", f"p2-{uid}", f"p4-{uid}"} <= set(report.ended_malformed)
    assert not report.errors
    ok = deps.jobs.get(f"ok-{uid}")
    assert ok and ok.status is JobStatus.QUEUED and ok.last_error and ok.last_error.code == "worker_lost"
    for poison, code in (
        (f"p1-{uid}", "invalid_job"),
        (f"p2-{uid}", "invalid_job"),
        (f"p3-{uid}", "unknown_pipeline"),
    ):
        job = read_job(coll.document(poison).get().to_dict() or {})
        assert job.status is JobStatus.REJECTED and job.error and job.error.code == code, poison
        assert len(job.error.message) <= MAX_MESSAGE_CHARS
    p4 = read_job(coll.document(f"p4-{uid}").get().to_dict() or {})
    assert p4.status is JobStatus.FAILED and p4.error and p4.error.code == "invalid_job"
