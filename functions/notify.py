"""The notification dispatcher: delivers the end event every final job owes (see core/notify.py).

It runs as the ``on_notify`` function on each ``notify-tick`` (Cloud Scheduler, every minute; the
local stack ticks every few seconds) and keeps delivering what falls due for
``NOTIFY_RUN_SECONDS``. Everything it needs to know is on the job documents (the outbox), so a
dispatcher that is restarted, or two that overlap, lose and repeat nothing: each attempt is
claimed with a compare-and-set write before it is made, and recorded after.

Webhooks are signed as the Standard Webhooks specification says, with the ``standardwebhooks``
package. A webhook URL is hostile input: only ``https`` (``http`` to loopback only with
``NOTIFY_ALLOW_LOOPBACK`` on the local stack), the host is checked and resolved when the attempt
connects, with the video downloader's rules (:func:`pipelines.video.urls.check_host`: no
private, loopback or metadata addresses), the connection goes to exactly the vetted address, and
a redirect is a failed attempt, never followed.

Push notifications go through ``firebase-admin`` messaging, one message per device; a token FCM
calls unregistered is dropped from the user's devices.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
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


class WebhookSender:
    """One signed POST per attempt, through the connection guard, never following a redirect."""

    def __init__(self, settings: Settings, resolve: Resolver = default_resolve) -> None:
        self._allow_loopback = settings.notify_allow_loopback
        self._resolve = resolve
        self._grace = settings.notify_secret_grace_seconds
        self._http = httpx.Client(
            timeout=httpx.Timeout(settings.notify_timeout_seconds),
            follow_redirects=False,
            trust_env=False,  # no proxy: the vetted address is the one connected to
        )

    def send(self, endpoint: Endpoint, msg_id: str, body: bytes, now: datetime) -> Sent:
        try:
            url = check_webhook_url(endpoint.url, allow_loopback=self._allow_loopback)
            parts = urlsplit(url)
            assert parts.hostname is not None
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
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signatures,
            "user-agent": "gpu-jobs-webhooks/1",
        }
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
        last = "no address"
        for address in addresses:
            literal = f"[{address}]" if ":" in address else address
            target = urlunsplit((parts.scheme, f"{literal}:{port}", parts.path or "/", parts.query, ""))
            try:
                resp = self._http.post(
                    target,
                    content=body,
                    headers={**headers, "host": host_header},
                    # TLS checks the certificate against the registered host name, not the address.
                    extensions={"sni_hostname": parts.hostname} if parts.scheme == "https" else {},
                )
            except httpx.TimeoutException:
                return Sent(False, "timeout")
            except httpx.TransportError as exc:
                last = f"connection failed: {type(exc).__name__}"
                continue
            if 200 <= resp.status_code < 300:
                return Sent(True, f"HTTP {resp.status_code}")
            if 300 <= resp.status_code < 400:
                return Sent(False, f"HTTP {resp.status_code}: a redirect (not followed)")
            return Sent(False, f"HTTP {resp.status_code}")
        return Sent(False, last)

    def close(self) -> None:
        self._http.close()


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
    another: an owner's slow endpoint delays only its own events."""

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
        self._lock = threading.Lock()

    def run(self, seconds: float | None = None) -> int:
        """Deliver what is due, again and again, for ``seconds`` (``NOTIFY_RUN_SECONDS``); returns
        the attempts made."""
        budget = self.settings.notify_run_seconds if seconds is None else seconds
        end = time.monotonic() + budget
        made = 0
        while True:
            with roundtrips.counting() as calls:
                made += self.tick()
            if self.settled:
                log.info(
                    "notifications: %d owed, %d planned or settled; round trips: %s",
                    self.scanned,
                    self.settled,
                    roundtrips.summary(calls),
                )
            if time.monotonic() >= end:
                return made
            if self.scanned >= self.settings.notify_batch and self.settled:
                continue  # more are owed than one scan reads, and this one moved: scan again now
            time.sleep(min(SCAN_PAUSE_SECONDS, max(0.0, end - time.monotonic())))

    def tick(self) -> int:
        now = self.clock()
        found = self.jobs.find_due_known(now, self.settings.notify_batch)
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
        workers = min(len(by_owner), self.settings.notify_parallel)
        with ThreadPoolExecutor(workers, thread_name_prefix="notify") as pool:
            # Each task in a copy of this context: its Firestore calls count in this scan's round trips.
            runs = [
                pool.submit(contextvars.copy_context().run, self._deliver_all, jobs, targets)
                for jobs in by_owner.values()
            ]
            return sum(run.result() for run in runs)

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
        for channel in due:
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
