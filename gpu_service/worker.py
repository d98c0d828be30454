"""Claim → run → commit: one job attempt, shared by every consumer mode.

The rules that keep a job ending exactly once under at-least-once delivery:

* A job is run only by the worker that claimed it in a Firestore transaction (``JobStore.claim``);
  a duplicate delivery finds it running under a live lease (nacked, so the message survives if
  that worker died), or final (acked untouched).
* The lease is renewed by progress writes and by a heartbeat thread; a worker that loses it stops
  at its next checkpoint and can commit nothing (``JobStore.finish`` checks owner and attempt).
* Results go under ``results/{uid}/{jobId}/{attempt}/``; the job document names exactly one
  attempt's files, and a losing or failed attempt deletes its own.

A multi-part pipeline (``spec.parts``) runs the same way in steps: the job's own message runs
``prepare`` and fans the parts out on their own topics; each part is claimed, leased and
committed like a job (``parts.{name}`` on the job document); the part that ends last joins the
results and ends the job, in the same transaction.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

from pydantic import ValidationError

from gpu_service.models import ModelPool
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.contract import (
    ErrorInfo,
    JobDoc,
    JobMessage,
    JobStatus,
    PartState,
    Prepared,
    Progress,
    Timings,
    state_for_error,
)
from infra.jobs import DELETE, SERVER_TIME, ClaimOutcome, JobStore, LeaseLost, utcnow
from infra.settings import Settings
from pipelines.base import MultiPartPipeline, PipelineModel, PipelineSpec, RunContext, RunResult
from pipelines.errors import Cancelled, InvalidInput, JobError, Preempted

log = logging.getLogger(__name__)

# Firestore documents are limited to 1 MiB; long transcripts keep their files but drop bulky lists.
MAX_OUTPUTS_BYTES = 700_000
# The share of a multi-part job's progress bar that its prepare step takes.
PREPARE_WEIGHT = 0.3


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
    part: str | None = None
    claimed_at: datetime = field(default_factory=utcnow)
    timings: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"job {self.job_id}" + (f" part {self.part}" if self.part else "") + f" attempt {self.attempt}"

    @property
    def results_prefix(self) -> str:
        step = f"{self.part}/" if self.part else ""
        return f"results/{self.job.uid}/{self.job_id}/{step}{self.attempt}/"


class Worker:
    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        blobs: BlobStore,
        models: ModelPool,
        bus: Bus | None = None,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.blobs = blobs
        self.models = models
        self.bus = bus
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
        if message.part is not None:
            return self._handle_part(spec, message.job_id, message.part)
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
        log.info("%s claimed by %s", run.label, self.owner)
        return self._run(run)

    def _run(self, run: _Attempt) -> Outcome:
        def beat(progress: Progress | None) -> bool:
            return self.jobs.heartbeat(
                run.job_id, self.owner, run.attempt, self.settings.lease_seconds, progress
            )

        heartbeat = _Heartbeat(self, run.label, beat)
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{run.job_id}-"))
        try:
            heartbeat.start()
            inputs = self._inputs(run)
            files = self._download_inputs(run, inputs, workdir, heartbeat)
            if run.spec.parts:
                return self._prepare(run, inputs, files, workdir, heartbeat)
            pipeline = self._pipeline(run, heartbeat)
            result = self._timed(
                run, lambda ctx: self.models.run(run.spec, pipeline, inputs, ctx), files, workdir, heartbeat
            )
            commit_start = time.perf_counter()
            outputs = self._publish_outputs(run, result)
            run.timings["write"] = time.perf_counter() - commit_start
            self._commit_success(run, outputs, result)
            return Outcome(Ack.DONE, "succeeded", JobStatus.SUCCEEDED)
        except LeaseLost as exc:
            log.warning("%s lost its lease: %s", run.label, exc)
            self._discard_outputs(run)
            return Outcome(Ack.DONE, "lease lost")
        except Exception as exc:  # the boundary of one unit of work: record, then decide
            return self._fail(run, exc)
        finally:
            heartbeat.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    # -- steps shared by jobs and parts ---------------------------------------------------------

    def _inputs(self, run: _Attempt) -> PipelineModel:
        try:
            return run.spec.inputs.model_validate(run.job.inputs)
        except ValidationError as exc:
            raise InvalidInput(f"inputs are invalid: {exc.error_count()} errors: {exc}") from exc

    def _download_inputs(
        self, run: _Attempt, inputs: PipelineModel, workdir: Path, heartbeat: _Heartbeat
    ) -> dict[str, Path]:
        heartbeat.report(0.0, "downloading")
        t0 = time.perf_counter()
        files: dict[str, Path] = {}
        for name in run.spec.file_fields():
            uri = getattr(inputs, name, None)
            if uri is None:
                continue
            suffix = Path(uri).suffix[:16]
            try:
                files[name] = self.blobs.download(uri, workdir / f"input-{name}{suffix}")
            except FileNotFoundError as exc:
                raise InvalidInput(f"inputs.{name}: {uri} no longer exists", code="object_not_found") from exc
        run.timings["download"] = time.perf_counter() - t0
        return files

    def _pipeline(self, run: _Attempt, heartbeat: _Heartbeat) -> Any:
        heartbeat.report(0.0, "loading model")
        pipeline, load_seconds = self.models.get(run.spec)
        run.timings["load"] = load_seconds
        return pipeline

    def _timed(
        self,
        run: _Attempt,
        call: Callable[[RunContext], RunResult[Any]],
        files: dict[str, Path],
        workdir: Path,
        heartbeat: _Heartbeat,
    ) -> RunResult[Any]:
        out_dir = workdir / "out"
        out_dir.mkdir()
        ctx = RunContext(job_id=run.job_id, workdir=out_dir, files=files, progress=heartbeat.report)
        t1 = time.perf_counter()
        result = call(ctx)
        run.timings["inference"] = time.perf_counter() - t1
        heartbeat.check()  # a cancel or lease loss during the last stretch still counts
        return result

    def _upload(self, run: _Attempt, files: dict[str, Path], prefix: str) -> dict[str, str]:
        uris: dict[str, str] = {}
        for key, path in files.items():
            if "/" in key or key.startswith("."):
                raise ValueError(f"result file key {key!r} must be a plain file name")
            content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
            uris[key] = self.blobs.upload(path, self.settings.media_bucket, prefix + key, content_type)
            run.uploaded.append(prefix + key)
        return uris

    def _publish_outputs(self, run: _Attempt, result: RunResult[Any]) -> dict[str, Any]:
        outputs: dict[str, Any] = result.outputs.model_dump(mode="json", by_alias=True)
        uris = self._upload(run, result.files, run.results_prefix)
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
        log.info("%s succeeded %s", run.label, timings.to_firestore())

    def _fail(self, run: _Attempt, exc: Exception) -> Outcome:
        attempts_left = run.attempt < self.settings.max_attempts
        state = state_for_error(exc, attempts_left=attempts_left)
        error = _log_error(run, exc)
        self._discard_outputs(run)
        try:
            if state is None:
                updates: dict[str, Any] = {"lastError": error.to_firestore()}
                if isinstance(exc, Preempted):
                    updates["attempt"] = run.attempt - 1  # not the job's fault: not an attempt
                self.jobs.finish(run.job_id, self.owner, run.attempt, JobStatus.QUEUED, updates)
                return Outcome(Ack.RETRY, error.message)
            error = _final_error(error, state, run.attempt)
            updates = {"timings": self._timings(run).to_firestore()}
            if not isinstance(exc, Cancelled):
                updates["error"] = error.to_firestore()
            self.jobs.finish(run.job_id, self.owner, run.attempt, state, updates)
        except LeaseLost as lost:
            log.warning("%s: could not record %s: %s", run.label, error.code, lost)
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

    # -- multi-part jobs ------------------------------------------------------------------------

    def _prepare(
        self,
        run: _Attempt,
        inputs: PipelineModel,
        files: dict[str, Path],
        workdir: Path,
        heartbeat: _Heartbeat,
    ) -> Outcome:
        """The job's own step: prepare, publish what the parts need, fan them out."""
        pipeline: MultiPartPipeline = self._pipeline(run, heartbeat)
        scaled = _scaled(heartbeat.report, 0.0, PREPARE_WEIGHT)
        result = self._timed(
            run, lambda ctx: pipeline.prepare(inputs, _with_progress(ctx, scaled)), files, workdir, heartbeat
        )
        uris = self._upload(run, result.files, run.results_prefix + "prepared/")
        prepared = Prepared(files=uris, state=result.outputs.model_dump(mode="json"))
        self.jobs.fan_out(
            run.job_id,
            self.owner,
            run.attempt,
            prepared,
            run.spec.parts,
            Progress(fraction=PREPARE_WEIGHT, stage="parts: " + ", ".join(run.spec.parts)),
            self._timings(run),
        )
        self._publish_parts(run.job_id, run.spec)
        log.info("%s prepared; parts %s published", run.label, ", ".join(run.spec.parts))
        return Outcome(Ack.DONE, "fanned out")

    def _publish_parts(self, job_id: str, spec: PipelineSpec) -> None:
        if self.bus is None:
            raise RuntimeError("a multi-part pipeline needs the worker to have a Bus")
        for part in spec.parts:
            topic = f"{self.settings.topic_for(spec.name)}-{part}"
            # A failure here leaves the part queued; the sweeper re-publishes it.
            self.bus.publish_job(JobMessage(job_id=job_id, pipeline=spec.name, part=part), topic=topic)

    def _handle_part(self, spec: PipelineSpec, job_id: str, part: str) -> Outcome:
        if part not in spec.parts:
            log.error("job %s: pipeline %s has no part %r", job_id, spec.name, part)
            return Outcome(Ack.DONE, "unknown part")
        s = self.settings
        claim = self.jobs.claim_part(job_id, part, self.owner, s.lease_seconds, s.max_attempts)
        if claim.outcome is ClaimOutcome.RUNNING_ELSEWHERE:
            return Outcome(Ack.RETRY, claim.outcome.value)
        if claim.outcome in (ClaimOutcome.CANCELLED, ClaimOutcome.ATTEMPTS_EXHAUSTED) and claim.job:
            if claim.outcome is ClaimOutcome.CANCELLED:
                end = PartState(status=JobStatus.CANCELLED, attempt=claim.attempt)
            else:
                last = (claim.job.parts or {})[part].error
                end = PartState(
                    status=JobStatus.FAILED,
                    attempt=claim.attempt,
                    error=ErrorInfo.attempts_exhausted(claim.attempt, last, part),
                )
            self._end_part(_Attempt(job_id, claim.job, claim.attempt, spec, part), end, owner=None)
            return Outcome(Ack.DONE, claim.outcome.value)
        if claim.outcome is not ClaimOutcome.CLAIMED or claim.job is None:
            return Outcome(Ack.DONE, claim.outcome.value)
        run = _Attempt(job_id, claim.job, claim.attempt, spec, part)
        log.info("%s claimed by %s", run.label, self.owner)

        def beat(progress: Progress | None) -> bool:
            return self.jobs.heartbeat_part(
                job_id, part, self.owner, run.attempt, s.lease_seconds, progress, PREPARE_WEIGHT
            )

        heartbeat = _Heartbeat(self, run.label, beat)
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{job_id}-{part}-"))
        t0 = time.perf_counter()
        try:
            heartbeat.start()
            inputs = self._inputs(run)
            prepared = run.job.prepared or Prepared()
            heartbeat.report(0.0, "downloading")
            (workdir / "prepared").mkdir()
            files = {
                key: self.blobs.download(uri, workdir / "prepared" / key)
                for key, uri in prepared.files.items()
            }
            pipeline: MultiPartPipeline = self._pipeline(run, heartbeat)
            result = self._timed(
                run,
                lambda ctx: pipeline.run_part(part, inputs, ctx, prepared.state),
                files,
                workdir,
                heartbeat,
            )
            uris = self._upload(run, result.files, run.results_prefix)
            end = PartState(
                status=JobStatus.SUCCEEDED,
                attempt=run.attempt,
                outputs=result.outputs.model_dump(mode="json"),
                files=uris,
                seconds=round(time.perf_counter() - t0, 3),
                progress=Progress(fraction=1.0, stage="done"),
            )
            final = self._end_part(run, end, owner=self.owner, pipeline=pipeline, inputs=inputs)
            return Outcome(Ack.DONE, "part succeeded", final)
        except LeaseLost as exc:
            log.warning("%s lost its lease: %s", run.label, exc)
            self._discard_outputs(run)
            return Outcome(Ack.DONE, "lease lost")
        except Exception as exc:
            return self._fail_part(run, exc)
        finally:
            heartbeat.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _fail_part(self, run: _Attempt, exc: Exception) -> Outcome:
        assert run.part is not None
        state = state_for_error(exc, attempts_left=run.attempt < self.settings.max_attempts)
        error = _log_error(run, exc).model_copy(update={"part": run.part})
        self._discard_outputs(run)
        try:
            if state is None:
                attempt = run.attempt - 1 if isinstance(exc, Preempted) else run.attempt
                back = PartState(status=JobStatus.QUEUED, attempt=attempt, error=error)
                self._end_part(run, back, owner=self.owner)
                return Outcome(Ack.RETRY, error.message)
            end = PartState(
                status=state,
                attempt=run.attempt,
                error=None if isinstance(exc, Cancelled) else _final_error(error, state, run.attempt),
            )
            final = self._end_part(run, end, owner=self.owner)
            return Outcome(Ack.DONE, error.message, final)
        except LeaseLost as lost:
            log.warning("%s: could not record %s: %s", run.label, error.code, lost)
            return Outcome(Ack.DONE, "lease lost")

    def _end_part(
        self,
        run: _Attempt,
        state: PartState,
        *,
        owner: str | None,
        pipeline: MultiPartPipeline | None = None,
        inputs: PipelineModel | None = None,
    ) -> JobStatus | None:
        """Record a part's end; the last part joins and ends the job (in one transaction)."""
        assert run.part is not None
        if pipeline is None:
            pipeline = cast(MultiPartPipeline, self.models.get(run.spec)[0])
        if inputs is None:
            inputs = self._inputs(run)
        join = _Joiner(pipeline, inputs, run.spec)
        final = self.jobs.finish_part(run.job_id, run.part, owner, run.attempt, state, join)
        if final is not None:
            log.info("job %s ended %s (joined by %s)", run.job_id, final, run.label)
        if final is JobStatus.CANCELLED:
            # A cancelled job keeps no outputs, including parts that had finished.
            self.blobs.delete_prefix(self.settings.media_bucket, f"results/{run.job.uid}/{run.job_id}/")
        return final


