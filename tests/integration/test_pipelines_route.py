"""``GET /v1/pipelines`` on the stack's own API process: what a signed-in app learns about the
enabled pipelines, that a caller without a token learns nothing, and that the answer can be
reused (ETag). The web client's form built from it runs in tests/integration/test_browser.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from devkit.firebase_auth import AuthUser, sign_up
from infra.localstack.stack import LocalStack

# The browser test's pipelines: run together, both files share one stack.
pytestmark = pytest.mark.pipelines("inpaint", "transcribe", "flaky")


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.env["API_URL"], timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def user(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def test_the_enabled_pipelines_with_their_schemas_files_and_caps(
    api: httpx.Client, user: AuthUser, stack: LocalStack
) -> None:
    resp = api.get("/v1/pipelines", headers=user.headers)
    assert resp.status_code == 200, resp.text
    found = {p["name"]: p for p in resp.json()["pipelines"]}
    assert sorted(found) == sorted(stack.config.enabled_pipelines)
    transcribe, inpaint = found["transcribe"], found["inpaint"]
    assert transcribe["streams"] is True and inpaint["streams"] is False
    # Files: the pipeline's own types, no larger than this deployment's uploads (MAX_INPUT_BYTES).
    assert transcribe["files"] == {"media": {"contentTypes": ["audio/*", "video/*"], "maxBytes": 3 * 2**20}}
    assert inpaint["inputSchema"]["properties"]["mask"]["x-file"]["maxBytes"] == 3 * 2**20
    assert inpaint["inputSchema"]["required"] == ["image", "mask"]
    caps = {c["quantity"]: c for c in transcribe["limits"]}
    assert caps["duration_seconds"]["code"] == "duration_exceeded"
    assert found["flaky"]["inputSchema"]["properties"]["steps"]["maximum"] == 10_000


def test_without_a_token_it_is_a_401(api: httpx.Client) -> None:
    resp = api.get("/v1/pipelines")
    assert resp.status_code == 401
    assert resp.json()["code"] == "unauthenticated"
    assert "pipelines" not in resp.text


def test_the_answer_is_cached_by_its_etag(api: httpx.Client, user: AuthUser) -> None:
    first = api.get("/v1/pipelines", headers=user.headers)
    etag = first.headers["etag"]
    assert "private" in first.headers["cache-control"]
    again = api.get("/v1/pipelines", headers={**user.headers, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert api.get("/v1/pipelines", headers=user.headers).content == first.content


def test_the_route_is_in_the_openapi_document(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    operation = paths["/v1/pipelines"]["get"]
    assert "200" in operation["responses"] and "401" in operation["responses"]
