"""Firestore edge: reads the job document, applies a lifecycle decision, compare-and-set.

The decisions themselves (may this delivery claim? is this lease expired? which state next?)
are pure functions in :mod:`core.lifecycle`; this module only reads the document, calls one,
and writes the :class:`~core.patch.Patch` it returns if the document has not changed since the
read (an update-time precondition), deciding again when it has.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from proto.datetime_helpers import DatetimeWithNanoseconds

from core.contract import (
    JobDoc,
    JobStatus,
    PartialOutput,
    Prepared,
    Progress,
    QueuedCopy,
    Timings,
    Usage,
    read_job,
)
from core.errors import PermanentError, RetryableError, bounded
from core.lanes import Priority
from core.lifecycle import (
    Claim,
    ClaimOutcome,
    Decision,
    Ending,
    Joiner,
    decide_claim,
    decide_fan_out,
    decide_finish,
    decide_heartbeat,
)
from core.patch import DELETE, SERVER_TIME, Patch, Sentinel
from core.quota import Admission, Ledger, QuotaPolicy, day_of, decide_admission, needs_pruning
from core.recovery import decide_recover, decide_transition
from core.usage import rollup
from core.work import WorkRef
from infra import firestore_writes as writes_pb
from infra import roundtrips
from infra.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
CAS_ATTEMPTS = 50
#: A user creating many jobs at once contends on one ledger document: read and decide again.
ADMIT_ATTEMPTS = 100
CREATE_ATTEMPTS = 5
#: What the redriver's query of running jobs reads of each: what it schedules by (the rest is the
#: claim's). Its queued jobs are read whole, for their claims (see ``JobStore.find_runnable``).
SCHEDULING_FIELDS = [
    "uid",
    "pipeline",
    "status",
    "parts",
    "cancelRequested",
    "priority",
    "shareWeight",
    "queuedAt",
    "updatedAt",
]
#: The ledger fields admission writes (``usage`` is only ever incremented, by the ends of jobs).
LEDGER_COUNTS = {"day", "daily", "active"}


def firestore_client(settings: Settings) -> firestore.Client:
    # The client library honours FIRESTORE_EMULATOR_HOST itself.
    return firestore.Client(project=settings.google_cloud_project)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC: the one clock the sweeper and the GPU service read."""
    return datetime.now(UTC)