@dataclass
class _Joiner:
    """Ends a multi-part job from its parts: called inside the last part's commit transaction."""

    pipeline: MultiPartPipeline
    inputs: PipelineModel
    spec: PipelineSpec

    def __call__(self, job: JobDoc) -> tuple[JobStatus, dict[str, Any]]:
        parts = job.parts or {}
        if any(p.status is JobStatus.CANCELLED for p in parts.values()):
            return JobStatus.CANCELLED, {"outputs": DELETE}
        prepared = job.prepared or Prepared()
        done = {name: (p.outputs if p.status is JobStatus.SUCCEEDED else None) for name, p in parts.items()}
        outputs: dict[str, Any] = self.pipeline.join(self.inputs, prepared.state, done).model_dump(
            mode="json"
        )
        files = dict(prepared.files)
        for p in parts.values():
            files.update(p.files or {})
        outputs["files"] = files
        outputs = _fit_in_document(outputs)
        total = _seconds_between(job.created_at, utcnow())
        fields: dict[str, Any] = {
            "outputs": outputs,
            "timings.total": total,
            "lastError": DELETE,
        }
        failed = [(name, p) for name, p in parts.items() if p.status is JobStatus.FAILED]
        if failed:
            name, part = failed[0]
            error = part.error or ErrorInfo(code="failed", message="failed")
            fields["error"] = error.model_copy(
                update={"part": name, "message": f"part {name!r} failed: {error.message}", "retryable": False}
            ).to_firestore()
            return JobStatus.FAILED, fields
        fields["progress"] = Progress(fraction=1.0, stage="done").to_firestore()
        fields["error"] = DELETE
        return JobStatus.SUCCEEDED, fields


