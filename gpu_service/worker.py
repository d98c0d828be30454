"""Claim → execute → commit: one attempt of a unit of work, shared by every consumer mode.

The rules that keep a job ending exactly once under at-least-once delivery live in
:mod:`core.lifecycle`; this module follows them:

* a unit (a job, or one part of a multi-part job) runs only after this worker claimed it; a
  duplicate delivery finds it final (acked), running under a live lease (nacked, so the message
  survives if that worker died), or not runnable (acked untouched);
* the lease is renewed by progress writes and a heartbeat thread; a worker that loses it stops at
  its next checkpoint and can commit nothing;
* results go under ``results/{uid}/{jobId}/[{part}/]{attempt}/``; the job document names exactly
  one attempt's files, and a losing or failed attempt deletes its own.

Steps: :meth:`Worker.handle` (one delivery: claim, or say why not) → :meth:`Worker._execute`
(download the inputs, then one of three steps: a job's single run, a multi-part job's prepare, or
one part, see :mod:`gpu_service.multipart`) → :meth:`Worker.finish` (commit) or
:meth:`Worker._fail` (retry or end with the error).
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.contract import JobMessage, JobStatus, Progress, state_for_error
from core.errors import Cancelled, InvalidInput, Preempted
from core.lifecycle import ClaimOutcome, Ending, LeaseLost
from core.routes import route
from core.spec import (
    Catalog,
    Pipeline,
    PipelineModel,
    RunContext,
    RunResult,
    check_input_location,
    file_uris,
)
from gpu_service import metering, multipart
from gpu_service.attempt import Ack, Attempt, Outcome, final_error, fit_in_document, jsonable, log_error
from gpu_service.heartbeat import Heartbeat
from gpu_service.multipart import Joiner
from gpu_service.pool import ModelPool
from infra import roundtrips
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.jobs import JobStore
from infra.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["Ack", "Outcome", "Worker", "default_worker_id"]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        jobs: JobStore,
        blobs: BlobStore,
        pool: ModelPool,
        bus: Bus | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.jobs = jobs
        self.blobs = blobs
        self.pool = pool
        self.bus = bus
        self.owner = settings.worker_id or default_worker_id()
        self.draining = threading.Event()

    def drain(self) -> None:
        """Stop taking work; running attempts go back to the queue at their next checkpoint."""
        self.draining.set()

    # -- one delivery ---------------------------------------------------------------------------

    def handle(self, message: JobMessage) -> Outcome:
        """One delivery (or redriven unit): claim, execute, commit. Logs its round trips."""
        with roundtrips.counting() as counter:
            outcome = self._handle(message, counter)
        log.info("%s round trips: %s (%s)", message.ref.label, roundtrips.summary(counter), outcome.detail)
        return outcome

    def _handle(self, message: JobMessage, counter: Counter[str]) -> Outcome:
        spec = self.catalog.get(message.pipeline)
        if spec is None:
            # Not ours to run (misrouted, or the pipeline is disabled here): leave the job alone;
            # the message is refused until Pub/Sub dead-letters it, which ends the job clearly.
            log.error("%s: pipeline %r is not served here", message.ref.label, message.pipeline)
            return Outcome(Ack.RETRY, f"pipeline {message.pipeline!r} is not served here")
        ref = message.ref
        if ref.part is not None and ref.lane not in spec.parts:
            log.error("%s: pipeline %s has no part %r", ref.label, spec.name, ref.part)
            return Outcome(Ack.DONE, "unknown part")
        s = self.settings
        join = Joiner(spec) if spec.parts else None
        claim = self.jobs.claim(ref, self.owner, s.lease_seconds, s.max_attempts, join, spec.name)
        if claim.outcome is ClaimOutcome.RUNNING_ELSEWHERE:
            # Keep the message until that attempt ends: if its worker died, a redelivery after
            # the lease expires takes over (the sweeper re-publishes as a backstop).
            return Outcome(Ack.RETRY, claim.outcome.value)
        if claim.ended is JobStatus.CANCELLED and ref.part is not None and claim.job is not None:
            self._discard_job_results(claim.job.uid, ref.job_id)
        if claim.outcome is ClaimOutcome.MISROUTED:
            log.error("%s: the job is not a %s job; not run", ref.label, spec.name)
        if claim.outcome is not ClaimOutcome.CLAIMED or claim.job is None:
            log.info("%s not run: %s", ref.label, claim.outcome)
            return Outcome(Ack.DONE, claim.outcome.value, claim.ended)
        attempt = Attempt(ref, claim.job, claim.attempt, spec, roundtrips=counter)
        log.info("%s claimed by %s", attempt.label, self.owner)
        return self._execute(attempt)

    def _execute(self, attempt: Attempt) -> Outcome:
        def beat(progress: Progress | None) -> bool:
            with roundtrips.counting(attempt.roundtrips):  # also from the heartbeat's own thread
                return self.jobs.heartbeat(
                    attempt.ref, self.owner, attempt.number, self.settings.lease_seconds, progress
                )

        heartbeat = Heartbeat(
            attempt.label,
            beat,
            lease_seconds=self.settings.lease_seconds,
            min_interval=self.settings.progress_min_interval_seconds,
            draining=self.draining,
            max_run_seconds=self.settings.max_run_seconds_for(attempt.spec.name),
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{attempt.ref.job_id}-"))
        try:
            heartbeat.start()
            inputs = self._inputs(attempt)
            if attempt.ref.part is not None:
                final = multipart.run_part(self, attempt, inputs, workdir, heartbeat)
                return Outcome(Ack.DONE, "part succeeded", final)
            files = self._download_inputs(attempt, inputs, workdir, heartbeat)
            if attempt.spec.parts:
                multipart.prepare(self, attempt, inputs, files, workdir, heartbeat)
                return Outcome(Ack.DONE, "fanned out")
            return self._single(attempt, inputs, files, workdir, heartbeat)
        except LeaseLost as exc:
            log.warning("%s lost its lease: %s", attempt.label, exc)
            self._discard_outputs(attempt)
            return Outcome(Ack.DONE, "lease lost")
        except Exception as exc:  # the boundary of one unit of work: record, then decide
            return self._fail(attempt, exc)
        finally:
            heartbeat.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def _single(
        self, attempt: Attempt, inputs: PipelineModel, files: dict[str, Path], workdir: Path, beat: Heartbeat
    ) -> Outcome:
        pipeline = self.load(attempt, beat)
        result = self.timed(
            attempt, lambda ctx: self.pool.infer(attempt.spec, pipeline, inputs, ctx), files, workdir, beat
        )
        commit_start = time.perf_counter()
        outputs: dict[str, Any] = result.outputs.model_dump(mode="json", by_alias=True)
        uris = self.upload(attempt, result.files, attempt.results_prefix)
        outputs["files"] = uris
        for output_field, key in result.uri_fields.items():
            outputs[output_field] = uris[key]
        attempt.timings["write"] = time.perf_counter() - commit_start
        timings = attempt.job_timings()
        ending = Ending(
            JobStatus.SUCCEEDED,
            outputs=fit_in_document(outputs),
            progress=Progress(fraction=1.0, stage="done"),
            timings=timings,
            runtime={"worker": self.owner, **jsonable(result.metadata)},
        )
        self.finish(attempt, ending)
        log.info("%s succeeded %s", attempt.label, timings.to_firestore())
        return Outcome(Ack.DONE, "succeeded", JobStatus.SUCCEEDED)

    # -- steps the single run, the prepare step and the parts share -------------------------------

    def load(self, attempt: Attempt, beat: Heartbeat) -> Pipeline:
        beat.report(0.0, "loading model")
        pipeline, load_seconds = self.pool.get(attempt.spec)
        attempt.timings["load"] = load_seconds
        return pipeline

    def timed(
        self,
        attempt: Attempt,
        call: Callable[[RunContext], RunResult[Any]],
        files: dict[str, Path],
        workdir: Path,
        beat: Heartbeat,
    ) -> RunResult[Any]:
        out_dir = workdir / "out"
        out_dir.mkdir()
        ctx = RunContext(
            job_id=attempt.ref.job_id, workdir=out_dir, files=files, progress=beat.report, meter=attempt.meter
        )
        with self.pool.model_turn(attempt.spec, beat.report) as waited:
            t1 = time.perf_counter()
            result = call(ctx)
            attempt.timings["inference"] = time.perf_counter() - t1
        attempt.metadata = result.metadata
        if waited is not None:
            attempt.timings["model_wait"] = waited
        beat.check()  # a cancel or lease loss during the last stretch still counts
        return result

    def upload(self, attempt: Attempt, files: dict[str, Path], prefix: str) -> dict[str, str]:
        uris: dict[str, str] = {}
        for key, path in files.items():
            if "/" in key or key.startswith("."):
                raise ValueError(f"result file key {key!r} must be a plain file name")
            content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
            uris[key] = self.blobs.upload(
                path, self.settings.media_bucket, prefix + key, content_type, metering.expiry(attempt.job)
            )
            attempt.uploaded.append(prefix + key)
        return uris

    def finish(self, attempt: Attempt, ending: Ending) -> JobStatus | None:
        """Commit the attempt's end; returns the job's final state if this ended the job."""
        join = Joiner(attempt.spec) if attempt.spec.parts else None
        ending = metering.with_usage(attempt, ending)
        final = self.jobs.finish(attempt.ref, self.owner, attempt.number, ending, join)
        metering.report(attempt, ending, final)
        if final is not None and attempt.ref.part is not None:
            log.info("job %s ended %s (joined by %s)", attempt.ref.job_id, final, attempt.label)
            if final is JobStatus.CANCELLED:
                self._discard_job_results(attempt.job.uid, attempt.ref.job_id)
        return final

    def publish_part(self, job_id: str, pipeline: str, key: str, uid: str) -> None:
        if self.bus is None:
            raise RuntimeError("a multi-part pipeline needs the worker to have a Bus")
        message, topic = multipart.part_message(job_id, pipeline, key, uid)
        self.bus.publish_job(message, topic=topic)

    def _inputs(self, attempt: Attempt) -> PipelineModel:
        try:
            return attempt.spec.inputs.model_validate(attempt.job.inputs)
        except ValidationError as exc:
            raise InvalidInput(
                f"inputs are invalid: {exc.error_count()} errors", code="invalid_inputs"
            ) from exc

    def _download_inputs(
        self, attempt: Attempt, inputs: PipelineModel, workdir: Path, beat: Heartbeat
    ) -> dict[str, Path]:
        """Download each input object exactly as validation saw it, after checking again that it is
        the owner's, in this deployment's bucket, and within the limits: the worker trusts nothing
        it is pushed, and nothing that changed since validation."""
        beat.report(0.0, "downloading")
        t0 = time.perf_counter()
        files: dict[str, Path] = {}
        pins = attempt.job.input_files or {}
        for name, uri, rule in file_uris(inputs):
            check_input_location(name, uri, attempt.job.uid, self.settings.media_bucket)
            pin = pins.get(name)
            if pin is None or pin.uri != uri:
                raise InvalidInput(
                    f"inputs.{name} was not validated before the job was queued", code="not_validated"
                )
            # Keys of dict entries are client-chosen: only safe characters reach the file name.
            dest = workdir / f"input-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}{Path(uri).suffix[:16]}"
            try:
                files[name] = self.blobs.download(uri, dest, generation=pin.generation)
            except FileNotFoundError as exc:
                raise InvalidInput(
                    f"inputs.{name} was replaced or deleted after the job was validated; "
                    "upload it again and create a new job",
                    code="input_changed",
                ) from exc
            size = files[name].stat().st_size
            limit = min(rule.max_bytes, self.settings.max_input_bytes)
            if size != pin.size or size > limit:
                raise InvalidInput(
                    f"inputs.{name} is {size} bytes, not the {pin.size} that were validated (limit {limit})",
                    code="input_changed",
                )
        attempt.timings["download"] = time.perf_counter() - t0
        return files

    def _fail(self, attempt: Attempt, exc: Exception) -> Outcome:
        state = state_for_error(exc, attempts_left=attempt.number < self.settings.max_attempts)
        error = log_error(attempt, exc)
        self._discard_outputs(attempt)
        try:
            if state is None:
                self.finish(attempt, Ending(JobStatus.QUEUED, error=error, refund=isinstance(exc, Preempted)))
                return Outcome(Ack.RETRY, error.message)
            ending = Ending(
                state,
                error=None if isinstance(exc, Cancelled) else final_error(error, state, attempt.number),
                timings=attempt.job_timings() if attempt.ref.part is None else None,
            )
            final = self.finish(attempt, ending)
        except LeaseLost as lost:
            log.warning("%s: could not record %s: %s", attempt.label, error.code, lost)
            return Outcome(Ack.DONE, "lease lost")
        return Outcome(Ack.DONE, error.message, final if attempt.ref.part is not None else state)

    def _discard_outputs(self, attempt: Attempt) -> None:
        for name in attempt.uploaded:
            try:
                self.blobs.delete_prefix(self.settings.media_bucket, name)
            except Exception:
                log.warning("could not delete partial output %s", name, exc_info=True)

    def _discard_job_results(self, uid: str, job_id: str) -> None:
        """A cancelled job keeps no outputs, including parts that had finished."""
        try:
            self.blobs.delete_prefix(self.settings.media_bucket, f"results/{uid}/{job_id}/")
        except Exception:
            log.warning("could not delete the results of cancelled job %s", job_id, exc_info=True)


def subscription_path(project: str, pipeline: str, lane: str | None) -> str:
    return f"projects/{project}/subscriptions/{route(pipeline, lane).subscription}"
