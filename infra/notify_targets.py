"""Where a user's end events go: their webhook endpoints and device tokens, in Firestore.

One document per user, ``{NOTIFY_TARGETS_COLLECTION}/{uid}``, written by the API and read by the
dispatcher (the security rules deny clients; the secrets never leave the backend but in the
answer that creates or rotates them). Each write is a transaction on that one document, so the
per-user caps hold however many requests arrive at once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from google.cloud import firestore
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from infra import roundtrips

T = TypeVar("T")
SECRET_PREFIX = "whsec_"  # noqa: S105  # the format's prefix, not a secret


class _Doc(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Secret(_Doc):
    secret: str
    #: a rotated-out secret signs until then; the current one has none
    expires_at: datetime | None = None


class Endpoint(_Doc):
    url: str
    secrets: list[Secret] = Field(default_factory=list)
    created_at: datetime

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets that sign now: the current one first, then those still in their grace."""
        return [s.secret for s in self.secrets if s.expires_at is None or s.expires_at > now]


class Device(_Doc):
    token: str
    created_at: datetime


class Targets(_Doc):
    webhooks: dict[str, Endpoint] = Field(default_factory=dict)
    devices: dict[str, Device] = Field(default_factory=dict)


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def device_key(token: str) -> str:
    """A device token's map key (tokens are long and not plain identifiers)."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class TargetStore:
    def __init__(self, client: firestore.Client, collection: str = "notify_targets") -> None:
        self._db = client
        self._collection = collection

    def _ref(self, uid: str) -> firestore.DocumentReference:
        return self._db.collection(self._collection).document(uid)

    def get(self, uid: str) -> Targets:
        roundtrips.note("firestore")
        snap = self._ref(uid).get()
        return Targets.model_validate(snap.to_dict() or {}) if snap.exists else Targets()

    def get_many(self, uids: Iterable[str]) -> dict[str, Targets]:
        """Several users' targets in one call (a user with no document has none)."""
        wanted = sorted(set(uids))
        if not wanted:
            return {}
        roundtrips.note("firestore")
        found = {uid: Targets() for uid in wanted}
        for snap in self._db.get_all([self._ref(uid) for uid in wanted]):
            if snap.exists:
                found[snap.id] = Targets.model_validate(snap.to_dict() or {})
        return found

    def update(self, uid: str, change: Callable[[Targets], T]) -> T:
        """Read the user's targets, apply ``change`` (which mutates them and returns a result, or
        raises to write nothing), and write them back, in one transaction."""
        ref = self._ref(uid)
        transaction = self._db.transaction()

        @firestore.transactional
        def run(tx: firestore.Transaction) -> T:
            snap = ref.get(transaction=tx)
            targets = Targets.model_validate(snap.to_dict() or {}) if snap.exists else Targets()
            result = change(targets)
            tx.set(ref, targets.model_dump(by_alias=True, exclude_none=True, mode="python"))
            return result

        roundtrips.note("firestore")
        return cast(T, run(transaction))

    def drop_devices(self, uid: str, keys: list[str]) -> None:
        """Forget device tokens FCM called stale (unregistered)."""
        if keys:
            roundtrips.note("firestore")
            self._ref(uid).update({f"devices.{key}": firestore.DELETE_FIELD for key in keys})


def rotated(endpoint: Endpoint, now: datetime, grace_seconds: int) -> tuple[Endpoint, str]:
    """The endpoint with a new current secret; the old one signs for ``grace_seconds`` more (so a
    receiver can switch without losing an event) and older ones are dropped."""
    fresh = new_secret()
    until = now + timedelta(seconds=grace_seconds)
    old = [
        Secret(secret=s.secret, expires_at=until if s.expires_at is None else min(s.expires_at, until))
        for s in endpoint.secrets[:1]
        if grace_seconds > 0
    ]
    return endpoint.model_copy(update={"secrets": [Secret(secret=fresh), *old]}), fresh


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")
