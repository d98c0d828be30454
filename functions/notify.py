"""The notification dispatcher: delivers the end event every final job owes (see core/notify.py).

It runs as the ``on_notify`` function on each ``notify-tick`` (Cloud Scheduler, every minute; the
local stack ticks every few seconds) and keeps delivering what falls due for
``NOTIFY_RUN_SECONDS``, starting no attempt past ``NOTIFY_DEADLINE_SECONDS``. Everything it needs to know is on the job documents (the outbox), so a
dispatcher that is restarted, or two that overlap, lose and repeat nothing: each attempt is
claimed with a compare-and-set write before it is made, and recorded after.

Webhooks are signed as the Standard Webhooks specification says, with the ``standardwebhooks``
package. A webhook URL is hostile input: only ``https`` (``http`` to loopback only with
``NOTIFY_ALLOW_LOOPBACK`` on the local stack), the host is checked and resolved when the attempt
connects, with the video downloader's rules (:func:`pipelines.video.urls.check_host`: no
private, loopback or metadata addresses), the connection goes to exactly the vetted address, a
redirect is a failed attempt, never followed, and ``NOTIFY_TIMEOUT_SECONDS`` bounds the whole
attempt, however slowly the endpoint answers.

Push notifications go through ``firebase-admin`` messaging, one message per device; a token FCM
calls unregistered is dropped from the user's devices.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import functools
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from standardwebhooks import Webhook

from core import notify
from core.contract import JobDoc
from core.decisions import Decision
from core.errors import InvalidInput, RetryableError
from infra import roundtrips
from infra.jobs import JobStore, LastWrite, firestore_client, utcnow
from infra.notify_targets import Endpoint, Targets, TargetStore, device_key
from infra.settings import Settings
from pipelines.video.urls import Resolver, check_host, check_url_syntax, default_resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sent:
    delivered: bool
    status: str
    #: retrying cannot help (a refused address, no devices left): the dead letter at once
    permanent: bool = False
    #: the attempt ran out of ``NOTIFY_TIMEOUT_SECONDS``: the owner's other jobs wait for the next scan
    timed_out: bool = False


def check_webhook_url(url: str, *, allow_loopback: bool) -> str:
    """A webhook URL as registered: ``https`` (``http`` only to loopback when allowed), no
    credentials, a port that is a number. The address is checked again at each connection.

    Raises:
        InvalidInput: ``invalid_webhook_url``.
    """
    try:
        url = check_url_syntax(url)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, code="invalid_webhook_url") from None
    parts = urlsplit(url)
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and allow_loopback and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return url
    raise InvalidInput("a webhook URL must be https", code="invalid_webhook_url")


#: the most of an answer read: its status line and headers (the body is never read)
MAX_ANSWER_HEAD = 16 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")
#: what may stand in a request line or a header value sent (no spaces, no control characters)
_SAFE = re.compile(r"[\x21-\x7e]+")


class _Malformed(Exception):
    """The endpoint answered something that is not an HTTP/1.x answer head."""


def _left(deadline: float) -> float:
    """The seconds left before ``deadline`` (``time.monotonic``); a timeout once there are none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's deadline passed")
    return left


def _status_of(sock: socket.socket, deadline: float) -> int:
    """The status of the final answer (after any ``1xx``): its head is read in full, up to
    ``MAX_ANSWER_HEAD`` bytes and ``deadline``, its body not at all."""
    head, read = b"", 0
    while True:
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            line = head[: head.find(b"\r\n")]
            match = _STATUS_LINE.fullmatch(line)
            if match is None:
                raise _Malformed("the answer is not HTTP/1.x")
            status = int(match.group(1))
            if status >= 200:
                return status
            head = head[end + 4 :]  # an interim answer: the final one follows
            continue
        if read > MAX_ANSWER_HEAD:
            raise _Malformed(f"an answer head over {MAX_ANSWER_HEAD // 1024} KiB")
        sock.settimeout(_left(deadline))
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("closed before a complete answer")
        head += chunk
        read += len(chunk)


