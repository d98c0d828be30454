"""Where a user's job ends are sent: webhook endpoints (signed, Standard Webhooks), device tokens
(FCM), and redelivery of a job's end event. See docs/notifications.md."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from api.auth import User
from api.errors import ApiError
from api.models import Job, Problem
from api.service import Api, owned
from api.shedding import Caller
from core import notify
from core.errors import InvalidInput
from functions.notify import check_webhook_url
from infra.jobs import utcnow
from infra.notify_targets import (
    Device,
    Endpoint,
    Secret,
    Targets,
    TargetStore,
    device_key,
    new_secret,
    rotated,
)

ENDPOINT_ID = r"^[a-z0-9]{1,32}$"
#: an endpoint's or a device's id, as the API gave it
EndpointId = Annotated[str, Path(pattern=ENDPOINT_ID)]
ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": Problem, "description": "the request is malformed"},
    401: {"model": Problem, "description": "no token, or not a valid one"},
    404: {"model": Problem, "description": "no such endpoint, device or job of yours"},
    413: {"model": Problem, "description": "the body is larger than API_MAX_BODY_BYTES"},
    409: {"model": Problem, "description": "over the per-user cap, or the job has not ended"},
    422: {"model": Problem, "description": "the URL or token is not acceptable"},
}


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class WebhookCreate(_Body):
    url: str = Field(max_length=2048, description="https only; called with a POST per job end")


class Webhook(_Body):
    id: str
    url: str
    created_at: datetime
    secret: str | None = Field(
        None, description="the signing secret (whsec_...): shown only when created or rotated"
    )


class WebhookList(_Body):
    webhooks: list[Webhook]


class DeviceCreate(_Body):
    token: str = Field(min_length=1, max_length=4096, description="the app's FCM registration token")


class DeviceRef(_Body):
    id: str


def _store(api: Api) -> TargetStore:
    return TargetStore(api.db, api.settings.notify_targets_collection)


def _not_found(what: str) -> ApiError:
    return ApiError("not_found", f"no {what} of yours")


def add_webhook(api: Api, uid: str, body: WebhookCreate) -> Webhook:
    try:
        url = check_webhook_url(body.url, allow_loopback=api.settings.notify_allow_loopback)
    except InvalidInput as exc:
        raise ApiError(exc.code, exc.message) from None
    now = utcnow()
    secret = new_secret()
    endpoint_id = uuid.uuid4().hex[:16]
    cap = api.settings.notify_max_endpoints

    def change(targets: Targets) -> None:
        if len(targets.webhooks) >= cap:
            raise ApiError(
                "too_many_endpoints", f"at most {cap} webhook endpoints; delete one first", status=409
            )
        targets.webhooks[endpoint_id] = Endpoint(url=url, secrets=[Secret(secret=secret)], created_at=now)

    _store(api).update(uid, change)
    return Webhook(id=endpoint_id, url=url, created_at=now, secret=secret)


def rotate_webhook(api: Api, uid: str, endpoint_id: str) -> Webhook:
    now = utcnow()

    def change(targets: Targets) -> Webhook:
        endpoint = targets.webhooks.get(endpoint_id)
        if endpoint is None:
            raise _not_found("webhook endpoint " + endpoint_id)
        targets.webhooks[endpoint_id], fresh = rotated(
            endpoint, now, api.settings.notify_secret_grace_seconds
        )
        return Webhook(id=endpoint_id, url=endpoint.url, created_at=endpoint.created_at, secret=fresh)

    return _store(api).update(uid, change)


def delete_webhook(api: Api, uid: str, endpoint_id: str) -> None:
    def change(targets: Targets) -> None:
        if targets.webhooks.pop(endpoint_id, None) is None:
            raise _not_found("webhook endpoint " + endpoint_id)

    _store(api).update(uid, change)


def add_device(api: Api, uid: str, body: DeviceCreate) -> DeviceRef:
    key = device_key(body.token)
    cap = api.settings.notify_max_devices
    now = utcnow()

    def change(targets: Targets) -> None:
        if key not in targets.devices and len(targets.devices) >= cap:
            # The oldest device makes room: an app reinstalled many times keeps working.
            oldest = min(targets.devices, key=lambda k: targets.devices[k].created_at)
            del targets.devices[oldest]
        targets.devices[key] = Device(token=body.token, created_at=now)

    _store(api).update(uid, change)
    return DeviceRef(id=key)


def delete_device(api: Api, uid: str, device_id: str) -> None:
    def change(targets: Targets) -> None:
        if targets.devices.pop(device_id, None) is None:
            raise _not_found("device " + device_id)

    _store(api).update(uid, change)


def redeliver(api: Api, user: User, job_id: str) -> Job:
    owned(api, user, job_id)
    if not api.deps.jobs.decide(job_id, notify.decide_redeliver):
        raise ApiError("not_finished", f"job {job_id} has not ended: there is no end event to send yet")
    return Job.of(job_id, owned(api, user, job_id))


def notifications_router(api: Api) -> APIRouter:
    router = APIRouter(tags=["notifications"])

    @router.post("/v1/webhooks", status_code=201, response_model=Webhook, responses=ERRORS)
    async def post_webhook(user: Caller, body: WebhookCreate) -> Webhook:
        """Register an endpoint for the end of every job of yours. The answer holds its signing
        secret (Standard Webhooks: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``),
        shown only here and when rotated."""
        return await run_in_threadpool(add_webhook, api, user.uid, body)

    @router.get("/v1/webhooks", response_model=WebhookList, responses=ERRORS)
    async def get_webhooks(user: Caller) -> WebhookList:
        targets = await run_in_threadpool(_store(api).get, user.uid)
        hooks = [
            Webhook(id=k, url=e.url, created_at=e.created_at) for k, e in sorted(targets.webhooks.items())
        ]
        return WebhookList(webhooks=hooks)

    @router.post("/v1/webhooks/{endpoint_id}/rotate", response_model=Webhook, responses=ERRORS)
    async def post_rotate(user: Caller, endpoint_id: EndpointId) -> Webhook:
        """A new signing secret; the old one also signs for ``NOTIFY_SECRET_GRACE_SECONDS``."""
        return await run_in_threadpool(rotate_webhook, api, user.uid, endpoint_id)

    @router.delete("/v1/webhooks/{endpoint_id}", status_code=204, responses=ERRORS)
    async def del_webhook(user: Caller, endpoint_id: EndpointId) -> Response:
        await run_in_threadpool(delete_webhook, api, user.uid, endpoint_id)
        return Response(status_code=204)

    @router.post("/v1/devices", status_code=201, response_model=DeviceRef, responses=ERRORS)
    async def post_device(user: Caller, body: DeviceCreate) -> DeviceRef:
        """Register this device's FCM token: every job of yours that ends sends it a message."""
        return await run_in_threadpool(add_device, api, user.uid, body)

    @router.delete("/v1/devices/{device_id}", status_code=204, responses=ERRORS)
    async def del_device(user: Caller, device_id: EndpointId) -> Response:
        await run_in_threadpool(delete_device, api, user.uid, device_id)
        return Response(status_code=204)

    @router.post("/v1/jobs/{job_id}/redeliver", response_model=Job, responses=ERRORS)
    async def post_redeliver(user: Caller, job_id: str) -> Job:
        """Send the job's end event again, to every endpoint and device you have now, with the same
        event id (``webhook-id``), so a receiver that already has it can tell."""
        return await run_in_threadpool(redeliver, api, user, job_id)

    return router
