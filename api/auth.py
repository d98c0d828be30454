"""Who is calling: a Firebase ID token in ``Authorization: Bearer``, verified with firebase-admin.

In production the token's Google signature, audience (the project), issuer and expiry are
checked. Against the Auth emulator (``FIREBASE_AUTH_EMULATOR_HOST``) tokens are unsigned, which
is why :func:`check_environment` refuses that variable in production.

Revocation (a user signed out everywhere, disabled or deleted) is checked by default in
production (``API_CHECK_REVOKED``). Asking Firebase Auth on every request would cost a call per
request, so each user's answer is kept :attr:`Settings.api_revocation_cache_seconds` (30 s): a
revoked token is refused at the latest that long after the revocation.
:meth:`TokenVerifier.verify_token` and :meth:`TokenVerifier.check_not_revoked` go through the same
cache, for callers that hold a token or a user for long (an open event stream).

With ``API_APP_CHECK=true`` every call must also carry a Firebase App Check token in
``X-Firebase-AppCheck`` (the app's attestation that it is the real app on a real device or page),
verified with firebase-admin against App Check's public keys.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import firebase_admin
import jwt
from firebase_admin import app_check as firebase_app_check
from firebase_admin import auth as firebase_auth
from firebase_admin import credentials
from firebase_admin import exceptions as firebase_exceptions

from api.errors import ApiError
from core.contract import UID_PATTERN
from infra.settings import Settings

#: leeway on ``iat`` and ``exp`` for clock drift between the token's issuer and this service
CLOCK_SKEW_SECONDS = 10
#: the header that carries the App Check token (the name the Firebase SDKs use)
APP_CHECK_HEADER = "X-Firebase-AppCheck"


class UnsafeConfiguration(RuntimeError):
    """A setting that would let anyone call the API as anyone: the service will not start."""


def check_environment(settings: Settings) -> None:
    """Refuse to serve production with emulator (unsigned) tokens or a key file.

    Raises:
        UnsafeConfiguration: saying which setting to remove.
    """
    if settings.environment != "production":
        return
    if settings.firebase_auth_emulator_host:
        raise UnsafeConfiguration(
            "FIREBASE_AUTH_EMULATOR_HOST is set while ENVIRONMENT=production: the Auth emulator's tokens "
            "are unsigned, so anyone could call the API as anyone. Unset it (or set ENVIRONMENT=local "
            "on the local stack)."
        )
    if settings.signing_key_file:
        raise UnsafeConfiguration(
            "SIGNING_KEY_FILE is for the local stack only: in production URLs are signed through IAM "
            "(SIGNING_SERVICE_ACCOUNT)."
        )


@dataclass(frozen=True)
class User:
    uid: str
    claims: dict[str, Any]


class RevocationCache:
    """Whether a user's tokens issued at a given time still stand: the user's record in Firebase
    Auth (``tokensValidAfterTime``, ``disabled``), fetched at most once per ``ttl_seconds``."""

    def __init__(
        self, app: firebase_admin.App, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._app = app
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # uid -> (tokens valid after, epoch seconds; disabled; kept until)
        self._kept: dict[str, tuple[float, bool, float]] = {}
        self.lookups = 0

    def check(self, uid: str, issued_at: float) -> None:
        """Raises ``ApiError`` if tokens of ``uid`` issued at ``issued_at`` no longer stand."""
        valid_after, disabled = self._record(uid)
        if disabled:
            raise ApiError("invalid_token", "this user is disabled")
        if issued_at < valid_after:
            raise ApiError("invalid_token", "the ID token was revoked: sign in again")

    def _record(self, uid: str) -> tuple[float, bool]:
        now = self._clock()
        with self._lock:
            kept = self._kept.get(uid)
            if kept is not None and now < kept[2]:
                return kept[0], kept[1]
        self.lookups += 1
        try:
            user = firebase_auth.get_user(uid, app=self._app)
        except firebase_auth.UserNotFoundError as exc:
            raise ApiError("invalid_token", "this user no longer exists") from exc
        except (firebase_exceptions.FirebaseError, OSError) as exc:
            # Not known to stand: refused, with a status that says to try again.
            raise ApiError(
                "unavailable", "could not check the ID token with Firebase Auth; try again"
            ) from exc
        valid_after = (user.tokens_valid_after_timestamp or 0) / 1000
        with self._lock:
            if len(self._kept) > 100_000:  # bounded: drop everything rather than grow without end
                self._kept.clear()
            self._kept[uid] = (valid_after, bool(user.disabled), now + self._ttl)
        return valid_after, bool(user.disabled)


class _LocalKeysAppCheck(firebase_app_check._AppCheckService):  # type: ignore[misc]
    """firebase-admin's App Check verifier, with the URL of the public keys as a setting."""

    def __init__(self, app: firebase_admin.App, jwks_url: str) -> None:
        self._JWKS_URL = jwks_url  # the constructor builds its key client from it
        super().__init__(app)