class WebhookSender:
    """One signed POST per attempt, through the connection guard, never following a redirect.

    ``NOTIFY_TIMEOUT_SECONDS`` bounds the whole attempt, not each step of it: every connect,
    TLS handshake, send and read is given only what is left of it, so an endpoint that answers a
    byte at a time cannot hold an attempt open. The answer's head is read (its status is the
    outcome) and its body never is; each attempt has its own connection, closed after it."""

    def __init__(self, settings: Settings, resolve: Resolver = default_resolve) -> None:
        self._allow_loopback = settings.notify_allow_loopback
        self._resolve = resolve
        self._grace = settings.notify_secret_grace_seconds
        self._timeout = settings.notify_timeout_seconds
        self._tls = ssl.create_default_context()

    def send(self, endpoint: Endpoint, msg_id: str, body: bytes, now: datetime) -> Sent:
        deadline = time.monotonic() + self._timeout
        try:
            url = check_webhook_url(endpoint.url, allow_loopback=self._allow_loopback)
            parts = urlsplit(url)
            assert parts.hostname is not None
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            host_header = host if parts.port is None else f"{host}:{parts.port}"
            if not (_SAFE.fullmatch(target) and _SAFE.fullmatch(host_header) and _SAFE.fullmatch(msg_id)):
                raise InvalidInput(
                    "a webhook URL with spaces or control characters", code="invalid_webhook_url"
                )
            _, addresses = check_host(
                parts.hostname, resolve=self._resolve, allow_loopback=self._allow_loopback
            )
        except InvalidInput as exc:
            return Sent(False, f"refused: {exc.code}: {exc.message}", permanent=True)
        except RetryableError as exc:
            return Sent(False, f"unresolved: {exc.message}")
        signatures = " ".join(
            Webhook(secret).sign(msg_id, now, body) for secret in endpoint.signing_secrets(now)
        )
        head = (
            f"POST {target} HTTP/1.1\r\n"
            f"host: {host_header}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n"
            f"webhook-id: {msg_id}\r\n"
            f"webhook-timestamp: {int(now.timestamp())}\r\n"
            f"webhook-signature: {signatures}\r\n"
            "user-agent: gpu-jobs-webhooks/1\r\n"
            "connection: close\r\n\r\n"
        )
        request = head.encode("ascii") + body
        port = parts.port or (443 if parts.scheme == "https" else 80)
        # TLS checks the certificate against the registered host name, not the address.
        tls_host = parts.hostname if parts.scheme == "https" else None
        last = "no address"
        for address in addresses:
            try:
                status = self._post(address, port, tls_host, request, deadline)
            except TimeoutError:
                return Sent(False, f"timeout: no answer within {self._timeout:g} s", timed_out=True)
            except _Malformed as exc:
                return Sent(False, f"a malformed answer: {exc}")
            except ssl.SSLError as exc:
                last = f"TLS failed: {exc.reason or type(exc).__name__}"
                continue
            except OSError as exc:
                last = f"connection failed: {type(exc).__name__}"
                continue
            if 200 <= status < 300:
                return Sent(True, f"HTTP {status}")
            if 300 <= status < 400:
                return Sent(False, f"HTTP {status}: a redirect (not followed)")
            return Sent(False, f"HTTP {status}")
        return Sent(False, last)

    def _post(self, address: str, port: int, tls_host: str | None, request: bytes, deadline: float) -> int:
        """Connect to exactly ``address``, send ``request`` and read the answer's status, all by
        ``deadline``."""
        sock = socket.create_connection((address, port), timeout=_left(deadline))
        try:
            if tls_host is not None:
                sock.settimeout(_left(deadline))  # the handshake as a whole, not each read of it
                sock = self._tls.wrap_socket(sock, server_hostname=tls_host)
            sock.settimeout(_left(deadline))  # sendall: all of it within this
            sock.sendall(request)
            return _status_of(sock, deadline)
        finally:
            sock.close()

    def close(self) -> None:
        pass


