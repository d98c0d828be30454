"""Claim → run → commit: one attempt of a unit of work, shared by every consumer mode.

The rules that keep a job ending exactly once under at-least-once delivery live in
:mod:`core.lifecycle`; this module follows them:

* a unit (a job, or one part of a multi-part job) runs only after this worker claimed it; a
  duplicate delivery finds it final (acked), running under a live lease (nacked, so the message
  survives if that worker died), or not runnable (acked untouched);
* the lease is renewed by progress writes and a heartbeat thread; a worker that loses it stops at
  its next checkpoint and can commit nothing;
* results go under ``results/{uid}/{jobId}/[{part}/]{attempt}/``; the job document names exactly
  one attempt's files, and a losing or failed attempt deletes its own.

The walk of one delivery, top to bottom in this file: :meth:`Worker.process` (claim, or say why
not) → :meth:`Worker._run` (check and download the inputs, then one of three steps) →
:meth:`Worker._run_job` (a job in one run), :meth:`Worker._prepare` (a multi-part job's own step:
prepare and fan the parts out, each on its own route) or :meth:`Worker._run_part` (one part; the
part that ends last joins the job in its own commit, through :func:`gpu_service.endings.end_from_parts`)
→ :meth:`Worker._finish` (commit) or :meth:`Worker._fail` (retry or end with the error).

Names: an *attempt* is always a number (the job document's ``attempt``); what this worker holds
while it runs one is the :class:`ClaimedWork`; what it tells the consumer is what happened, a
:data:`core.lifecycle.Delivered`: the :class:`~core.lifecycle.Claim` when it did not run the unit,
or the :class:`~core.lifecycle.Ending` it committed (:func:`core.lifecycle.redeliver` says which
of those Pub/Sub delivers again).
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from core.contract import (
    ErrorInfo,
    JobDoc,
    JobMessage,
    JobStatus,
    Prepared,
    Progress,
    Timings,
    state_for_error,
)
from core.errors import Cancelled, InvalidInput, JobError, Preempted
from core.lifecycle import (
    PREPARE_WEIGHT,
    Claim,
    ClaimOutcome,
    Delivered,
    Ending,
    Joiner,
    LeaseLost,
    described,
)
from core.routes import route
from core.spec import (
    Catalog,
    MultiPartPipeline,
    Pipeline,
    PipelineModel,
    PipelineSpec,
    ProgressFn,
    RunContext,
    RunResult,
    check_input_location,
    file_uris,
)
from core.usage import day_of, log_line, log_record
from core.work import WorkRef
from gpu_service.claimed import Claimed
from gpu_service.endings import (
    end_from_parts,
    expiry,
    final_error,
    fit_in_document,
    jsonable,
    seconds_between,
    with_usage,
)
from gpu_service.heartbeat import Heartbeat, PartialBuffer
from gpu_service.pool import ModelPool
from infra import roundtrips
from infra.blobs import BlobStore
from infra.bus import Bus
from infra.jobs import JobStore, LastWrite
from infra.settings import Settings
from pipelines.media import local_suffix

log = logging.getLogger(__name__)

__all__ = ["ClaimedWork", "Worker", "default_worker_id"]


@dataclass
class ClaimedWork:
    """The unit this worker claimed, for one attempt: the job as claimed, and what it has done."""

    ref: WorkRef
    job: JobDoc
    attempt: int
    spec: PipelineSpec
    claimed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    timings: dict[str, float] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)
    #: Firestore, Storage and Pub/Sub calls made for this attempt (infra.roundtrips)
    roundtrips: Counter[str] = field(default_factory=Counter)
    #: what the model call measured for this unit (a batched call: its share; core/usage.py)
    meter: dict[str, float] = field(default_factory=dict)
    #: the pipeline's own run metadata (model and adapter versions), once it ran
    metadata: dict[str, Any] = field(default_factory=dict)
    #: output made so far (``job.partial``), written with the progress (set when the run starts)
    partial: PartialBuffer = field(init=False, repr=False)
    #: how logs name it, resolved once when claimed
    label: str = field(init=False)
    #: the attempt's own last write to the job: its heartbeats and finish write against it unread
    written: LastWrite = field(default_factory=LastWrite)

    def __post_init__(self) -> None:
        self.label = f"{self.ref.label} attempt {self.attempt}"

    @property
    def results_prefix(self) -> str:
        step = f"{self.ref.part}/" if self.ref.part else ""
        return f"results/{self.job.uid}/{self.ref.job_id}/{step}{self.attempt}/"

    def job_timings(self) -> Timings:
        t = {k: round(v, 3) for k, v in self.timings.items()}
        return Timings(
            delivery=seconds_between(self.job.created_at, self.job.queued_at),
            queue=seconds_between(self.job.queued_at, self.claimed_at),
            total=seconds_between(self.job.created_at, datetime.now(UTC)),
            **t,
        )


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def part_message(job_id: str, job: JobDoc, key: str) -> tuple[JobMessage, str]:
    """The message for part ``key`` of a job, and the topic it goes to."""
    pipeline = job.pipeline
    message = JobMessage.of(job_id, job, key)
    return message, route(pipeline, message.ref.lane).topic


def _joiner(spec: PipelineSpec) -> Joiner | None:
    """How a multi-part job ends from its parts, for the claim and the commit of each unit."""
    return partial(end_from_parts, spec) if spec.parts else None


def _scaled(report: ProgressFn, start: float, end: float) -> ProgressFn:
    def scaled(fraction: float, stage: str) -> None:
        report(start + (end - start) * min(max(fraction, 0.0), 1.0), stage)

    return scaled


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
        #: the jobs this process claimed: their redeliveries skip calls that cannot succeed
        self.claimed = Claimed()
        # settings of each pipeline, resolved once rather than on every push
        self._max_run_seconds = {name: settings.max_run_seconds_for(name) for name in catalog.names}

    def drain(self) -> None:
        """Stop taking work; running attempts go back to the queue at their next checkpoint."""
        self.draining.set()

    # -- one delivery ---------------------------------------------------------------------------

    def process(self, message: JobMessage) -> Delivered:
        """One delivery (or redriven unit): claim, run, commit. Logs its round trips."""
        ref = message.ref
        label = ref.label
        with roundtrips.counting() as counter:
            result = self._claim_and_run(message, ref, counter)
        log.info("%s round trips: %s (%s)", label, roundtrips.summary(counter), described(result))
        return result

    def _claim_and_run(self, message: JobMessage, ref: WorkRef, counter: Counter[str]) -> Delivered:
        spec = self.catalog.get(message.pipeline)
        if spec is None:
            # Not ours to run (misrouted, or the pipeline is disabled here): leave the job alone;
            # the message is refused until Pub/Sub dead-letters it, which ends the job clearly.
            log.error("%s: pipeline %r is not served here", ref.label, message.pipeline)
            return Claim(ClaimOutcome.NOT_SERVED)
        if ref.part is not None and ref.lane not in spec.parts:
            log.error("%s: pipeline %s has no part %r", ref.label, spec.name, ref.part)
            return Claim(ClaimOutcome.UNKNOWN_PART)
        s = self.settings
        written = LastWrite()
        queued = message.queued
        if ref.part is None:
            duplicate, queued = self.claimed.delivery(ref.job_id, queued)
            if duplicate:  # this process ended the job this very message queued
                log.info("%s not run: %s (ended here)", ref.label, ClaimOutcome.FINAL)
                return Claim(ClaimOutcome.FINAL)
        claim = self.jobs.claim(
            ref,
            self.owner,
            s.lease_seconds,
            s.max_attempts,
            _joiner(spec),
            spec.name,
            last=written,
            queued=queued,
        )
        if claim.outcome is ClaimOutcome.RUNNING_ELSEWHERE:
            # Keep the message until that attempt ends: if its worker died, a redelivery after
            # the lease expires takes over (the sweeper re-publishes as a backstop).
            return claim
        if claim.ended is JobStatus.CANCELLED and ref.part is not None and claim.job is not None:
            self._discard_job_results(claim.job.uid, ref.job_id)
        if claim.outcome is ClaimOutcome.MISROUTED:
            log.error("%s: the job is not a %s job; not run", ref.label, spec.name)
        if claim.outcome is not ClaimOutcome.CLAIMED or claim.job is None:
            log.info("%s not run: %s", ref.label, claim.outcome)
            return claim
        if ref.part is None:
            self.claimed.claimed(ref.job_id, written.decided_on)
        work = ClaimedWork(ref, claim.job, claim.attempt, spec, roundtrips=counter, written=written)
        log.info("%s claimed by %s", work.label, self.owner)
        return self._run(work)

    def _run(self, work: ClaimedWork) -> Delivered:
        def beat(progress: Progress | None) -> bool:
            with roundtrips.counting(work.roundtrips):  # also from the heartbeat's own thread
                roundtrips.note("beats")  # lease renewals and progress: they grow with the run
                return self.jobs.heartbeat(
                    work.ref,
                    self.owner,
                    work.attempt,
                    self.settings.lease_seconds,
                    progress,
                    work.partial.take(),
                    work.written,
                )

        work.partial = PartialBuffer(work.attempt, self.settings.partial_max_items)

        heartbeat = Heartbeat(
            work.label,
            beat,
            lease_seconds=self.settings.lease_seconds,
            min_interval=self.settings.progress_min_interval_seconds,
            draining=self.draining,
            max_run_seconds=self._max_run_seconds.get(work.spec.name)
            or self.settings.max_run_seconds_for(work.spec.name),
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"job-{work.ref.job_id}-"))
        try:
            heartbeat.start()
            inputs = self._inputs(work)
            if work.ref.part is not None:
                return self._run_part(work, inputs, workdir, heartbeat)
            files = self._download_inputs(work, inputs, workdir, heartbeat)
            if work.spec.parts:
                return self._prepare(work, inputs, files, workdir, heartbeat)
            return self._run_job(work, inputs, files, workdir, heartbeat)
        except LeaseLost as exc:
            log.warning("%s lost its lease: %s", work.label, exc)
            self._discard_outputs(work)
            return Claim(ClaimOutcome.LEASE_LOST, work.job, work.attempt)
        except Exception as exc:  # the boundary of one unit of work: record, then decide
            return self._fail(work, exc)
        finally:
            heartbeat.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    # -- the three steps ------------------------------------------------------------------------

    def _run_job(
        self, work: ClaimedWork, inputs: PipelineModel, files: dict[str, Path], workdir: Path, beat: Heartbeat
    ) -> Delivered:
        """A job in one run: infer, upload its files, end it."""
        pipeline = self._load(work, beat)
        ctx = self._context(work, files, workdir, beat.report, self._publisher(work, beat))
        result = self._on_model(work, beat, lambda: self.pool.infer(work.spec, pipeline, inputs, ctx))
        beat.report(1.0, "uploading")
        commit_start = time.perf_counter()
        outputs: dict[str, Any] = result.outputs.model_dump(mode="json", by_alias=True)
        uris = self._upload(work, result.files, work.results_prefix)
        outputs["files"] = uris
        for output_field, key in result.uri_fields.items():
            outputs[output_field] = uris[key]
        work.timings["write"] = time.perf_counter() - commit_start
        timings = work.job_timings()
        ending = Ending(
            JobStatus.SUCCEEDED,
            outputs=fit_in_document(outputs),
            progress=Progress(fraction=1.0, stage="done"),
            timings=timings,
            runtime={"worker": self.owner, **jsonable(result.metadata)},
        )
        ending = self._finish(work, ending)
        log.info("%s succeeded %s", work.label, timings.to_firestore())
        return ending

    def _prepare(
        self, work: ClaimedWork, inputs: PipelineModel, files: dict[str, Path], workdir: Path, beat: Heartbeat
    ) -> Delivered:
        """A multi-part job's own step: prepare, publish what the parts need, fan them out."""
        if self.bus is None:
            raise RuntimeError("a multi-part pipeline needs the worker to have a Bus")
        pipeline: MultiPartPipeline = self._load(work, beat)  # type: ignore[assignment]
        ctx = self._context(work, files, workdir, _scaled(beat.report, 0.0, PREPARE_WEIGHT))
        result = self._on_model(work, beat, lambda: pipeline.prepare(inputs, ctx))
        keys = work.spec.part_keys(result.shards)
        uris = self._upload(work, result.files, work.results_prefix + "prepared/")
        prepared = Prepared(files=uris, state=result.outputs.model_dump(mode="json"))
        self.jobs.fan_out(work.ref, self.owner, work.attempt, prepared, keys, work.job_timings())
        for key in keys:
            # A failure here leaves the part queued; the sweeper re-publishes it.
            message, topic = part_message(work.ref.job_id, work.job, key)
            self.bus.publish_job(message, topic=topic)
        log.info("%s prepared; parts %s published", work.label, ", ".join(keys))
        return Claim(ClaimOutcome.FANNED_OUT, work.job, work.attempt)  # the parts run on

    def _run_part(
        self, work: ClaimedWork, inputs: PipelineModel, workdir: Path, beat: Heartbeat
    ) -> Delivered:
        """One part: download what prepare left, run it, publish its files, end it (maybe the job)."""
        assert work.ref.part is not None
        part = work.ref.part
        started = time.perf_counter()
        prepared = work.job.prepared or Prepared()
        beat.report(0.0, "downloading")
        (workdir / "prepared").mkdir()
        files = {
            key: self.blobs.download(uri, workdir / "prepared" / key) for key, uri in prepared.files.items()
        }
        pipeline: MultiPartPipeline = self._load(work, beat)  # type: ignore[assignment]
        ctx = self._context(work, files, workdir, beat.report)
        result = self._on_model(work, beat, lambda: pipeline.run_part(part, inputs, ctx, prepared.state))
        uris = self._upload(work, result.files, work.results_prefix)
        ending = Ending(
            JobStatus.SUCCEEDED,
            outputs=result.outputs.model_dump(mode="json"),
            files=uris,
            seconds=round(time.perf_counter() - started, 3),
            progress=Progress(fraction=1.0, stage="done"),
        )
        return self._finish(work, ending)

    # -- what the three steps share -------------------------------------------------------------

    def _load(self, work: ClaimedWork, beat: Heartbeat) -> Pipeline:
        beat.report(0.0, "loading model")
        pipeline, load_seconds = self.pool.get(work.spec)
        work.timings["load"] = load_seconds
        return pipeline

    @staticmethod
    def _context(
        work: ClaimedWork,
        files: dict[str, Path],
        workdir: Path,
        report: ProgressFn,
        publish: Callable[[str, Path, dict[str, Any]], str | None] | None = None,
    ) -> RunContext:
        out_dir = workdir / "out"
        out_dir.mkdir()
        ctx = RunContext(
            job_id=work.ref.job_id,
            workdir=out_dir,
            files=files,
            progress=report,
            meter=work.meter,
            partial=work.partial.add,
        )
        if publish is not None:
            ctx.publish = publish
        return ctx

    def _publisher(self, work: ClaimedWork, beat: Heartbeat) -> Callable[[str, Path, dict[str, Any]], str]:
        """``ctx.publish`` for a whole job: upload under the attempt's prefix (removed with the
        attempt's other outputs if it fails), then hand the item over; the first one at once."""
        published = 0

        def publish(key: str, path: Path, item: dict[str, Any]) -> str:
            nonlocal published
            parts = key.split("/")
            if any(not p or p.startswith(".") for p in parts):
                raise ValueError(f"published file key {key!r} must be a relative path of plain names")
            name = work.results_prefix + key
            content_type = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
            uri = self.blobs.upload(path, self.settings.media_bucket, name, content_type, expiry(work.job))
            work.uploaded.append(name)
            work.partial.add({**item, "uri": uri})
            published += 1
            if published == 1:
                beat.flush()
            return uri

        return publish

    def _on_model(
        self, work: ClaimedWork, beat: Heartbeat, call: Callable[[], RunResult[Any]]
    ) -> RunResult[Any]:
        """Run ``call`` in a turn on the model, timing the wait and the inference."""
        with self.pool.model_turn(work.spec, beat.report) as waited:
            t1 = time.perf_counter()
            result = call()
            work.timings["inference"] = time.perf_counter() - t1
        work.metadata = result.metadata
        if waited is not None:
            work.timings["model_wait"] = waited
        beat.check()  # a cancel or lease loss during the last stretch still counts
        return result

    def _upload(self, work: ClaimedWork, files: dict[str, Path], prefix: str) -> dict[str, str]:
        uris: dict[str, str] = {}
        expires = expiry(work.job)
        for key, path in files.items():
            if "/" in key or key.startswith("."):
                raise ValueError(f"result file key {key!r} must be a plain file name")
            content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
            uris[key] = self.blobs.upload(
                path, self.settings.media_bucket, prefix + key, content_type, expires
            )
            work.uploaded.append(prefix + key)
        return uris

    def _finish(self, work: ClaimedWork, ending: Ending) -> Ending:
        """Commit the attempt's end (with its usage); returns the ending as committed."""
        ending = with_usage(work, ending)
        final, ended = self.jobs.finish_unit(
            work.ref, self.owner, work.attempt, ending, _joiner(work.spec), last=work.written
        )
        if final is not None and work.ref.part is None:
            self.claimed.ended(work.ref.job_id)
        self._report_usage(work, ended or ending, final)
        if final is not None and work.ref.part is not None:
            log.info("job %s ended %s (joined by %s)", work.ref.job_id, final, work.label)
            if final is JobStatus.CANCELLED:
                self._discard_job_results(work.job.uid, work.ref.job_id)
        return ending

    @staticmethod
    def _report_usage(work: ClaimedWork, ending: Ending, final: JobStatus | None) -> None:
        """The usage line of a job that this commit ended (stdout: Cloud Logging's JSON payload),
        printed only once the commit held, so a job whose ending lost a race is never counted
        twice. ``ending`` is the job's: for a part that ended its job, the join's."""
        if final is None or ending.usage is None:
            return
        now = datetime.now(UTC)
        job = work.job.model_copy(update={"attempt": work.attempt})
        code = ending.error.code if ending.error is not None else None
        record = log_record(work.ref.job_id, job, final, ending.usage, day=day_of(now), error_code=code)
        sys.stdout.write(log_line(record, now) + "\n")
        sys.stdout.flush()

    def _inputs(self, work: ClaimedWork) -> PipelineModel:
        try:
            return work.spec.inputs.model_validate(work.job.inputs)
        except ValidationError as exc:
            raise InvalidInput(
                f"inputs are invalid: {exc.error_count()} errors", code="invalid_inputs"
            ) from exc

    def _download_inputs(
        self, work: ClaimedWork, inputs: PipelineModel, workdir: Path, beat: Heartbeat
    ) -> dict[str, Path]:
        """Download each input object exactly as validation saw it, after checking again that it is
        the owner's, in this deployment's bucket, and within the limits: the worker trusts nothing
        it is pushed, and nothing that changed since validation."""
        beat.report(0.0, "downloading")
        t0 = time.perf_counter()
        files: dict[str, Path] = {}
        pins = work.job.input_files or {}
        config: BaseModel | None = None
        for name, uri, rule in file_uris(inputs):
            check_input_location(name, uri, work.job.uid, self.settings.media_bucket)
            pin = pins.get(name)
            if pin is None or pin.uri != uri:
                raise InvalidInput(
                    f"inputs.{name} was not validated before the job was queued", code="not_validated"
                )
            # Keys of dict entries are client-chosen: only safe characters reach the file name, and
            # its suffix comes from the validated content type, never from the upload's own name
            # (``talk.m3u8`` sent as audio/mpeg must not be read as a playlist).
            dest = workdir / f"input-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}{local_suffix(pin.content_type)}"
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
            if rule.probe:
                # The cost caps again, on the whole file, before the pipeline decodes any of it.
                # Validation measured this very generation whole (a small object read in one
                # range): those figures are this file's, so they are checked without a second probe.
                if config is None:
                    config = self.catalog.config(work.spec)
                if pin.measured is not None:
                    measured = pin.measured
                else:
                    measured = rule.run_probe(files[name], complete=True, size=size)
                work.spec.check_file_costs(name, measured, config)
        work.timings["download"] = time.perf_counter() - t0
        return files

    def _fail(self, work: ClaimedWork, exc: Exception) -> Delivered:
        state = state_for_error(exc, attempts_left=work.attempt < self.settings.max_attempts)
        error = self._log_error(work, exc)
        self._discard_outputs(work)
        try:
            if state is None:
                return self._finish(
                    work, Ending(JobStatus.QUEUED, error=error, refund=isinstance(exc, Preempted))
                )
            ending = Ending(
                state,
                error=None if isinstance(exc, Cancelled) else final_error(error, state, work.attempt),
                timings=work.job_timings() if work.ref.part is None else None,
            )
            return self._finish(work, ending)
        except LeaseLost as lost:
            log.warning("%s: could not record %s: %s", work.label, error.code, lost)
            return Claim(ClaimOutcome.LEASE_LOST, work.job, work.attempt)

    @staticmethod
    def _log_error(work: ClaimedWork, exc: Exception) -> ErrorInfo:
        if isinstance(exc, JobError):
            log.info("%s: %s (%s)", work.label, exc.code, exc)
        else:
            log.exception("%s crashed", work.label)
        return ErrorInfo.from_exception(exc, part=work.ref.part)

    def _discard_outputs(self, work: ClaimedWork) -> None:
        for name in work.uploaded:
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
