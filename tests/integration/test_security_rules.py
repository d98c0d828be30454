"""The Firestore security rules, as an app user meets them (REST with an end-user token).

The server libraries bypass rules on the emulator, so these go through REST with an unsigned
Firebase-style JWT, which the emulator accepts in place of a real ID token.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from infra.localstack.stack import LocalStack


def _token(project: str, uid: str) -> str:
    def b64(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    now = int(time.time())
    claims = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "sub": uid,
        "user_id": uid,
        "iat": now,
        "exp": now + 3600,
        "auth_time": now,
        "firebase": {"sign_in_provider": "custom"},
    }
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


class App:
    """What an app user can do through the Firestore REST API."""

    def __init__(self, stack: LocalStack, uid: str) -> None:
        host = stack.env["FIRESTORE_EMULATOR_HOST"]
        self.base = f"http://{host}/v1/projects/{stack.config.project}/databases/(default)/documents"
        self.headers = {"Authorization": f"Bearer {_token(stack.config.project, uid)}"}

    def create(self, job_id: str, fields: dict[str, object]) -> httpx.Response:
        return httpx.post(
            f"{self.base}/jobs",
            params={"documentId": job_id},
            json={"fields": _fields(fields)},
            headers=self.headers,
        )

    def read(self, job_id: str) -> httpx.Response:
        return httpx.get(f"{self.base}/jobs/{job_id}", headers=self.headers)

    def patch(self, job_id: str, fields: dict[str, object]) -> httpx.Response:
        return httpx.patch(
            f"{self.base}/jobs/{job_id}",
            params=[("updateMask.fieldPaths", k) for k in fields],
            json={"fields": _fields(fields)},
            headers=self.headers,
        )


def _fields(values: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = {"booleanValue": value}
        elif isinstance(value, str):
            out[key] = {"stringValue": value}
        elif isinstance(value, dict):
            out[key] = {"mapValue": {"fields": _fields(value)}}
        else:
            raise TypeError(value)
    return out


@pytest.fixture
def alice(stack: LocalStack, uid: str) -> App:
    return App(stack, uid)


def test_user_creates_own_job_and_reads_it(alice: App, uid: str) -> None:
    job = {"uid": uid, "pipeline": "nothing-here", "inputs": {}}
    assert alice.create(f"r1-{uid}", job).status_code == 200
    assert alice.read(f"r1-{uid}").status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {"uid": "someone-else", "pipeline": "transcribe", "inputs": {}},
        {"pipeline": "transcribe", "inputs": {}, "status": "succeeded"},
        {"pipeline": "transcribe", "inputs": {}, "outputs": {"text": "forged"}},
    ],
    ids=["for-another-user", "with-a-final-status", "with-outputs"],
)
def test_user_cannot_create_forged_jobs(alice: App, uid: str, fields: dict[str, object]) -> None:
    fields = {"uid": uid, **fields}
    assert alice.create(f"r2-{uid}", fields).status_code == 403


def test_user_cannot_read_or_change_another_users_job(stack: LocalStack, alice: App, uid: str) -> None:
    assert (
        alice.create(f"r3-{uid}", {"uid": uid, "pipeline": "nothing-here", "inputs": {}}).status_code == 200
    )
    mallory = App(stack, f"{uid}-mallory")
    assert mallory.read(f"r3-{uid}").status_code == 403
    assert mallory.patch(f"r3-{uid}", {"cancelRequested": True}).status_code == 403


def test_user_may_only_request_cancellation(alice: App, uid: str) -> None:
    assert (
        alice.create(f"r4-{uid}", {"uid": uid, "pipeline": "nothing-here", "inputs": {}}).status_code == 200
    )
    assert alice.patch(f"r4-{uid}", {"status": "succeeded"}).status_code == 403
    assert alice.patch(f"r4-{uid}", {"cancelRequested": True}).status_code == 200