def _native(value: Any) -> Any:
    """Core's sentinels as Firestore's, anywhere in a value."""
    if value is SERVER_TIME:
        return firestore.SERVER_TIMESTAMP
    if value is DELETE:
        return firestore.DELETE_FIELD
    if isinstance(value, Sentinel):
        raise TypeError(f"unknown sentinel {value!r}")
    if isinstance(value, dict):
        return {k: _native(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_native(v) for v in value]
    return value


def to_firestore(patch: Patch) -> dict[str, Any]:
    return {key: _native(value) for key, value in patch.to_dict().items()}


@dataclass
class LastWrite:
    """An attempt's own last write to its job document: the update time Firestore gave it, and the
    job as the attempt's decisions then see it (running, this attempt, this owner's lease).

    The attempt's next write (a heartbeat, its finish) is made against that update time without
    reading the document first: if nobody wrote since, the document is exactly what the attempt
    wrote, so the decision made on ``job`` is the one a read would have given. If anybody wrote
    since (a cancel request, a sweeper, a redelivered claim), the precondition fails and the write
    reads the document and decides again, as every write does without one.
    """

    job: JobDoc | None = None
    update_time: Any = None
    #: the update time of the document the last write was decided on (the write before it)
    decided_on: Any = None

    def known(self) -> tuple[JobDoc, Any] | None:
        job, update_time = self.job, self.update_time  # one look: the heartbeat's thread writes too
        return (job, update_time) if job is not None and update_time is not None else None

    def copy(self) -> QueuedCopy | None:
        """The write as a message can carry it (the functions' queueing write, for the claim)."""
        known = self.known()
        if known is None or not isinstance(known[1], DatetimeWithNanoseconds):
            return None
        update_time: str = known[1].rfc3339()
        return QueuedCopy(update_time=update_time, job=known[0].to_firestore())

    @classmethod
    def from_copy(cls, copy: QueuedCopy) -> LastWrite | None:
        try:
            update_time = DatetimeWithNanoseconds.from_rfc3339(copy.update_time)
        except ValueError:
            return None
        return cls(read_job(copy.job), update_time)


def applied(job: JobDoc, patch: Patch, when: datetime) -> JobDoc:
    """``job`` as ``patch`` leaves it, its server times being ``when`` (the write's commit time)."""
    data = job.to_firestore()
    for path, value in to_firestore(patch).items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        if value is firestore.DELETE_FIELD:
            node.pop(leaf, None)
        else:
            node[leaf] = _resolved(value, when)
    return read_job(data)


def _resolved(value: Any, when: datetime) -> Any:
    if value is firestore.SERVER_TIMESTAMP:
        return when
    if isinstance(value, dict):
        return {k: _resolved(v, when) for k, v in value.items()}
    return value


class JobStore:
    def __init__(
        self, client: firestore.Client, collection: str = "jobs", quotas_collection: str = "quotas"
    ) -> None:
        self._db = client
        self._collection = collection
        self._quotas = quotas_collection

    def ref(self, job_id: str) -> firestore.DocumentReference:
        return self._db.collection(self._collection).document(job_id)

    def _cas(
        self,
        job_id: str,
        decide: Callable[[JobDoc | None], Decision[T]],
        also: Callable[[JobDoc, Decision[T]], tuple[firestore.DocumentReference, dict[str, Any]] | None]
        | None = None,
        last: LastWrite | None = None,
        keep: bool | Callable[[Decision[T]], bool] = True,
        first: LastWrite | None = None,
    ) -> T:
        """Read the document, decide, and write only if it has not changed since: compare-and-set.

        A transaction without locks: on a hot document (the parts of one job) lock-based
        transactions stall each other, while a failed precondition just means "someone wrote
        first: read again and decide again".

        With ``first`` (a write known to have left the job as it says, such as the queueing write
        a message carries) or ``last`` (an attempt's own last write), the first try decides on
        the job that write left, against its update time, without a read. After the write, the
        job it left (the decided patch applied to the job it was decided on, at the write's commit
        time) goes into ``last`` for the next write, unless ``keep`` (or ``keep(decision)``) says
        not to: then the next write reads.

        Raises:
            RetryableError: the document kept changing under us (it never settles).
        """
        ref = self.ref(job_id)
        known = first.known() if first is not None else None
        if known is None and last is not None:
            known = last.known()
        for tries in range(1, CAS_ATTEMPTS + 1):
            job: JobDoc | None
            if known is not None:
                job, update_time = known  # the attempt's own last write: no read
            else:
                roundtrips.note("firestore")
                job, update_time = self._read(ref)
            decision = decide(job)
            if not decision.patch:
                return decision.result
            extra = also(job, decision) if also is not None and job is not None else None
            try:
                roundtrips.note("firestore")
                # The job's write against the update time it was decided on; with ``extra`` (a
                # merge of increments) in the same commit, so that one applies exactly when the
                # job's write does.
                writes = [writes_pb.update(ref._document_path, to_firestore(decision.patch), update_time)]
                if extra is not None:
                    writes.append(writes_pb.merge(extra[0]._document_path, extra[1]))
                written = writes_pb.commit(self._db, writes)[0].update_time
                if last is not None:
                    last.decided_on = update_time
                    kept = keep(decision) if callable(keep) else keep
                    next_job = applied(job, decision.patch, written) if kept and job is not None else None
                    last.job, last.update_time = next_job, written if next_job is not None else None
                return decision.result
            except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
                if known is not None:
                    known = None  # somebody wrote since: read and decide again, at once
                    continue
                time.sleep(random.uniform(0, 0.01 * tries))
            except gexc.InvalidArgument as exc:
                # Firestore refused the write itself (the document would pass its 1 MiB limit):
                # the same write would fail again, so this is not worth a retry.
                raise PermanentError(
                    f"the job document cannot take this write: {bounded(str(exc.message), 200)}",
                    code="write_refused",
                ) from exc
        raise RetryableError(f"job {job_id} kept changing; try again", code="contention")

    # -- reads ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobDoc | None:
        roundtrips.note("firestore")
        return self._read(self.ref(job_id))[0]

    def _read(self, ref: firestore.DocumentReference) -> tuple[JobDoc | None, Any]:
        """The job and its update time (``None, None`` when there is no such document), read with
        Firestore's unary ``GetDocument``: the library's own ``get`` is a streaming
        ``BatchGetDocuments``, which cost gRPC about 0.6 ms more CPU per read here, and copies the
        data twice on the way."""
        try:
            doc = self._db._firestore_api.get_document(
                request={"name": ref._document_path}, metadata=self._db._rpc_metadata
            )
        except gexc.NotFound:
            return None, None
        fields = _helpers.decode_dict(doc.fields, self._db)  # a map, unless a hostile "__type__"
        return read_job(fields if isinstance(fields, dict) else {}), doc.update_time

    def find(self, statuses: Iterable[JobStatus]) -> list[tuple[str, JobDoc]]:
        query = self._db.collection(self._collection).where(
            filter=firestore.FieldFilter("status", "in", [s.value for s in statuses])
        )
        return _jobs(query.stream())

    def find_runnable(
        self, limit: int, parted: Collection[str] | None = None, seen: dict[str, QueuedCopy] | None = None
    ) -> list[tuple[str, JobDoc]]:
        """The oldest ``queued`` jobs, the oldest queued ``interactive`` ones when there are more
        queued than that and batch work is among them (a batch backlog older than them must not
        hide them), and ``running`` ones (whose parts may be queued), for the redriver: at most
        ``limit`` of each. (Production needs composite indexes on ``status`` + ``queuedAt`` and
        ``status`` + ``priority`` + ``queuedAt``; Terraform creates them.)

        Queued jobs are read whole: a query bills one read per document whatever it selects, and
        the claim of one of them can then write against the update time read here instead of
        reading the job again. With ``seen``, each one goes there as a :class:`QueuedCopy`.
        Running jobs are read as far as scheduling needs (``SCHEDULING_FIELDS``): a part's claim
        reads its job anyway (the other parts write the same document).

        ``parted`` names the multi-part pipelines the caller serves: only their running jobs can
        have queued parts, so only they are read, and none when it is empty. Every running job
        of the fleet read on every pass would make each instance's reads grow with the fleet.
        """
        coll = self._db.collection(self._collection)
        queued = (
            coll.where(filter=firestore.FieldFilter("status", "==", JobStatus.QUEUED.value))
            .order_by("queuedAt")
            .limit(limit)
        )
        found_docs = _seen([*queued.stream()], seen)
        # Fewer than ``limit`` queued: every queued job was seen, interactive ones included.
        backlog = len(found_docs) >= limit
        if parted is None or parted:
            running = coll.select(SCHEDULING_FIELDS).where(
                filter=firestore.FieldFilter("status", "==", JobStatus.RUNNING.value)
            )
            if parted:  # equality filters only: served by the single-field indexes
                running = running.where(filter=firestore.FieldFilter("pipeline", "in", sorted(parted)[:30]))
            found_docs += running.limit(limit).stream()
        found = dict(_jobs(found_docs))
        # Only batch work can hide interactive work: when the oldest queued are all interactive,
        # they are the oldest interactive ones too, and the lane's own query would bill them again.
        if backlog and any(job.priority is Priority.BATCH for job in found.values()):
            found.update(self.find_queued_interactive(limit, seen))
        return list(found.items())

    def find_queued_interactive(
        self, limit: int, seen: dict[str, QueuedCopy] | None = None
    ) -> list[tuple[str, JobDoc]]:
        """The oldest queued jobs of the interactive lane (``core/lanes.py``), read whole (see
        :meth:`find_runnable`)."""
        query = (
            self._db.collection(self._collection)
            .where(filter=firestore.FieldFilter("status", "==", JobStatus.QUEUED.value))
            .where(filter=firestore.FieldFilter("priority", "==", Priority.INTERACTIVE.value))
            .order_by("queuedAt")
            .limit(limit)
        )
        return _jobs(_seen([*query.stream()], seen))

    def find_queued_of_pipelines(
        self, pipelines: Collection[str], limit: int, seen: dict[str, QueuedCopy] | None = None
    ) -> list[tuple[str, JobDoc]]:
        """The oldest queued jobs of ``pipelines`` (at most 30: Firestore's ``in`` limit), for a
        redriver whose oldest-queued read was full of other services' work (a worker pool's
        backlog, say), which would otherwise hide its own; read whole (see :meth:`find_runnable`).
        (Production: ``in`` is equalities on ``pipeline``, served by the ``pipeline`` + ``status``
        + ``queuedAt`` index Terraform creates for a queued job's place.)"""
        query = (
            self._db.collection(self._collection)
            .where(filter=firestore.FieldFilter("status", "==", JobStatus.QUEUED.value))
            .where(filter=firestore.FieldFilter("pipeline", "in", sorted(pipelines)[:30]))
            .order_by("queuedAt")
            .limit(limit)
        )
        return _jobs(_seen([*query.stream()], seen))

    def find_queued_of_others(
        self, exclude_uids: list[str], limit: int, seen: dict[str, QueuedCopy] | None = None
    ) -> list[tuple[str, JobDoc]]:
        """Queued jobs of users other than ``exclude_uids`` (at most 10: Firestore's ``not-in``
        limit), for the redriver's fairness: work of users with nothing running; read whole (see
        :meth:`find_runnable`). (Production needs a composite index on ``status`` + ``uid``;
        Terraform creates it.)"""
        query = self._db.collection(self._collection).where(
            filter=firestore.FieldFilter("status", "==", JobStatus.QUEUED.value)
        )
        if exclude_uids:
            query = query.where(filter=firestore.FieldFilter("uid", "not-in", exclude_uids[:10])).order_by(
                "uid"
            )
        return _jobs(_seen([*query.limit(limit).stream()], seen))

    def find_reusable(self, uid: str, pipeline: str, reuse_key: str) -> tuple[str, JobDoc] | None:
        """A succeeded job of ``uid`` whose reuse key is ``reuse_key`` (equality filters only:
        Firestore serves them from its single-field indexes)."""
        roundtrips.note("firestore")
        query = (
            self._db.collection(self._collection)
            .where(filter=firestore.FieldFilter("uid", "==", uid))
            .where(filter=firestore.FieldFilter("reuseKey", "==", reuse_key))
            .where(filter=firestore.FieldFilter("status", "==", JobStatus.SUCCEEDED.value))
            .limit(1)
        )
        for job_id, job in _jobs(query.stream()):
            if job.uid == uid and job.pipeline == pipeline and job.outputs is not None:
                return job_id, job
        return None

    def decide(self, job_id: str, decide: Callable[[JobDoc | None], Decision[T]]) -> T:
        """Apply a decision of another module (the notification outbox's) with compare-and-set."""
        return self._cas(job_id, decide)

    def find_due_known(self, now: datetime, limit: int) -> list[tuple[str, LastWrite]]:
        """Jobs whose notifications are due by ``now`` (``notifications.dueAt``), the longest due
        first, each with the update time it was read at: a write decided on it
        (:meth:`decide_known`, :meth:`commit_known`) needs no read of its own. A range and an
        order on one field: Firestore's single-field index serves it."""
        roundtrips.note("firestore")
        query = (
            self._db.collection(self._collection)
            .where(filter=firestore.FieldFilter("notifications.dueAt", "<=", now))
            .order_by("notifications.dueAt")
        )
        return _known(query.limit(limit).stream())

    def find_due_known_of_others(
        self, now: datetime, exclude_uids: list[str], limit: int
    ) -> list[tuple[str, LastWrite]]:
        """:meth:`find_due_known` without the jobs of ``exclude_uids`` (at most 10: Firestore's
        ``not-in`` limit): the dispatcher's second look when a few owners filled its scan.
        (Production needs a composite index on ``notifications.dueAt`` + ``uid``; Terraform
        creates it.)"""
        roundtrips.note("firestore")
        query = (
            self._db.collection(self._collection)
            .where(filter=firestore.FieldFilter("notifications.dueAt", "<=", now))
            .where(filter=firestore.FieldFilter("uid", "not-in", exclude_uids[:10]))
            .order_by("notifications.dueAt")
        )
        return _known(query.limit(limit).stream())

    def find_owed_known(self, limit: int, after: str | None = None) -> list[tuple[str, LastWrite]]:
        """Owed jobs in id order, after the job ``after``: a walk through every owed outbox (to
        date those written before ``dueAt`` existed), each with the update time it was read at."""
        roundtrips.note("firestore")
        query = (
            self._db.collection(self._collection)
            .where(filter=firestore.FieldFilter("notifications.state", "==", "owed"))
            .order_by("__name__")
        )
        if after is not None:
            query = query.start_after({"__name__": after})
        return _known(query.limit(limit).stream())

    def decide_known(
        self, job_id: str, decide: Callable[[JobDoc | None], Decision[T]], known: LastWrite
    ) -> T:
        """:meth:`decide` on the job as ``known`` says it is, against its update time, without a
        read (a failed precondition reads and decides again). ``known`` is left holding the job as
        this write left it, or nothing (the next decision reads) when it no longer knows."""
        stale = known.job

        def deciding(job: JobDoc | None) -> Decision[T]:
            if job is not stale:  # a read: what ``known`` holds is out of date
                known.job = known.update_time = None
            return decide(job)

        return self._cas(
            job_id,
            deciding,
            first=known,
            last=known,
        )

    def commit_known(self, writes: list[tuple[str, LastWrite, Patch]]) -> bool:
        """Every write in one commit, each against its job's known update time: all or nothing.
        False when one precondition failed (somebody wrote one of the jobs since): nothing was
        written, and the caller decides each job again on its own."""
        if not writes:
            return True
        batch = self._db.batch()
        for job_id, known, patch in writes:
            option = self._db.write_option(last_update_time=known.update_time)
            batch.update(self.ref(job_id), to_firestore(patch), option=option)
        roundtrips.note("firestore")
        try:
            batch.commit()
        except (gexc.FailedPrecondition, gexc.Aborted, gexc.NotFound):
            return False
        return True

    # -- creation -------------------------------------------------------------------------------

    def create(self, job_id: str, job: JobDoc) -> bool:
        """Create-only write. Returns False if ``jobs/{job_id}`` already exists."""
        data = job.to_firestore()
        data.setdefault("createdAt", firestore.SERVER_TIMESTAMP)
        data["updatedAt"] = firestore.SERVER_TIMESTAMP
        for tries in range(1, CREATE_ATTEMPTS + 1):
            try:
                roundtrips.note("firestore")
                writes_pb.commit(self._db, [writes_pb.create(self.ref(job_id)._document_path, data)])
            except gexc.AlreadyExists:
                return False
            except gexc.Aborted:
                # The same id is being admitted right now (a retried request racing the first):
                # its transaction holds the document; ask again once it is done.
                if tries == CREATE_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0.01, 0.05) * tries)
            else:
                return True
        return False

    # -- admission: the quota check and the move to queued, in one transaction ---------------------

    def ledger(self, uid: str) -> Ledger:
        snap = self._db.collection(self._quotas).document(uid).get()
        return Ledger.model_validate(snap.to_dict() or {})

    def _finished(self, job_ids: Iterable[str]) -> set[str]:
        """Which of ``job_ids`` are final (or gone). Read outside any transaction on purpose: a final
        job stays final, so a stale read can only keep a job listed a little longer (never admit
        too much), and the running jobs' documents, which workers write often, are never locked."""
        refs = [self.ref(j) for j in job_ids]
        done = {ref.id for ref in refs}
        for snap in self._db.get_all(refs):
            if snap.exists and not read_job(snap.to_dict() or {}).effective_status.is_final:
                done.discard(snap.id)
        return done

    def admit(
        self,
        job_id: str,
        uid: str,
        pipeline: str,
        policy: QuotaPolicy,
        queue: Patch,
        written: LastWrite | None = None,
    ) -> tuple[JobStatus | None, Admission | None]:
        """Admit a pending job against its owner's quota, then queue it (with ``queue``) or reject
        it with ``quota_exceeded``.

        One read of both documents (the job and the ledger ``quotas/{uid}``) and one atomic commit
        of both writes, each with an update-time precondition, like every job write here: two
        admissions that read the same ledger cannot both succeed, so counts stay exact however
        many jobs a user creates at once, and nobody holds a lock while others wait (the
        emulator's lock-based transactions stalled for seconds on one hot ledger). A job that is
        not pending any more (cancelled meanwhile, or a duplicate event) is not counted.

        Returns the state the job moved to (``None``: it was not pending any more, a duplicate
        event), and the admission decided (``None`` when quotas are off). A queued job's write
        goes into ``written``: its message carries it, for the claim to write against.

        Raises:
            RetryableError: the ledger or the job kept changing under us.
        """
        if not policy.enabled:
            moved = self._cas(
                job_id,
                lambda job: decide_transition(
                    job, JobStatus.QUEUED, allowed_from=[JobStatus.PENDING], patch=queue
                ),
                last=written,
            )
            return (JobStatus.QUEUED if moved else None), None
        job_ref, ledger_ref = self.ref(job_id), self._db.collection(self._quotas).document(uid)
        finished: set[str] = set()
        for tries in range(1, ADMIT_ATTEMPTS + 1):
            roundtrips.note("firestore")
            snaps = {snap.reference.path: snap for snap in self._db.get_all([job_ref, ledger_ref])}
            job_snap, ledger_snap = snaps[job_ref.path], snaps[ledger_ref.path]
            job = read_job(job_snap.to_dict() or {}) if job_snap.exists else None
            if job is None or job.effective_status is not JobStatus.PENDING:
                return None, None
            ledger = Ledger.model_validate(ledger_snap.to_dict() or {})
            if needs_pruning(ledger, policy, pipeline) and not set(ledger.active) <= finished | {job_id}:
                finished.update(self._finished(j for j in ledger.active if j not in finished))
            admission = decide_admission(
                ledger, policy, job_id=job_id, pipeline=pipeline, now=utcnow(), finished=finished
            )
            to = JobStatus.QUEUED if admission.admitted else JobStatus.REJECTED
            move = queue if admission.admitted else Patch().set("error", admission.error)
            decision = decide_transition(job, to, allowed_from=[JobStatus.PENDING], patch=move)
            if decision.patch is None:
                return None, None
            counts = admission.ledger.model_dump(include=LEDGER_COUNTS)
            ledger_path = ledger_ref._document_path
            writes = [
                writes_pb.update(ledger_path, counts, ledger_snap.update_time)
                if ledger_snap.exists
                else writes_pb.create(ledger_path, counts),
                writes_pb.update(job_ref._document_path, to_firestore(decision.patch), job_snap.update_time),
            ]
            try:
                roundtrips.note("firestore")
                results = writes_pb.commit(self._db, writes)
            except (gexc.FailedPrecondition, gexc.AlreadyExists, gexc.Aborted, gexc.NotFound):
                time.sleep(random.uniform(0, 0.01 * tries))
                continue
            except gexc.InvalidArgument as exc:
                raise PermanentError(
                    f"the job document cannot take this write: {bounded(str(exc.message), 200)}",
                    code="write_refused",
                ) from exc
            if written is not None and admission.admitted:
                when = results[-1].update_time  # the job's write: the batch's last
                written.job, written.update_time = applied(job, decision.patch, when), when
            return to, admission
        raise RetryableError(
            f"job {job_id}: the quota ledger of {uid} is too busy; try again", code="contention"
        )

    # -- moves that are not an attempt's ----------------------------------------------------------

    def transition(
        self,
        job_id: str,
        to: JobStatus,
        *,
        allowed_from: Iterable[JobStatus] | None = None,
        patch: Patch | None = None,
    ) -> JobDoc | None:
        """Move the job to ``to`` if its current state allows it; returns the job as it was, or
        ``None`` (nothing written), which callers treat as "someone else already did it"."""
        allowed = list(allowed_from) if allowed_from is not None else None
        return self._cas(job_id, lambda job: decide_transition(job, to, allowed_from=allowed, patch=patch))

    def touch(self, job_id: str) -> None:
        roundtrips.note("firestore")
        self.ref(job_id).update(to_firestore(Patch().server_time("updated_at")))

    # -- leased work: a job, or one part of it ------------------------------------------------------

    def claim(
        self,
        ref: WorkRef,
        owner: str,
        lease_seconds: float,
        max_attempts: int,
        join: Joiner | None = None,
        pipeline: str | None = None,
        last: LastWrite | None = None,
        queued: QueuedCopy | None = None,
    ) -> Claim:
        """Take ``ref`` for one attempt, atomically. Only the returned attempt may commit.

        With ``queued`` (the job as its queueing write left it), the claim first writes against
        that write without reading the job. With ``last``, a job's claimed attempt (not a part's:
        other parts write the same document) keeps its write there, for its heartbeats and its
        finish to write against."""
        now = utcnow()
        first = LastWrite.from_copy(queued) if queued is not None and ref.part is None else None

        return self._cas(
            ref.job_id,
            lambda job: decide_claim(
                job,
                ref,
                owner=owner,
                now=now,
                lease_seconds=lease_seconds,
                max_attempts=max_attempts,
                join=join,
                pipeline=pipeline,
            ),
            last=last,
            # A job's own attempt keeps the job its claim left; a part's does not (other parts
            # write the same document), nor a claim that ended the job or ran nothing.
            keep=lambda decision: ref.part is None and decision.result.outcome is ClaimOutcome.CLAIMED,
            first=first,
        )

    def heartbeat(
        self,
        ref: WorkRef,
        owner: str,
        attempt: int,
        lease_seconds: float,
        progress: Progress | None = None,
        partial: PartialOutput | None = None,
        last: LastWrite | None = None,
    ) -> bool:
        """Renew the lease (and write progress, partial output). Returns ``cancelRequested``.

        Raises:
            LeaseLost: the unit is no longer this worker's attempt.
        """
        return self._cas(
            ref.job_id,
            lambda job: decide_heartbeat(
                job,
                ref,
                owner=owner,
                attempt=attempt,
                now=utcnow(),
                lease_seconds=lease_seconds,
                progress=progress,
                partial=partial,
            ),
            last=last,
        )

    def fan_out(
        self,
        ref: WorkRef,
        owner: str,
        attempt: int,
        prepared: Prepared,
        parts: Iterable[str],
        timings: Timings,
    ) -> None:
        keys = list(parts)
        self._cas(
            ref.job_id,
            lambda job: decide_fan_out(
                job, ref, owner=owner, attempt=attempt, prepared=prepared, parts=keys, timings=timings
            ),
        )

    def finish(
        self,
        ref: WorkRef,
        owner: str | None,
        attempt: int,
        ending: Ending,
        join: Joiner | None = None,
        last: LastWrite | None = None,
    ) -> JobStatus | None:
        """End (or re-queue) an attempt; returns the job's final state if this ended the job.
        With ``last``, against the attempt's own last write, without reading the job again.

        Raises:
            LeaseLost: ``owner`` no longer holds this attempt.
        """
        return self.finish_unit(ref, owner, attempt, ending, join, last)[0]

    def finish_unit(
        self,
        ref: WorkRef,
        owner: str | None,
        attempt: int,
        ending: Ending,
        join: Joiner | None = None,
        last: LastWrite | None = None,
    ) -> tuple[JobStatus | None, Ending | None]:
        """:meth:`finish`, and how the job ended when this ended it (for a part: the join's
        ending, with the job's usage).

        Raises:
            LeaseLost: ``owner`` no longer holds this attempt.
        """
        decided: list[Decision[JobStatus | None]] = []

        def decide(job: JobDoc | None) -> Decision[JobStatus | None]:
            decision = decide_finish(job, ref, owner=owner, attempt=attempt, ending=ending, join=join)
            decided.append(decision)  # the last one is the one committed
            return decision

        # The attempt's last write: nothing of this attempt writes after it.
        final = self._cas(ref.job_id, decide, also=self._rollup_of(ref.job_id), last=last, keep=False)
        return final, (decided[-1].ending if decided and final is not None else None)

    def _rollup_of(
        self, job_id: str
    ) -> Callable[
        [JobDoc, Decision[JobStatus | None]], tuple[firestore.DocumentReference, dict[str, Any]] | None
    ]:
        """The owner's daily usage roll-up for a job that this ending ends (see core/usage.py)."""

        def also(
            job: JobDoc, decision: Decision[JobStatus | None]
        ) -> tuple[firestore.DocumentReference, dict[str, Any]] | None:
            ended = decision.ending
            if decision.result is None or ended is None or ended.usage is None:
                return None
            amounts = rollup(ended.usage, job.pipeline, reused=job.reused_from is not None)
            data = usage_increments(day_of(utcnow()), amounts)
            # The job is final: it leaves the owner's unfinished jobs in the same commit.
            data["active"] = {job_id: firestore.DELETE_FIELD}
            return self._db.collection(self._quotas).document(job.uid), data

        return also

    def record_usage(self, uid: str, pipeline: str, usage: Usage, *, reused: bool = False) -> None:
        """Add a job's usage to its owner's day, on its own (a job ended outside a worker's finish)."""
        roundtrips.note("firestore")
        amounts = rollup(usage, pipeline, reused=reused)
        self._db.collection(self._quotas).document(uid).set(
            usage_increments(day_of(utcnow()), amounts), merge=True
        )

    def recover(self, ref: WorkRef, max_attempts: int) -> JobStatus | None:
        """For the sweeper: an expired lease goes back to the queue (or ends the job)."""
        return self._cas(
            ref.job_id, lambda job: decide_recover(job, ref, now=utcnow(), max_attempts=max_attempts)
        )