class TokenVerifier:
    """Verifies ID tokens (and App Check tokens, when required) for one project (its own
    firebase-admin app, so tests can hold several)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        options = {"projectId": settings.google_cloud_project}
        # Against the emulator no credential is used; in production the runtime's own identity
        # (Application Default Credentials) fetches Google's public certificates.
        cred: credentials.Base = (
            _NoCredential() if settings.firebase_auth_emulator_host else credentials.ApplicationDefault()
        )
        self._app = firebase_admin.initialize_app(cred, options, name=f"api-{uuid.uuid4().hex}")
        self.check_revoked = settings.api_revocation_checked
        self.revocations = RevocationCache(self._app, settings.api_revocation_cache_seconds, clock)
        self.app_check_required = settings.api_app_check
        if self.app_check_required:
            url = settings.app_check_jwks_url
            # firebase-admin keeps one App Check service per app: this one, with its keys' URL.
            self._app._get_service("_app_check", lambda app: _LocalKeysAppCheck(app, url))

    def verify(
        self, authorization: str | None, app_check: str | None = None, *, check_revoked: bool | None = None
    ) -> User:
        """The caller of a request with this ``Authorization`` (and ``X-Firebase-AppCheck``) header
        (``check_revoked``: ask about revocation whatever ``API_CHECK_REVOKED`` says).

        Raises:
            ApiError: ``unauthenticated`` (no token), ``invalid_token``, ``token_expired``,
                ``app_check_required``, ``invalid_app_check``; ``unavailable`` when revocation
                could not be checked.
        """
        scheme, _, token = (authorization or "").partition(" ")
        if not authorization or scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                "unauthenticated",
                "send the user's Firebase ID token as 'Authorization: Bearer <token>' "
                "(getIdToken() in the Firebase SDK)",
            )
        user = self.verify_token(token.strip(), check_revoked=check_revoked)
        if self.app_check_required:
            self.verify_app_check(app_check)
        return user

    def verify_token(self, token: str, *, check_revoked: bool | None = None) -> User:
        """The user of an ID token; revocation checked through the cache (by default as the
        settings say; ``check_revoked=True`` to check it whatever they say).

        Raises:
            ApiError: as :meth:`verify`.
        """
        try:
            claims = firebase_auth.verify_id_token(
                token, app=self._app, check_revoked=False, clock_skew_seconds=CLOCK_SKEW_SECONDS
            )
        except firebase_auth.ExpiredIdTokenError as exc:
            raise ApiError(
                "token_expired", "the ID token has expired: get a fresh one (getIdToken(true))"
            ) from exc
        except (firebase_auth.InvalidIdTokenError, ValueError) as exc:
            raise ApiError(
                "invalid_token", f"the ID token is not valid for this project: {_first_line(exc)}"
            ) from exc
        _check_times(claims)
        uid = claims.get("uid")
        if not isinstance(uid, str) or not UID_PATTERN.fullmatch(uid):
            raise ApiError("invalid_token", "the token's user id is not one this service accepts")
        user = User(uid=uid, claims=claims)
        if self.check_revoked if check_revoked is None else check_revoked:
            self.check_not_revoked(user)
        return user

    def check_not_revoked(self, user: User) -> None:
        """Raises ``ApiError`` if ``user``'s token was revoked (or the user disabled or deleted)
        since it was issued, as known at most ``api_revocation_cache_seconds`` ago."""
        self.revocations.check(user.uid, float(user.claims.get("iat", 0)))

    def verify_app_check(self, token: str | None) -> dict[str, Any]:
        """The claims of an App Check token (``app_id``: the Firebase app it attests).

        Raises:
            ApiError: ``app_check_required`` (none sent), ``invalid_app_check``, ``unavailable``
                (App Check's keys could not be fetched).
        """
        if not token or not token.strip():
            raise ApiError(
                "app_check_required",
                f"send a Firebase App Check token in the {APP_CHECK_HEADER} header "
                "(getToken() in the Firebase App Check SDK)",
            )
        try:
            claims: dict[str, Any] = firebase_app_check.verify_token(token.strip(), app=self._app)
        except jwt.PyJWKClientConnectionError as exc:
            raise ApiError("unavailable", "could not fetch App Check's keys; try again") from exc
        except (ValueError, jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise ApiError(
                "invalid_app_check", f"the {APP_CHECK_HEADER} token is not valid for this project"
            ) from exc
        return claims

    def close(self) -> None:
        firebase_admin.delete_app(self._app)


def _check_times(claims: dict[str, Any]) -> None:
    """Expiry and issue time, checked here too: firebase-admin skips them for emulator tokens."""
    now = time.time()
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise ApiError("invalid_token", "the ID token has no expiry or issue time")
    if exp < now - CLOCK_SKEW_SECONDS:
        raise ApiError("token_expired", "the ID token has expired: get a fresh one (getIdToken(true))")
    if iat > now + CLOCK_SKEW_SECONDS:
        raise ApiError("invalid_token", "the ID token was issued in the future")


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


class _NoCredential(credentials.Base):  # type: ignore[misc]
    """The Auth emulator takes no credential; firebase-admin still wants an object."""

    def get_credential(self) -> Any:
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]
