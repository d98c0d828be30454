"""functions-framework entry points (CloudEvent signature), deployed one service per target.

Run locally exactly as deployed, e.g.::

    functions-framework --source functions/main.py --target on_job_created --signature-type cloudevent

Each entry point is a thin wrapper: decode the event into a typed object, call the plain function
in ``functions.handlers``. Returning acks the event; raising makes the platform retry it (only
transient errors are raised). Importing this module is cheap: no torch, no models.
"""

from __future__ import annotations

import logging
import time
from functools import cache

import functions_framework
from cloudevents.http import CloudEvent

from core.errors import InvalidInput
from functions import events
from functions.handlers import (
    Deps,
    handle_dead_letter,
    handle_job_created,
    handle_object_finalized,
)
from functions.notify import Dispatcher
from functions.sweeper import sweep
from infra import roundtrips, sampling
from infra.blobs import BlobStore, storage_client
from infra.bus import Bus
from infra.identity import SignInProviders
from infra.jobs import JobStore, firestore_client
from infra.notify_targets import TargetStore
from infra.settings import Settings
from pipelines import prober
from pipelines.registry import catalog

log = logging.getLogger("functions")


@cache
def deps() -> Deps:
    """Built once per instance, on the first event (the entry point of this deployable)."""
    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sampling.start(settings.profile_dir, "functions")
    prober.configure(prober.config_from(settings))
    return Deps(
        settings=settings,
        catalog=catalog(settings.enabled_pipelines, settings.plugins, settings.pipelines),
        jobs=JobStore(firestore_client(settings), settings.jobs_collection, settings.quotas_collection),
        blobs=BlobStore(storage_client(settings)),
        bus=Bus(settings),
        identities=SignInProviders.from_settings(settings),
    )


@functions_framework.cloud_event
def on_object_finalized(event: CloudEvent) -> None:
    """Storage object finalized (through the bucket's Pub/Sub notification): maybe create a job."""
    try:
        storage_event = events.storage_event(event)
    except InvalidInput as exc:
        log.error("ignoring malformed storage event %s: %s", event["id"], exc)
        return
    with roundtrips.counting() as counter:
        job_id = handle_object_finalized(deps(), storage_event)
    if job_id:
        log.info("job %s round trips: %s (upload)", job_id, roundtrips.summary(counter))


@functions_framework.cloud_event
def on_job_created(event: CloudEvent) -> None:
    """Firestore ``jobs/{jobId}`` created: validate, then queue and publish or reject."""
    try:
        doc = events.firestore_document(event)
    except InvalidInput as exc:
        log.error("ignoring malformed Firestore event %s: %s", event["id"], exc)
        return
    started = time.time()
    with roundtrips.counting() as counter, roundtrips.timing() as stages:
        status = handle_job_created(deps(), doc)
    stages["handler"] = time.time() - started
    log.info("job %s round trips: %s (created: %s)", doc.doc_id, roundtrips.summary(counter), status)
    log.info("job %s stages: %s", doc.doc_id, roundtrips.stages_summary(stages, started))


@functions_framework.cloud_event
def on_dead_letter(event: CloudEvent) -> None:
    """A job message Pub/Sub gave up on: end its job as failed, with the attempt count."""
    try:
        msg = events.pubsub_message(event)
    except InvalidInput as exc:
        log.error("ignoring malformed dead-letter event %s: %s", event["id"], exc)
        return
    handle_dead_letter(deps(), msg.data, msg.attributes)


@functions_framework.cloud_event
def on_sweep(event: CloudEvent) -> None:
    """A scheduler tick (Cloud Scheduler -> Pub/Sub): recover stuck jobs."""
    sweep(deps())


@cache
def dispatcher() -> Dispatcher:
    d = deps()
    targets = TargetStore(firestore_client(d.settings), d.settings.notify_targets_collection)
    return Dispatcher(d.settings, d.jobs, targets)


@functions_framework.cloud_event
def on_notify(event: CloudEvent) -> None:
    """A scheduler tick (Cloud Scheduler -> Pub/Sub): deliver the end events jobs owe, and keep
    delivering what falls due (retries after their backoff) for NOTIFY_RUN_SECONDS."""
    made = dispatcher().run()
    if made:
        log.info("notifications: %d delivery attempts this tick", made)
