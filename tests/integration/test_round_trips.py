"""Round trips one job costs: what its work needs, and no more, on the real emulators.

A tiny inpaint job (two inputs, one output) costs, summed over the functions and the GPU service:
Storage one range read per input at validation (its metadata and header together), one download
per input at the worker (the generation validation pinned, trusted without a metadata read), one
upload; Firestore the admission's read and commit, the claim's write (against the queueing write
the message carries) and the finish's write (against the claim's own write); Pub/Sub one publish.
Lease renewals and progress writes come on top, one write each: the log counts them apart.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from core.contract import JobStatus, Progress
from core.lifecycle import ClaimOutcome, Ending
from core.patch import Patch
from core.quota import QuotaPolicy
from core.work import WorkRef
from infra import roundtrips
from infra.client import Client
from infra.jobs import JobStore, LastWrite
from infra.localstack.stack import LocalStack

pytestmark = pytest.mark.pipelines("inpaint")


def _tiny_inputs(client: Client, uid: str, tmp: Path) -> dict[str, str]:
    Image.new("RGB", (32, 32), (90, 140, 200)).save(tmp / "tiny.png")
    mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(mask).rectangle((10, 10, 20, 20), fill=255)
    mask.save(tmp / "tiny-mask.png")
    return {"image": client.upload(tmp / "tiny.png", uid), "mask": client.upload(tmp / "tiny-mask.png", uid)}


def _logged(stack: LocalStack, job_id: str) -> Counter[str]:
    """The job's round trips from the components' logs, once the worker has logged its own."""
    deadline = time.monotonic() + 20
    while True:
        lines = [
            line
            for name in ("on-job-created", "gpu_service")
            for line in stack.log_path(name).read_text(errors="replace").splitlines()
        ]
        worker = [line for line in lines if f"job {job_id} round trips" in line and "(succeeded)" in line]
        if worker or time.monotonic() > deadline:
            return roundtrips.from_logs(lines, {job_id})[job_id]
        time.sleep(0.2)


def test_a_tiny_inpaint_job_costs_the_round_trips_its_work_needs(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path
) -> None:
    inputs = _tiny_inputs(client, uid, tmp_path)
    job_id = client.create_job(uid, "inpaint", inputs)
    job = client.follow(job_id, timeout=120)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.attempt == 1
    assert job.input_files and {f.size for f in job.input_files.values()} == {
        (tmp_path / "tiny.png").stat().st_size,
        (tmp_path / "tiny-mask.png").stat().st_size,
    }  # the range reads described both inputs: their sizes were pinned from them
    counts = _logged(stack, job_id)
    assert counts["storage"] == 5, counts  # 2 range reads, 2 downloads, 1 upload
    assert counts["pubsub"] == 1, counts
    assert counts["firestore"] - counts["beats"] == 4, counts  # admit 2, claim 1, finish 1


def test_a_claim_writes_against_the_queued_copy_only_while_nobody_wrote_since(
    stack: LocalStack, client: Client, uid: str
) -> None:
    """The message's copy of the queued job saves the claim a read only when the document is
    still that copy: a second delivery of the same message, or a cancel request written after
    the claim, makes the write read the job and decide again."""
    collection = "copy-jobs"  # no trigger watches it: this test is the only writer
    store = JobStore(client.db, collection, client.settings.quotas_collection)
    job_id = f"copy-{uid}"
    ref = WorkRef(job_id)
    doc = client.db.collection(collection).document(job_id)
    doc.set({"uid": uid, "pipeline": "none", "inputs": {}, "status": "pending"})
    queued = LastWrite()
    moved, _ = store.admit(job_id, uid, "none", QuotaPolicy(), Patch().set("attempt", 0), queued)
    assert moved is JobStatus.QUEUED
    copy = queued.copy()
    assert copy is not None and copy.job["status"] == "queued"

    with roundtrips.counting() as first_count:
        written = LastWrite()
        first = store.claim(ref, "worker-a", 30, 5, last=written, queued=copy)
    assert first.outcome is ClaimOutcome.CLAIMED and first.attempt == 1
    assert first_count["firestore"] == 1  # the write alone

    with roundtrips.counting() as again_count:  # the same message, delivered again
        again = store.claim(ref, "worker-b", 30, 5, last=LastWrite(), queued=copy)
    assert again.outcome is ClaimOutcome.RUNNING_ELSEWHERE
    assert again_count["firestore"] == 2  # the refused write, then the read that decided

    doc.update({"cancelRequested": True})  # the client, meanwhile
    with roundtrips.counting() as beat_count:
        assert store.heartbeat(ref, "worker-a", 1, 30, last=written) is True  # it sees the request
    assert beat_count["firestore"] == 3  # refused, read, written
    with roundtrips.counting() as finish_count:
        store.finish(ref, "worker-a", 1, Ending(JobStatus.CANCELLED), last=written)
    assert finish_count["firestore"] == 1  # against the heartbeat's own write
    job = store.get(job_id)
    assert job and job.status is JobStatus.CANCELLED and job.attempt == 1


def test_a_heartbeat_after_a_claim_writes_against_the_job_the_claim_left(
    stack: LocalStack, client: Client, uid: str
) -> None:
    """The claim keeps the job its write left (its decided patch applied at the commit time), not
    the job it was decided on: the heartbeats write against it without a read, and each keeps
    the job it left in turn; a write by someone else in between still makes one read and decide
    again."""
    collection = "kept-jobs"  # no trigger watches it: this test is the only writer
    store = JobStore(client.db, collection, client.settings.quotas_collection)
    job_id = f"kept-{uid}"
    ref = WorkRef(job_id)
    doc = client.db.collection(collection).document(job_id)
    doc.set({"uid": uid, "pipeline": "none", "inputs": {}, "status": "pending"})
    queued = LastWrite()
    store.admit(job_id, uid, "none", QuotaPolicy(), Patch().set("attempt", 0), queued)
    copy = queued.copy()
    assert copy is not None

    written = LastWrite()
    claim = store.claim(ref, "worker-a", 30, 5, last=written, queued=copy)
    assert claim.outcome is ClaimOutcome.CLAIMED
    kept, stored = written.job, store.get(job_id)
    assert kept is not None and stored is not None
    # What the claim wrote, beyond status, attempt and lease: the start time and the first stage.
    assert kept.started_at is not None and stored.started_at is not None  # (the emulator's own clock)
    assert kept.progress is not None and stored.progress is not None
    assert kept.progress.stage == stored.progress.stage == "starting"
    assert (kept.status, kept.attempt, kept.lease) == (stored.status, stored.attempt, stored.lease)

    with roundtrips.counting() as beat_count:
        store.heartbeat(
            ref, "worker-a", 1, 300, progress=Progress(fraction=0.5, stage="halfway"), last=written
        )
    assert beat_count["firestore"] == 1  # the write alone: no read
    kept, stored = written.job, store.get(job_id)
    assert kept is not None and stored is not None and kept.lease is not None and stored.lease is not None
    assert kept.progress is not None and kept.progress.stage == "halfway"  # the heartbeat's own write
    assert kept.lease.expires_at == stored.lease.expires_at  # the renewed lease, as stored

    doc.update({"cancelRequested": True})  # the client, meanwhile
    with roundtrips.counting() as cancel_count:
        assert store.heartbeat(ref, "worker-a", 1, 30, last=written) is True  # it sees the request
    assert cancel_count["firestore"] == 3  # refused, read, written
    assert written.job is not None and written.job.cancel_requested  # kept from the read it decided on
    with roundtrips.counting() as finish_count:
        store.finish(ref, "worker-a", 1, Ending(JobStatus.CANCELLED), last=written)
    assert finish_count["firestore"] == 1
    assert written.job is None  # the attempt's last write: nothing kept after it
    job = store.get(job_id)
    assert job and job.status is JobStatus.CANCELLED
