"""Who may push: the Google-signed OIDC token on every Pub/Sub push, verified.

A push subscription with ``oidc_token`` sends ``Authorization: Bearer <ID token>``, an ID token
that Google signs for the subscription's service account, with the subscription's audience (the
push endpoint URL when none is set). Cloud Run's IAM check runs before the service sees a request;
this check holds on its own, so a service opened to ``allUsers`` or reached another way still runs
only what Pub/Sub pushed.

The signature, ``exp``/``iat`` (with a little clock skew) and ``aud`` are checked by google-auth
against the certificates at ``PUSH_CERTS_URL``; the issuer, the service account and
``email_verified`` here. A refusal carries a short reason and never the token.

The certificates are fetched once and kept for as long as their response's ``Cache-Control:
max-age`` says (Google's say hours), not fetched again on every push; a token naming a key the
kept copy lacks (Google rotated its keys) fetches them again, at most once per
:data:`MIN_REFETCH_SECONDS`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.auth import exceptions as auth_exceptions
from google.auth import transport
from google.auth.transport import requests as auth_requests
from google.oauth2 import id_token

from infra.settings import Settings

log = logging.getLogger(__name__)

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
CERTS_TIMEOUT_SECONDS = 10.0
#: how long certificates are kept when their response names no lifetime
DEFAULT_CERTS_SECONDS = 60.0
#: the longest they are kept, whatever the response says
MAX_CERTS_SECONDS = 24 * 3600.0
#: a token signed by a key the kept certificates lack fetches them again, at most this often
MIN_REFETCH_SECONDS = 30.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)\s*(?:,|$)", re.IGNORECASE)

# google-auth reports every failure as a ValueError whose message may quote the token; only the
# kind of failure is kept, read from the message's start. Anything else is "token not verified".
_REASONS = (
    ("Wrong number of segments", "malformed token"),
    ("Can't parse segment", "malformed token"),
    ("Could not verify token signature", "bad signature"),
    ("Certificate for key id", "signed by an unknown key"),
    ("Token expired", "token expired"),
    ("Token used too early", "token used before it was issued"),
    ("Token has wrong audience", "wrong audience"),
)


class PushAuthError(Exception):
    """A push refused before any job work; ``reason`` is short and never contains the token."""

    status_code = 403

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MissingToken(PushAuthError):
    """No bearer token in the request (401)."""

    status_code = 401


class BadToken(PushAuthError):
    """A token that is not Google's, not for this service, or not from the push account (403)."""

    status_code = 403


class CertsUnavailable(PushAuthError):
    """Google's signing certificates could not be fetched: the pusher is not at fault (503, redelivered)."""

    status_code = 503


class PushAuthConfigError(ValueError):
    """Verification is on but what it checks against is not set: the service refuses to start."""


class _CertsRequest(auth_requests.Request):
    """google-auth's transport, with a bounded wait for the certificates (its default is 120 s)."""

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = CERTS_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> transport.Response:
        response: transport.Response = super().__call__(  # type: ignore[no-untyped-call]
            url, method=method, body=body, headers=headers, timeout=timeout, **kwargs
        )
        return response


def cache_lifetime(headers: Mapping[str, str]) -> float:
    """Seconds a response may be kept, from its ``Cache-Control`` (and ``Age``) headers."""
    lower = {k.lower(): v for k, v in headers.items()}
    control = lower.get("cache-control", "")
    if re.search(r"no-store|no-cache", control, re.IGNORECASE):
        return 0.0
    found = _MAX_AGE.search(control)
    if not found:
        return DEFAULT_CERTS_SECONDS
    age = lower.get("age", "0").strip()
    lifetime = int(found.group(1)) - (int(age) if age.isdigit() else 0)
    return float(min(max(lifetime, 0), MAX_CERTS_SECONDS))


class _CachedCerts:
    """A transport for google-auth that answers a GET of the certificates from a kept copy while
    its HTTP cache lifetime lasts; anything else (and every failed fetch) goes to the network."""

    def __init__(self, request: _CertsRequest, clock: Callable[[], float]) -> None:
        self._request = request
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[transport.Response, float, float]] = {}  # url -> (response, until, at)
        self.fetches = 0

    def __call__(self, url: str, method: str = "GET", **kwargs: Any) -> transport.Response:
        if method != "GET":
            return self._request(url, method=method, **kwargs)
        with self._lock:  # one fetch at a time: a burst of pushes after expiry fetches once
            now = self._clock()
            kept = self._kept.get(url)
            if kept is not None and now < kept[1]:
                return kept[0]
            response = self._request(url, method=method, **kwargs)
            self.fetches += 1
            if response.status == 200:
                lifetime = cache_lifetime(dict(response.headers))
                self._kept[url] = (response, now + lifetime, now)
            return response

    def forget_if_older_than(self, url: str, seconds: float) -> bool:
        """Drop the kept copy of ``url`` if it was fetched at least ``seconds`` ago."""
        with self._lock:
            kept = self._kept.get(url)
            if kept is None or self._clock() - kept[2] < seconds:
                return False
            del self._kept[url]
            return True


