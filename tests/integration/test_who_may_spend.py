"""Who may spend, on the running stack with real Auth emulator users: anonymous accounts have their
own smaller quota tier, revoked tokens are refused (through a short cache), App Check tokens are
required when configured, and a job id with non-ASCII letters is rejected by the trigger at once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from firebase_admin import auth as firebase_auth

from api.__main__ import build
from api.app import create_app
from api.auth import TokenVerifier
from api.errors import ApiError
from core.contract import JobStatus, read_job
from devkit.app_check import serve_app_check_keys
from devkit.firebase_auth import AuthUser, new_email, sign_up
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from tests.integration.conftest import TIER_ANONYMOUS_DAILY, TIER_PIPELINE

pytestmark = pytest.mark.pipelines("automaton", "transcribe")

TINY = {"width": 16, "height": 16, "frames": 1, "fps": 1}


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.env["API_URL"], timeout=60) as http:
        yield http


def _user(stack: LocalStack, *, anonymous: bool) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"], None if anonymous else new_email())


def _create(api: httpx.Client, user: AuthUser) -> httpx.Response:
    return api.post("/v1/jobs", headers=user.headers, json={"pipeline": TIER_PIPELINE, "inputs": TINY})


def _wait_final(client: Client, job_id: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snap = client.jobs().document(job_id).get()
        if snap.exists:
            job = read_job(snap.to_dict() or {})
            if job.status is not None and job.status.is_final:
                return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not end in {timeout} s")


# -- quota tiers per sign-in provider ------------------------------------------------------------


def test_an_anonymous_account_gets_the_smaller_tier_over_the_api(
    stack: LocalStack, api: httpx.Client
) -> None:
    anonymous, member = _user(stack, anonymous=True), _user(stack, anonymous=False)
    admitted = [_create(api, anonymous) for _ in range(TIER_ANONYMOUS_DAILY)]
    assert [a.status_code for a in admitted] == [201] * TIER_ANONYMOUS_DAILY, [a.text for a in admitted]
    refused = _create(api, anonymous)
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "quota_exceeded"
    assert f"{TIER_PIPELINE} jobs today" in refused.json()["message"]
    # Signed in with email and password: the top-level caps (no daily cap on this pipeline).
    for _ in range(TIER_ANONYMOUS_DAILY + 1):
        answer = _create(api, member)
        assert answer.status_code == 201, answer.text


def test_an_anonymous_account_gets_the_smaller_tier_for_a_job_document_too(
    stack: LocalStack, client: Client
) -> None:
    # A client writing jobs/{id} itself passes the job-created function, not the API.
    anonymous = _user(stack, anonymous=True)
    ids = [client.create_job(anonymous.uid, TIER_PIPELINE, TINY) for _ in range(TIER_ANONYMOUS_DAILY + 1)]
    ends = {job_id: _wait_final(client, job_id) for job_id in ids}
    rejected = [j for j in ends.values() if j.status is JobStatus.REJECTED]
    assert len(rejected) == 1, {k: (v.status, v.error) for k, v in ends.items()}
    assert rejected[0].error.code == "quota_exceeded" and "today" in rejected[0].error.message


# -- revocation ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _revoke(verifier: TokenVerifier, uid: str) -> None:
    # Tokens issued in the same second as the revocation still stand (Auth counts in seconds).
    time.sleep(1.1)
    firebase_auth.revoke_refresh_tokens(uid, app=verifier._app)


def test_a_revoked_token_is_refused_by_the_api(stack: LocalStack, api: httpx.Client) -> None:
    user = _user(stack, anonymous=True)
    verifier = TokenVerifier(Settings())
    try:
        _revoke(verifier, user.uid)
    finally:
        verifier.close()
    answer = api.get("/v1/jobs", headers=user.headers)
    assert answer.status_code == 401, answer.text
    assert answer.json()["code"] == "invalid_token" and "revoked" in answer.json()["message"]


def test_revocation_is_asked_of_auth_once_per_user_per_cache_lifetime(stack: LocalStack) -> None:
    clock = FakeClock()
    verifier = TokenVerifier(Settings(api_check_revoked=True, api_revocation_cache_seconds=30), clock=clock)
    user = _user(stack, anonymous=True)
    try:
        for _ in range(5):
            assert verifier.verify_token(user.token).uid == user.uid
        assert verifier.revocations.lookups == 1
        _revoke(verifier, user.uid)
        # Within the cache lifetime the last answer stands; after it, the revocation is seen.
        assert verifier.verify_token(user.token).uid == user.uid
        clock.now += 31
        with pytest.raises(ApiError, match="revoked") as refused:
            verifier.verify_token(user.token)
        assert refused.value.status == 401
        assert verifier.revocations.lookups == 2
        # A stream that holds the user checks it through the same cache.
        with pytest.raises(ApiError, match="revoked"):
            verifier.check_not_revoked(verifier.verify_token(user.token, check_revoked=False))
    finally:
        verifier.close()


# -- App Check -----------------------------------------------------------------------------------


def test_the_api_requires_an_app_check_token_when_configured(stack: LocalStack) -> None:
    user = _user(stack, anonymous=False)
    with serve_app_check_keys(Settings().google_cloud_project) as keys:
        settings = Settings(api_app_check=True, app_check_jwks_url=keys.url)
        with TestClient(create_app(build(settings))) as http:
            missing = http.get("/v1/jobs", headers=user.headers)
            assert missing.status_code == 401
            assert missing.json()["code"] == "app_check_required"
            assert "X-Firebase-AppCheck" in missing.json()["message"]
            forged = http.get(
                "/v1/jobs", headers={**user.headers, "X-Firebase-AppCheck": keys.token(aud=["x"])}
            )
            assert (forged.status_code, forged.json()["code"]) == (401, "invalid_app_check")
            good = http.get("/v1/jobs", headers={**user.headers, "X-Firebase-AppCheck": keys.token()})
            assert good.status_code == 200, good.text
            # The ID token is still required: App Check says which app, not which user.
            assert http.get("/v1/jobs", headers={"X-Firebase-AppCheck": keys.token()}).status_code == 401


# -- the trigger path ------------------------------------------------------------------------------


def test_a_non_ascii_job_id_is_rejected_by_the_trigger(stack: LocalStack, client: Client, uid: str) -> None:
    job_id = f"jöb-{uuid.uuid4().hex[:8]}"
    client.jobs().document(job_id).set(
        {"uid": uid, "pipeline": "transcribe", "inputs": {}, "status": "pending"}
    )
    job = _wait_final(client, job_id)
    assert job.status is JobStatus.REJECTED and job.error.code == "invalid_job_id", job.error
    # Rejected by its created-event, not found later by the sweeper: the relay dropped nothing.
    relay = httpx.get(f"http://127.0.0.1:{stack.ports['eventarc']}/", timeout=10).text
    assert "dropped: 0" in relay, relay
