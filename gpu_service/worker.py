"""Claim → run → commit: one job attempt, shared by every consumer mode.

The rules that keep a job ending exactly once under at-least-once delivery:

* A job is run only by the worker that claimed it in a Firestore transaction (``JobStore.claim``);
  a duplicate delivery finds it running under a live lease, or final, and is acked untouched.
* The lease is renewed by progress writes and by a heartbeat thread; a worker that loses it stops
  at its next checkpoint and can commit nothing (``JobStore.finish`` checks owner and attempt).
* Results go under ``results/{uid}/{jobId}/{attempt}/``; the job document names exactly one
  attempt's files, and a losing or failed attempt deletes its own.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gpu_service.models import ModelPool
from infra.blobs import BlobStore
from infra.contract import ErrorInfo, JobDoc, JobMessage, JobStatus, Progress, Timings, state_for_error
from infra.jobs import DELETE, SERVER_TIME, ClaimOutcome, JobStore, LeaseLost, utcnow
from infra.settings import Settings
from pipelines.base import PipelineSpec, RunContext, RunResult
from pipelines.errors import Cancelled, InvalidInput, JobError, Preempted

log = logging.getLogger(__name__)

# Firestore documents are limited to 1 MiB; long transcripts keep their files but drop bulky lists.
MAX_OUTPUTS_BYTES = 700_000


class Ack(StrEnum):
    """What the consumer tells Pub/Sub."""

    DONE = "done"  # ack: the job ended (or was a duplicate)
    RETRY = "retry"  # nack: redeliver with backoff
    BUSY = "busy"  # nack: at capacity, the job stays queued


@dataclass
class Outcome:
    ack: Ack
    detail: str
    status: JobStatus | None = None


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Attempt:
    job_id: str
    job: JobDoc
    attempt: int
    spec: PipelineSpec
    claimed_at: datetime = field(default_factory=utcnow)
    timings: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)


class Worker:
    def __init__(self, settings: Settings, jobs: JobStore, blobs: BlobStore, models: ModelPool) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self.models = models
        self.owner = settings.worker_id or default_worker_id()
        self.draining = threading.Event()

    def drain(self) -> None:
        """Stop taking work; running jobs go back to the queue at their next checkpoint."""
        self.draining.set()

    # -- one delivery ---------------------------------------------------------------------------

    def handle(self, message: JobMessage) -> Outcome:
        spec = self.models.spec(message.pipeline)
        if spec is None:
            # Not ours to run (misrouted, or the pipeline was disabled): end it, don't loop.
            error = ErrorInfo(
                code="unknown_pipeline", message=f"pipeline {message.pipeline!r} is not served here"
            )
            self.jobs.end(message.job_id, JobStatus.FAILED, error)
            return Outcome(Ack.DONE, "unknown pipeline", JobStatus.FAILED)
        claim = self.jobs.claim(
            message.job_id, self.owner, self.settings.lease_seconds, self.settings.max_attempts
        )
        if claim.outcome is ClaimOutcome.RUNNING_ELSEWHERE:
            # Keep the message until that attempt ends: if its worker died, a redelivery after
            # the lease expires takes over (the sweeper re-publishes as a backstop).
            return Outcome(Ack.RETRY, claim.outcome.value)
        if claim.outcome is not ClaimOutcome.CLAIMED or claim.job is None:
            log.info("job %s not run: %s", message.job_id, claim.outcome)
            return Outcome(Ack.DONE, claim.outcome.value)
        run = _Attempt(message.job_id, claim.job, claim.attempt, spec)
        log.info("job %s attempt %d claimed by %s", run.job_id, run.attempt, self.owner)
        return self._run(run)

    def _run(self, run: _Attempt) -> Outcome:
        heartbeat = _Heartbeat(self, run)
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{run.job_id}-"))
        try:
            heartbeat.start()
            result = self._execute(run, workdir, heartbeat)
            commit_start = time.perf_counter()
            outputs = self._publish_outputs(run, result, workdir)
            run.timings["write"] = time.perf_counter() - commit_start
            self._commit_success(run, outputs, result)
            return Outcome(Ack.DONE, "succeeded", JobStatus.SUCCEEDED)
        except LeaseLost as exc:
            log.warning("job %s attempt %d lost its lease: %s", run.job_id, run.attempt, exc)
            self._discard_outputs(run)
            return Outcome(Ack.DONE, "lease lost")
        except Exception as exc:  # the boundary of one unit of work: record, then decide
            return self._fail(run, exc)
        finally:
            heartbeat.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _execute(self, run: _Attempt, workdir: Path, heartbeat: _Heartbeat) -> RunResult[Any]:
        try:
            inputs = run.spec.inputs.model_validate(run.job.inputs)
        except ValidationError as exc:
            raise InvalidInput(f"inputs are invalid: {exc.error_count()} errors: {exc}") from exc
        heartbeat.report(0.0, "downloading")
        t0 = time.perf_counter()
        files: dict[str, Path] = {}
        for name in run.spec.file_fields():
            uri = getattr(inputs, name, None)
            if uri is None:
                continue
            if self.blobs.stat(uri) is None:
                raise InvalidInput(f"inputs.{name}: {uri} no longer exists", code="object_not_found")
            suffix = Path(uri).suffix[:16]
            files[name] = self.blobs.download(uri, workdir / f"input-{name}{suffix}")
        run.timings["download"] = time.perf_counter() - t0

        heartbeat.report(0.0, "loading model")
        pipeline, load_seconds = self.models.get(run.spec)
        run.timings["load"] = load_seconds

        t1 = time.perf_counter()
        out_dir = workdir / "out"
        out_dir.mkdir()
        ctx = RunContext(job_id=run.job_id, workdir=out_dir, files=files, progress=heartbeat.report)
        result = pipeline.run(inputs, ctx)
        run.timings["inference"] = time.perf_counter() - t1
        heartbeat.check()  # a cancel or lease loss during the last stretch still counts
        return result

    def _publish_outputs(self, run: _Attempt, result: RunResult[Any], workdir: Path) -> dict[str, Any]:
        outputs: dict[str, Any] = result.outputs.model_dump(mode="json", by_alias=True)
        prefix = f"results/{run.job.uid}/{run.job_id}/{run.attempt}/"
        uris: dict[str, str] = {}
        for key, path in result.files.items():
            if "/" in key or key.startswith("."):
                raise ValueError(f"result file key {key!r} must be a plain file name")
            content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
            uri = self.blobs.upload(path, self.settings.media_bucket, prefix + key, content_type)
            run.uploaded.append(prefix + key)
            uris[key] = uri
        outputs["files"] = uris
        for output_field, key in result.uri_fields.items():
            outputs[output_field] = uris[key]
        return _fit_in_document(outputs)

    def _commit_success(self, run: _Attempt, outputs: dict[str, Any], result: RunResult[Any]) -> None:
        timings = self._timings(run)
        self.jobs.finish(
            run.job_id,
            self.owner,
            run.attempt,
            JobStatus.SUCCEEDED,
            {
                "outputs": outputs,
                "progress": Progress(fraction=1.0, stage="done").to_firestore() | {"updatedAt": SERVER_TIME},
                "timings": timings.to_firestore(),
                "runtime": {"worker": self.owner, **_jsonable(result.metadata)},
                "error": DELETE,
                "lastError": DELETE,
            },
        )
        log.info("job %s succeeded (attempt %d) %s", run.job_id, run.attempt, timings.to_firestore())

    def _fail(self, run: _Attempt, exc: Exception) -> Outcome:
        attempts_left = run.attempt < self.settings.max_attempts
        state = state_for_error(exc, attempts_left=attempts_left)
        error = ErrorInfo.from_exception(exc)
        if not isinstance(exc, JobError):
            log.exception("job %s attempt %d crashed", run.job_id, run.attempt)
        else:
            log.info("job %s attempt %d: %s (%s)", run.job_id, run.attempt, exc.code, exc)
        self._discard_outputs(run)
        try:
            if state is None:
                updates: dict[str, Any] = {"lastError": error.to_firestore()}
                if isinstance(exc, Preempted):
                    updates["attempt"] = run.attempt - 1  # not the job's fault: not an attempt
                self.jobs.finish(run.job_id, self.owner, run.attempt, JobStatus.QUEUED, updates)
                return Outcome(Ack.RETRY, error.message)
            if state is JobStatus.FAILED and error.retryable:
                error = error.model_copy(
                    update={"retryable": False, "message": f"{error.message} (after {run.attempt} attempts)"}
                )
            updates = {"timings": self._timings(run).to_firestore()}
            if not isinstance(exc, Cancelled):
                updates["error"] = error.to_firestore()
            self.jobs.finish(run.job_id, self.owner, run.attempt, state, updates)
        except LeaseLost as lost:
            log.warning("job %s: could not record %s: %s", run.job_id, error.code, lost)
        return Outcome(Ack.DONE, error.message, state)

    def _discard_outputs(self, run: _Attempt) -> None:
        for name in run.uploaded:
            try:
                self.blobs.delete_prefix(self.settings.media_bucket, name)
            except Exception:
                log.warning("could not delete partial output %s", name, exc_info=True)

    def _timings(self, run: _Attempt) -> Timings:
        t = {k: round(v, 3) for k, v in run.timings.items()}
        queue = _seconds_between(run.job.queued_at, run.claimed_at)
        total = _seconds_between(run.job.created_at, utcnow())
        delivery = _seconds_between(run.job.created_at, run.job.queued_at)
        return Timings(delivery=delivery, queue=queue, total=total, **t)


class _Heartbeat:
    """Throttled progress writes plus a lease-renewal thread; the cancellation checkpoint."""

    def __init__(self, worker: Worker, run: _Attempt) -> None:
        self._worker = worker
        self._run = run
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{run.job_id}", daemon=True)
        self._last_write = 0.0
        self._last_stage = ""
        self._cancelled = False
        self._lost: LeaseLost | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self._cancelled:
            raise Cancelled("cancelled at the client's request")
        if self._worker.draining.is_set():
            raise Preempted("the worker is shutting down; the job goes back to the queue")

    def report(self, fraction: float, stage: str) -> None:
        """The pipelines' progress callback: throttled write, then the checkpoint."""
        self.check()
        now = time.monotonic()
        interval = self._worker.settings.progress_min_interval_seconds
        if stage != self._last_stage or now - self._last_write >= interval:
            self._write(Progress(fraction=min(max(fraction, 0.0), 1.0), stage=stage[:64]))
        self.check()

    def _write(self, progress: Progress | None) -> None:
        with self._lock:
            if self._lost is not None:
                return
            try:
                self._cancelled = self._worker.jobs.heartbeat(
                    self._run.job_id,
                    self._worker.owner,
                    self._run.attempt,
                    self._worker.settings.lease_seconds,
                    progress,
                )
            except LeaseLost as exc:
                self._lost = exc
            except Exception:
                log.warning("heartbeat for job %s failed", self._run.job_id, exc_info=True)
                return
            self._last_write = time.monotonic()
            if progress is not None:
                self._last_stage = progress.stage

    def _loop(self) -> None:
        period = max(self._worker.settings.lease_seconds / 3, 0.2)
        while not self._stop.wait(period):
            if time.monotonic() - self._last_write >= period:
                self._write(None)


def _seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return round((b - a).total_seconds(), 3)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return result


def _fit_in_document(outputs: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulkiest list fields until the outputs fit in a Firestore document."""

    def size() -> int:
        return len(json.dumps(outputs, default=str))

    if size() <= MAX_OUTPUTS_BYTES:
        return outputs
    dropped = []
    for key, value in sorted(outputs.items(), key=lambda kv: -len(json.dumps(kv[1], default=str))):
        if key == "files" or not isinstance(value, list):
            continue
        outputs[key] = None
        dropped.append(key)
        if size() <= MAX_OUTPUTS_BYTES:
            break
    outputs["truncated"] = dropped
    return outputs