class PushVerifier:
    """Verifies the ``Authorization`` header of one push at a time; built once per process."""

    def __init__(
        self,
        *,
        audience: str,
        service_account: str,
        certs_url: str = "https://www.googleapis.com/oauth2/v1/certs",
        clock_skew_seconds: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audience = audience
        self.service_account = service_account
        self.certs_url = certs_url
        self.clock_skew_seconds = clock_skew_seconds
        # One session, and the certificates kept for their HTTP cache lifetime.
        self._certs = _CachedCerts(_CertsRequest(), clock)

    @property
    def certificate_fetches(self) -> int:
        """How many times the certificates were fetched (for the tests and the logs)."""
        return self._certs.fetches

    @classmethod
    def from_settings(cls, settings: Settings) -> PushVerifier | None:
        """The verifier the settings ask for, or None when verification is off.

        Raises:
            PushAuthConfigError: verification is on and PUSH_AUDIENCE or PUSH_SERVICE_ACCOUNT is unset.
        """
        if not settings.push_auth_enabled:
            # Allowed rather than refused: Cloud Run's IAM check still guards the service, and an
            # operator may need a way out (a proxy in front that authenticates, an incident). It
            # is said at every start, so it cannot go unnoticed.
            if not settings.using_emulators:
                log.warning(
                    "PUSH_AUTH=off outside the emulators: push tokens are NOT verified; "
                    "any caller that gets past Cloud Run IAM can run jobs"
                )
            return None
        audience, account = settings.push_audience, settings.push_service_account
        if not audience or not account:
            missing = [
                name for name, v in (("PUSH_AUDIENCE", audience), ("PUSH_SERVICE_ACCOUNT", account)) if not v
            ]
            why = "PUSH_AUTH=oidc" if settings.push_auth == "oidc" else "PUSH_AUTH=auto and no emulators"
            raise PushAuthConfigError(
                f"push authentication is on ({why}) but {' and '.join(missing)} not set: set them to "
                "the push subscriptions' OIDC audience and service account email"
            )
        return cls(
            audience=audience,
            service_account=account,
            certs_url=settings.push_certs_url,
            clock_skew_seconds=settings.push_clock_skew_seconds,
        )

    def verify(self, authorization: str | None) -> Mapping[str, Any]:
        """Check a push's ``Authorization`` header; blocks while it fetches the certificates.

        Returns:
            The token's verified claims.

        Raises:
            MissingToken: no header, not the Bearer scheme, or an empty token.
            BadToken: the token fails any check.
            CertsUnavailable: the certificates could not be fetched.
        """
        token = _bearer(authorization)
        try:
            claims = self._verify(token)
        except BadToken as refused:
            # Google may have rotated its keys since the kept copy was fetched: fetch once more.
            if refused.reason != "signed by an unknown key" or not self._certs.forget_if_older_than(
                self.certs_url, MIN_REFETCH_SECONDS
            ):
                raise
            claims = self._verify(token)
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise BadToken("wrong issuer")
        if claims.get("email") != self.service_account:
            raise BadToken("wrong service account")
        if claims.get("email_verified") is not True:
            raise BadToken("email not verified")
        return claims

    def _verify(self, token: str) -> Mapping[str, Any]:
        try:
            claims: Mapping[str, Any] = id_token.verify_token(
                token,
                self._certs,  # type: ignore[arg-type]
                audience=self.audience,
                certs_url=self.certs_url,
                clock_skew_in_seconds=self.clock_skew_seconds,
            )
        except auth_exceptions.TransportError:
            raise CertsUnavailable("could not fetch the signing certificates") from None
        except ValueError as exc:
            # from None: google-auth's exception may quote the token.
            raise BadToken(_reason(exc)) from None
        return claims


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise MissingToken("missing Authorization header")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("Authorization is not a Bearer token")
    if not token.strip():
        raise MissingToken("empty Bearer token")
    return token.strip()


def _reason(exc: ValueError) -> str:
    text = str(exc)
    return next((reason for prefix, reason in _REASONS if text.startswith(prefix)), "token not verified")
