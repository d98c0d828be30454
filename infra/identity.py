"""How a user signed in, from Firebase Auth: what picks their quota tier (``core.quota``).

A job document carries only its owner's uid, and the job-created function (which admits every job,
however it was created) sees no ID token. So the function asks Firebase Auth for the user record,
once per user per :attr:`Settings.quota_tier_cache_seconds`:

* a custom claim ``quotaTier`` (a string, set with the Admin SDK) names the tier outright, for
  accounts the app vouches for (custom-token users, say);
* a user with no linked sign-in method, email or phone is ``anonymous`` (an account made by
  ``signInAnonymously``; linking a method to it later moves it to that method's tier);
* otherwise the first linked method's provider id (``password``, ``google.com``, ``phone``...).

A uid that Auth does not know gets the top-level caps: every client path creates jobs as a
signed-in user (the security rules and the API see to that), so only server-side writes name one.
In production the functions' service account needs ``roles/firebaseauth.viewer`` (Terraform
grants it); without it the lookups fail, are logged, and the top-level caps apply.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import firebase_admin
from firebase_admin import auth as firebase_auth
from firebase_admin import credentials
from firebase_admin import exceptions as firebase_exceptions

from core.errors import RetryableError
from core.quota import ANONYMOUS
from infra.settings import Settings

log = logging.getLogger(__name__)

#: the custom claim that names a user's quota tier outright
TIER_CLAIM = "quotaTier"


def provider_of(record: firebase_auth.UserRecord) -> str:
    """The tier key of a user record (see the module's docstring)."""
    claimed = (record.custom_claims or {}).get(TIER_CLAIM)
    if isinstance(claimed, str) and claimed:
        return claimed
    linked = [info.provider_id for info in record.provider_data or [] if info.provider_id]
    if linked:
        return str(linked[0])
    if not record.email and not record.phone_number:
        return ANONYMOUS
    return "password" if record.email else "phone"


class SignInProviders:
    """Looks up users' sign-in providers in Firebase Auth, each kept ``ttl_seconds``."""

    def __init__(
        self, settings: Settings, *, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        cred: credentials.Base = (
            _NoCredential() if settings.firebase_auth_emulator_host else credentials.ApplicationDefault()
        )
        self._app = firebase_admin.initialize_app(
            cred, {"projectId": settings.google_cloud_project}, name=f"identity-{uuid.uuid4().hex}"
        )
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[str | None, float]] = {}
        self.lookups = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> SignInProviders | None:
        """The lookup the quota tiers need, or None where nothing would use it: quotas off, no
        tiers, or the emulators without an Auth emulator (no users to look up)."""
        policy = settings.quotas
        if not policy.enabled or not policy.tiers:
            return None
        if settings.using_emulators and not settings.firebase_auth_emulator_host:
            log.info("no Auth emulator: quota tiers per sign-in provider are not applied")
            return None
        return cls(settings, ttl_seconds=settings.quota_tier_cache_seconds)

    def provider(self, uid: str) -> str | None:
        """``uid``'s sign-in provider (its tier key), or None for a uid Auth does not know.

        Raises:
            RetryableError: Firebase Auth could not be asked (the event is redelivered).
        """
        now = self._clock()
        with self._lock:
            kept = self._kept.get(uid)
            if kept is not None and now < kept[1]:
                return kept[0]
        try:
            self.lookups += 1
            found: str | None = provider_of(firebase_auth.get_user(uid, app=self._app))
        except (firebase_auth.UserNotFoundError, ValueError):  # unknown, or not a uid Auth could hold
            found = None
        except (
            firebase_exceptions.UnavailableError,
            firebase_exceptions.DeadlineExceededError,
            firebase_exceptions.InternalError,
            OSError,
        ) as exc:
            raise RetryableError(
                f"could not look up the job's owner in Firebase Auth: {type(exc).__name__}"
            ) from exc
        except firebase_exceptions.FirebaseError as exc:
            # A configuration fault (no permission to read users, say): jobs keep flowing on the
            # top-level caps rather than stopping, and the log says why at every lookup.
            log.error("quota tier of %s not known, top-level caps apply: %s", uid, _first_line(exc))
            found = None
        with self._lock:
            if len(self._kept) > 100_000:  # bounded: drop everything rather than grow without end
                self._kept.clear()
            self._kept[uid] = (found, now + self._ttl)
        return found

    def close(self) -> None:
        firebase_admin.delete_app(self._app)


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


class _NoCredential(credentials.Base):  # type: ignore[misc]
    """The Auth emulator takes no credential; firebase-admin still wants an object."""

    def get_credential(self) -> Any:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]