class PushSender:
    """FCM through firebase-admin: one message per device of the owner."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Any = None

    def _messaging(self) -> Any:
        import firebase_admin
        from firebase_admin import credentials, messaging

        if self._app is None:
            options = {"projectId": self._settings.google_cloud_project}
            local = bool(self._settings.fcm_url)
            name = "notify-local" if local else "notify"
            try:
                self._app = firebase_admin.get_app(name)
            except ValueError:
                credential = _anonymous() if local else credentials.ApplicationDefault()
                self._app = firebase_admin.initialize_app(credential, options, name=name)
            if self._settings.fcm_url:
                # The local stack: an FCM v1 stand-in on 127.0.0.1 (devkit/fcm.py), no Google
                # sign-in. firebase-admin has no option for its endpoint: its service keeps it here.
                service = messaging._get_messaging_service(self._app)
                service._fcm_url = self._settings.fcm_url.format(project=self._settings.google_cloud_project)
        return messaging

    def send(self, targets: Targets, data: dict[str, str]) -> tuple[Sent, list[str]]:
        """Send to every device; the outcome, and the keys of the tokens FCM called stale."""
        if not targets.devices:
            return Sent(False, "no devices registered", permanent=True), []
        from firebase_admin import exceptions as firebase_exceptions

        messaging = self._messaging()
        stale: list[str] = []
        sent = failed = 0
        why = ""
        for key, device in sorted(targets.devices.items()):
            message = messaging.Message(
                token=device.token,
                data=data,
                notification=messaging.Notification(title="Job " + data["status"], body=data["pipeline"]),
            )
            try:
                messaging.send(message, app=self._app)
                sent += 1
            except firebase_exceptions.NotFoundError:  # UNREGISTERED, or 404: the token is stale
                stale.append(key)
            except Exception as exc:  # an FCM error of one device must not stop the others
                failed += 1
                why = type(exc).__name__
        status = f"sent to {sent} device(s), {len(stale)} stale" + (
            f", {failed} failed ({why})" if failed else ""
        )
        if failed and not sent:
            return Sent(False, status), stale
        if not sent:
            return Sent(False, status, permanent=True), stale
        return Sent(True, status), stale


def _anonymous() -> Any:
    """A firebase-admin credential that signs nothing (the local FCM stand-in asks for no token)."""
    from firebase_admin import credentials
    from google.auth.credentials import AnonymousCredentials

    class Anonymous(credentials.Base):  # type: ignore[misc]
        def get_credential(self) -> Any:
            return AnonymousCredentials()  # type: ignore[no-untyped-call]

    return Anonymous()


#: targets read for a tick are used for this long; a tick that runs longer (slow endpoints) reads
#: a user's again before using them, so a change of targets is seen as soon as it was before
TARGETS_MAX_AGE_SECONDS = 1.0
#: the scan's pause while nothing more is owed (the first attempt follows an end by under a second)
SCAN_PAUSE_SECONDS = 0.5
#: owners a scan's second look leaves out (Firestore's ``not-in`` limit)
MAX_EXCLUDED_OWNERS = 10
#: an owner whose attempt timed out is served in the retry lane for this long
SLOW_OWNER_SECONDS = 300.0


def _owed(job: JobDoc | None) -> bool:
    return job is not None and job.notifications is not None and job.notifications.state == "owed"


def _plan_nothing(job: JobDoc | None, job_id: str) -> Decision[bool]:
    return notify.decide_plan(job, job_id, [])


def _redate(job: JobDoc | None, now: datetime) -> Decision[datetime | None]:
    return notify.decide_due(job, now)


#: a job of a scan and the decision that settles it without a delivery
_Settle = tuple[str, LastWrite, Callable[[JobDoc | None], Decision[Any]]]


class _TickTargets:
    """The owners' targets for one tick: every owner's in one read at its start, a user's read
    again when the copy is older than ``TARGETS_MAX_AGE_SECONDS`` (by the one thread that
    delivers that owner's jobs)."""

    def __init__(self, store: TargetStore, uids: set[str]) -> None:
        self._store = store
        read = time.monotonic()
        self._found = store.get_many(uids)
        self._read = dict.fromkeys(self._found, read)

    def get(self, uid: str) -> Targets:
        if uid not in self._found or time.monotonic() - self._read[uid] > TARGETS_MAX_AGE_SECONDS:
            self._found[uid] = self._store.get(uid)
            self._read[uid] = time.monotonic()
        return self._found[uid]


def _retrying(job: JobDoc | None) -> bool:
    """Whether the outbox already has a failed attempt (a retry, or a lease that ran out)."""
    deliveries = job.notifications.deliveries if job is not None and job.notifications else None
    return any(d.state == "pending" and d.attempts > 0 for d in (deliveries or {}).values())


def lane_threads(parallel: int) -> tuple[int, int]:
    """``NOTIFY_PARALLEL`` shared between the lanes: (first attempts, retries); a quarter, at
    least one, for the retries, and at least one for the first attempts."""
    retries = max(1, parallel // 4)
    return max(1, parallel - retries), retries


def channels_of(targets: Targets) -> list[str]:
    channels = [notify.webhook_channel(e) for e in sorted(targets.webhooks)]
    if targets.devices:
        channels.append(notify.PUSH)
    return channels


class Dispatcher:
    """Each tick: one query for the jobs due now (``notifications.dueAt`` passed, the longest due
    first, so jobs waiting out a backoff or a lease are never read), one read of all their owners'
    targets, then writes decided on the documents the query returned, against their update times
    (no read before a write; a failed precondition reads and decides again). The jobs of owners
    with nothing registered are settled (``done``) in one commit; should one of them have changed
    since the query, that commit writes nothing and each is settled on its own. The attempts are
    made owner by owner, up to ``NOTIFY_PARALLEL`` owners side by side, each owner's one after
    another: an owner's slow endpoint delays only its own events.

    Hostile endpoints cannot take the scan: when a few owners fill the ``NOTIFY_BATCH`` jobs read,
    the scan reads again without them (``uid not-in``), so every owner with due work gets a turn;
    owners with a retry due (or a timeout in the last ``SLOW_OWNER_SECONDS``) are served in a
    lane of their own, with a quarter of the threads; an owner whose attempt timed out has the
    rest of its jobs deferred to the next scan (kept due, no attempt counted); and no attempt
    starts past the tick's ``NOTIFY_DEADLINE_SECONDS``."""

    def __init__(
        self,
        settings: Settings,
        jobs: JobStore,
        targets: TargetStore,
        webhooks: WebhookSender | None = None,
        push: PushSender | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.targets = targets
        self.webhooks = webhooks or WebhookSender(settings)
        self.push = push or PushSender(settings)
        self.clock = clock
        #: the last tick's owed jobs, and how many of them it planned or settled
        self.scanned = 0
        self.settled = 0
        #: the last tick's jobs left due without an attempt (the deadline, an owner's timeout)
        self.deferred = 0
        self._lock = threading.Lock()
        #: ``time.monotonic`` after which the current tick starts no attempt
        self._stop_at = float("inf")
        #: owners whose attempt timed out in the current tick
        self._timed_out: set[str] = set()
        #: owners whose attempt timed out lately, and when
        self._slow: dict[str, float] = {}

    def run(self, seconds: float | None = None) -> int:
        """Deliver what is due, again and again, for ``seconds`` (``NOTIFY_RUN_SECONDS``); returns
        the attempts made."""
        budget = self.settings.notify_run_seconds if seconds is None else seconds
        start = time.monotonic()
        end = start + budget
        # No attempt starts past the deadline, however long a scan of slow endpoints takes.
        stop_at = start + max(budget, self.settings.notify_deadline_seconds)
        made = 0
        while True:
            with roundtrips.counting() as calls:
                made += self.tick(stop_at=stop_at)
            if self.settled:
                log.info(
                    "notifications: %d owed, %d planned or settled; round trips: %s",
                    self.scanned,
                    self.settled,
                    roundtrips.summary(calls),
                )
            if self.deferred:
                log.info(
                    "notifications: %d job(s) left due for the next scan (an owner's endpoint timed "
                    "out, or the tick's deadline passed)",
                    self.deferred,
                )
            if time.monotonic() >= end:
                return made
            if self.scanned >= self.settings.notify_batch and self.settled:
                continue  # more are owed than one scan reads, and this one moved: scan again now
            time.sleep(min(SCAN_PAUSE_SECONDS, max(0.0, end - time.monotonic())))

    def tick(self, stop_at: float | None = None) -> int:
        """One scan: what is due now, delivered; returns the attempts made. No attempt starts
        after ``stop_at`` (``time.monotonic``; ``NOTIFY_DEADLINE_SECONDS`` from now by default):
        the jobs not reached stay due for the next scan."""
        if stop_at is None:
            stop_at = time.monotonic() + self.settings.notify_deadline_seconds
        self._stop_at, self._timed_out, self.deferred = stop_at, set(), 0
        now = self.clock()
        found = self._scan(now)
        owed = [(i, k) for i, k in found if _owed(k.job)]
        # Not owed, yet dated (only a write by hand leaves one): its date goes, so it is not read again.
        stray: list[_Settle] = [
            (i, k, functools.partial(_redate, now=now)) for i, k in found if not _owed(k.job)
        ]
        self.scanned, self.settled = len(found), 0
        if not owed:
            self._settle(stray)
            return 0
        targets = _TickTargets(self.targets, {k.job.uid for _, k in owed if k.job is not None})
        quiet = {
            job_id
            for job_id, known in owed
            if known.job is not None
            and known.job.notifications is not None
            and known.job.notifications.deliveries is None
            and not channels_of(targets.get(known.job.uid))
        }
        nothing: list[_Settle] = [
            (i, k, functools.partial(_plan_nothing, job_id=i)) for i, k in owed if i in quiet
        ]
        self._settle(nothing + stray)
        # Each owner's jobs one after another, owners side by side: an owner whose endpoints are
        # slow (each attempt may take NOTIFY_TIMEOUT_SECONDS) holds up only its own deliveries.
        by_owner: dict[str, list[tuple[str, LastWrite]]] = {}
        for job_id, known in owed:
            if job_id not in quiet and known.job is not None:
                by_owner.setdefault(known.job.uid, []).append((job_id, known))
        if len(by_owner) <= 1:
            return sum(self._deliver_all(jobs, targets) for jobs in by_owner.values())
        # Two lanes, each with its own threads: owners whose endpoints have been failing (a retry
        # due, a timeout lately) cannot take the threads of everybody else's first attempts.
        slow_since = time.monotonic() - SLOW_OWNER_SECONDS
        self._slow = {uid: at for uid, at in self._slow.items() if at > slow_since}
        lanes: tuple[list[list[tuple[str, LastWrite]]], list[list[tuple[str, LastWrite]]]] = ([], [])
        for uid, jobs in by_owner.items():
            failing = uid in self._slow or any(_retrying(known.job) for _, known in jobs)
            lanes[1 if failing else 0].append(jobs)
        runs: list[Future[int]] = []
        with contextlib.ExitStack() as pools:
            for tasks, threads, name in zip(
                lanes, lane_threads(self.settings.notify_parallel), ("first", "retry"), strict=True
            ):
                if not tasks:
                    continue
                pool = pools.enter_context(
                    ThreadPoolExecutor(min(len(tasks), threads), thread_name_prefix=f"notify-{name}")
                )
                # Each task in a copy of this context: its Firestore calls count in this scan's round trips.
                runs += [
                    pool.submit(contextvars.copy_context().run, self._deliver_all, jobs, targets)
                    for jobs in tasks
                ]
        return sum(run.result() for run in runs)

    def _scan(self, now: datetime) -> list[tuple[str, LastWrite]]:
        """The jobs due now, longest due first: ``NOTIFY_BATCH`` of them, and when owners with
        more than one job there filled it, as many more again of everybody else's (``uid
        not-in`` those owners, at most ten), so that one owner's backlog does not keep the other
        owners' jobs out of the scan until it falls back behind its backoffs."""
        limit = self.settings.notify_batch
        found = self.jobs.find_due_known(now, limit)
        seen = {job_id for job_id, _ in found}
        read, excluded = found, list[str]()
        while len(read) >= limit and len(excluded) < MAX_EXCLUDED_OWNERS:
            counts = Counter(k.job.uid for _, k in read if k.job is not None and k.job.uid not in excluded)
            filled = [uid for uid, n in counts.most_common() if n > 1][: MAX_EXCLUDED_OWNERS - len(excluded)]
            if not filled:
                break
            excluded += filled
            read = self.jobs.find_due_known_of_others(now, excluded, limit)
            fresh = [(job_id, known) for job_id, known in read if job_id not in seen]
            seen.update(job_id for job_id, _ in fresh)
            found = found + fresh
        return found

    def _may_start(self, uid: str) -> bool:
        """Whether an attempt of ``uid``'s may start now: not past the tick's deadline, nor after
        one of the owner's attempts timed out in this tick (one owner costs at most one timeout
        per scan). A job not started stays due, with no attempt counted."""
        if time.monotonic() < self._stop_at and uid not in self._timed_out:
            return True
        with self._lock:
            self.deferred += 1
        return False

    def _deliver_all(self, jobs: list[tuple[str, LastWrite]], targets: _TickTargets) -> int:
        made = 0
        for job_id, known in jobs:
            try:
                made += self._deliver(job_id, known, targets)
            except RetryableError:
                log.warning("job %s: notifications deferred (the job document is busy)", job_id)
        return made

    def _settle(self, quiet: list[_Settle]) -> None:
        """Owners with nothing registered: their jobs are done (and stray dates removed), in one
        commit."""
        writes, decisions = [], {}
        for job_id, known, decide in quiet:
            decision = decide(known.job)
            if decision.patch:
                writes.append((job_id, known, decision.patch))
                decisions[job_id] = decide
        if self.jobs.commit_known(writes):
            self.settled += len(writes)
            return
        for job_id, _, _ in writes:  # one changed since the scan: each on its own
            try:
                self.jobs.decide(job_id, decisions[job_id])
                self.settled += 1
            except RetryableError:
                log.warning("job %s: notifications deferred (the job document is busy)", job_id)

    def _deliver(self, job_id: str, known: LastWrite, targets: _TickTargets) -> int:
        """Plan (once) and make the attempts of ``job_id`` that are due now."""
        job = known.job
        assert job is not None and job.notifications is not None
        made = 0
        if not self._may_start(job.uid):
            return 0
        if job.notifications.deliveries is None:
            channels = channels_of(targets.get(job.uid))

            def plan(j: JobDoc | None) -> Decision[int]:
                return notify.decide_plan_and_claim(
                    j, job_id, channels, now=self.clock(), lease_seconds=self._lease()
                )

            attempt = self.jobs.decide_known(job_id, plan, known)
            with self._lock:  # owners' deliveries run side by side
                self.settled += 1
            if attempt:  # planned, and the first channel's attempt claimed in the same write
                made += self._send(job_id, known, known.job or job, channels[0], attempt, targets)
            job = known.job or self.jobs.get(job_id)
            if job is None:
                return made
        due = notify.due(job, self.clock())
        if not due and not made:
            # Read as due, yet no channel is: its date is off. Put it right, or every scan reads it.
            self.jobs.decide_known(job_id, functools.partial(_redate, now=self.clock()), known)
        for i, channel in enumerate(due):
            if (made or i) and not self._may_start(job.uid):
                break  # the rest of its channels stay due: the next scan makes them
            made += self._one(job_id, known, job, channel, targets)
        return made

    def _lease(self) -> float:
        return self.settings.notify_timeout_seconds * 3 + 5

    def _one(self, job_id: str, known: LastWrite, job: JobDoc, channel: str, targets: _TickTargets) -> int:
        def claim(j: JobDoc | None) -> Decision[int]:
            return notify.decide_attempt(j, channel, now=self.clock(), lease_seconds=self._lease())

        attempt = self.jobs.decide_known(job_id, claim, known)
        if not attempt:
            return 0  # not due any more: another dispatcher has it
        return self._send(job_id, known, known.job or self.jobs.get(job_id) or job, channel, attempt, targets)

    def _send(
        self,
        job_id: str,
        known: LastWrite,
        current: JobDoc,
        channel: str,
        attempt: int,
        targets: _TickTargets,
    ) -> int:
        """Make the claimed ``attempt`` of ``channel`` and record how it went."""
        outcome = self._attempt(job_id, current, channel, targets.get(current.uid))
        if outcome.timed_out:
            with self._lock:
                self._timed_out.add(current.uid)
                self._slow[current.uid] = time.monotonic()

        def record(j: JobDoc | None) -> Decision[Any]:
            return notify.decide_outcome(
                j,
                channel,
                attempt=attempt,
                delivered=outcome.delivered,
                status=outcome.status,
                now=self.clock(),
                backoff=self.settings.notify_backoff_seconds,
                permanent=outcome.permanent,
            )

        result = self.jobs.decide_known(job_id, record, known)
        log.info("job %s: %s attempt %d: %s (%s)", job_id, channel, attempt, outcome.status, result)
        return 1

    def _attempt(self, job_id: str, job: JobDoc, channel: str, targets: Targets) -> Sent:
        assert job.notifications is not None
        msg_id = job.notifications.event_id or notify.event_id(job_id)
        event = notify.end_event(job_id, job)
        if channel == notify.PUSH:
            data = {
                "jobId": job_id,
                "status": event["data"]["status"],
                "pipeline": job.pipeline,
                "eventId": msg_id,
            }
            outcome, stale = self.push.send(targets, data)
            if stale:
                self.targets.drop_devices(job.uid, stale)
            return outcome
        endpoint = targets.webhooks.get(channel.removeprefix("webhook_"))
        if endpoint is None:
            return Sent(False, "the endpoint was deleted", permanent=True)
        body = json.dumps(event, separators=(",", ":")).encode()
        return self.webhooks.send(endpoint, msg_id, body, self.clock())


def forget_device(targets: TargetStore, uid: str, token: str) -> None:
    targets.drop_devices(uid, [device_key(token)])


def date_undated(settings: Settings, jobs: JobStore, clock: Callable[[], datetime] = utcnow) -> int:
    """Give every owed outbox the ``dueAt`` its deliveries call for: those written before the
    field existed (by an older release) are not seen by the dispatcher's scan until they have it.
    A walk through all owed jobs in id order, ``NOTIFY_BATCH`` at a time, one commit per page
    (writes against the update times read; a page that changed meanwhile is dated job by job).
    Outboxes already dated right are not written, so it can run again at any time. Returns how
    many were dated."""
    dated, after = 0, None
    while True:
        page = jobs.find_owed_known(settings.notify_batch, after)
        now = clock()
        writes = []
        for job_id, known in page:
            decision = notify.decide_due(known.job, now)
            if decision.patch:
                writes.append((job_id, known, decision.patch))
        if not jobs.commit_known(writes):
            for job_id, _, _ in writes:
                jobs.decide(job_id, functools.partial(_redate, now=now))
        dated += len(writes)
        if len(page) < settings.notify_batch:
            return dated
        after = page[-1][0]


def main(argv: list[str] | None = None) -> int:
    """``python -m functions.notify --date-undated``: the one-off of an upgrade (see
    docs/notifications.md), with the deployment's settings from the environment."""
    parser = argparse.ArgumentParser(prog="python -m functions.notify")
    parser.add_argument(
        "--date-undated",
        action="store_true",
        required=True,
        help="give owed outboxes written before notifications.dueAt existed their date",
    )
    parser.parse_args(argv)
    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dated = date_undated(settings, JobStore(firestore_client(settings), settings.jobs_collection))
    log.info("%d owed job(s) dated", dated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
