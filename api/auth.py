"""Who is calling: a Firebase ID token in ``Authorization: Bearer``, verified with firebase-admin.

In production the token's Google signature, audience (the project), issuer and expiry are
checked. Against the Auth emulator (``FIREBASE_AUTH_EMULATOR_HOST``) tokens are unsigned, which
is why :func:`check_environment` refuses that variable in production.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import firebase_admin
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from firebase_admin import auth as firebase_auth
from firebase_admin import credentials

from api.errors import ApiError
from core.contract import UID_PATTERN
from infra.settings import Settings

#: leeway on ``iat`` and ``exp`` for clock drift between the token's issuer and this service
CLOCK_SKEW_SECONDS = 10


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


class TokenVerifier:
    """Verifies ID tokens for one project (its own firebase-admin app, so tests can hold several)."""

    def __init__(self, settings: Settings) -> None:
        options = {"projectId": settings.google_cloud_project}
        # Against the emulator no credential is used; in production the runtime's own identity
        # (Application Default Credentials) fetches Google's public certificates.
        cred: credentials.Base = (
            _NoCredential() if settings.firebase_auth_emulator_host else credentials.ApplicationDefault()
        )
        self._app = firebase_admin.initialize_app(cred, options, name=f"api-{uuid.uuid4().hex}")
        self._check_revoked = settings.api_check_revoked

    def verify(self, authorization: str | None, *, check_revoked: bool | None = None) -> User:
        """The caller of a request with this ``Authorization`` header (``check_revoked``: ask Firebase
        Auth about revocation whatever ``API_CHECK_REVOKED`` says).

        Raises:
            ApiError: ``unauthenticated`` (no token), ``invalid_token``, ``token_expired``.
        """
        scheme, _, token = (authorization or "").partition(" ")
        if not authorization or scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                "unauthenticated",
                "send the user's Firebase ID token as 'Authorization: Bearer <token>' "
                "(getIdToken() in the Firebase SDK)",
            )
        try:
            claims = firebase_auth.verify_id_token(
                token.strip(),
                app=self._app,
                check_revoked=self._check_revoked if check_revoked is None else check_revoked,
                clock_skew_seconds=CLOCK_SKEW_SECONDS,
            )
        except firebase_auth.ExpiredIdTokenError as exc:
            raise ApiError(
                "token_expired", "the ID token has expired: get a fresh one (getIdToken(true))"
            ) from exc
        except firebase_auth.RevokedIdTokenError as exc:
            raise ApiError("invalid_token", "the ID token was revoked: sign in again") from exc
        except firebase_auth.UserDisabledError as exc:
            raise ApiError("invalid_token", "this user is disabled") from exc
        except (firebase_auth.InvalidIdTokenError, firebase_auth.UserNotFoundError, ValueError) as exc:
            raise ApiError(
                "invalid_token", f"the ID token is not valid for this project: {_first_line(exc)}"
            ) from exc
        _check_times(claims)
        uid = claims.get("uid")
        if not isinstance(uid, str) or not UID_PATTERN.match(uid):
            raise ApiError("invalid_token", "the token's user id is not one this service accepts")
        return User(uid=uid, claims=claims)

    def close(self) -> None:
        firebase_admin.delete_app(self._app)


async def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> User:
    """The verified caller of a request; 401 without a valid token."""
    verifier: TokenVerifier = request.app.state.api.verifier
    return await run_in_threadpool(verifier.verify, authorization)


#: a route's verified caller, as a parameter: ``user: Caller``
Caller = Annotated[User, Depends(caller)]


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
