"""Users and ID tokens from the local stack's Firebase Auth emulator (its REST API), and
tampered copies of them for the tests that prove the API refuses them."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class AuthUser:
    uid: str
    token: str
    email: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def sign_up(auth_host: str, email: str | None = None, password: str = "secret-password") -> AuthUser:
    """A new user (anonymous without ``email``) and a fresh ID token minted by the emulator."""
    body: dict[str, Any] = {"returnSecureToken": True}
    if email:
        body |= {"email": email, "password": password}
    resp = httpx.post(
        f"http://{auth_host}/identitytoolkit.googleapis.com/v1/accounts:signUp",
        params={"key": "local-stack-api-key"},
        json=body,
        timeout=10,
    )
    resp.raise_for_status()
    data = resp.json()
    return AuthUser(uid=data["localId"], token=data["idToken"], email=email)


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def tampered(token: str, signature: str | None = None, **changes: Any) -> str:
    """``token`` with claims changed (and optionally another signature part)."""
    header, _, sig = token.split(".")
    return ".".join([header, _b64({**claims(token), **changes}), sig if signature is None else signature])