def usage_increments(day: str, amounts: dict[str, float]) -> dict[str, Any]:
    """``{"usage": {day: {...}}}`` with each amount as a Firestore increment, for a merge write."""
    tree: dict[str, Any] = {}
    for path, amount in amounts.items():
        node = tree
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = firestore.Increment(amount)
    return {"usage": {day: tree}}


def _known(snaps: Iterable[Any]) -> list[tuple[str, LastWrite]]:
    """Query results as ``(id, the job with the update time it was read at)``."""
    return [(snap.id, LastWrite(read_job(snap.to_dict() or {}), snap.update_time)) for snap in snaps]


def _seen(snaps: list[Any], seen: dict[str, QueuedCopy] | None) -> list[Any]:
    """``snaps`` (whole documents a query read), each also put in ``seen`` as a copy that a claim
    can write against (:class:`QueuedCopy`), when ``seen`` is given."""
    if seen is not None:
        for snap in snaps:
            if isinstance(snap.update_time, DatetimeWithNanoseconds):
                seen[snap.id] = QueuedCopy(update_time=snap.update_time.rfc3339(), job=snap.to_dict() or {})
    return snaps


def _jobs(snaps: Iterable[Any]) -> list[tuple[str, JobDoc]]:
    """Query results as ``(id, job)``; a job the backend never wrote (a client's, still pending)
    has no ``updatedAt`` of its own: the document's update time stands in."""
    found = []
    for snap in snaps:
        job = read_job(snap.to_dict() or {})
        if job.updated_at is None:
            job.updated_at = snap.update_time
        found.append((snap.id, job))
    return found