class _Heartbeat:
    """Throttled progress writes plus a lease-renewal thread; the cancellation checkpoint.

    ``beat(progress_or_None)`` renews the lease (writing progress when given) and returns whether
    the client asked to cancel; it raises ``LeaseLost`` when the lease is gone.
    """

    def __init__(self, worker: Worker, label: str, beat: Callable[[Progress | None], bool]) -> None:
        self._worker = worker
        self._label = label
        self._beat = beat
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{label}", daemon=True)
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
                self._cancelled = self._beat(progress)
            except LeaseLost as exc:
                self._lost = exc
            except Exception:
                log.warning("heartbeat for %s failed", self._label, exc_info=True)
                return
            self._last_write = time.monotonic()
            if progress is not None:
                self._last_stage = progress.stage

    def _loop(self) -> None:
        period = max(self._worker.settings.lease_seconds / 3, 0.2)
        while not self._stop.wait(period):
            if time.monotonic() - self._last_write >= period:
                self._write(None)


def _log_error(run: _Attempt, exc: Exception) -> ErrorInfo:
    if isinstance(exc, JobError):
        log.info("%s: %s (%s)", run.label, exc.code, exc)
    else:
        log.exception("%s crashed", run.label)
    return ErrorInfo.from_exception(exc)


def _final_error(error: ErrorInfo, state: JobStatus, attempt: int) -> ErrorInfo:
    if state is JobStatus.FAILED and error.retryable:
        return error.model_copy(
            update={"retryable": False, "message": f"{error.message} (after {attempt} attempts)"}
        )
    return error


def _scaled(report: Callable[[float, str], None], start: float, end: float) -> Callable[[float, str], None]:
    def scaled(fraction: float, stage: str) -> None:
        report(start + (end - start) * min(max(fraction, 0.0), 1.0), stage)

    return scaled


def _with_progress(ctx: RunContext, progress: Callable[[float, str], None]) -> RunContext:
    return RunContext(job_id=ctx.job_id, workdir=ctx.workdir, files=ctx.files, progress=progress)


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
