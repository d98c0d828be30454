"""The HTTP API against the running stack, with real Auth emulator tokens.

Who may call (missing, expired, forged and another project's tokens are refused), what a caller
sees (never another user's job), signed URLs (only their object, type and size; they expire),
idempotent creates, quotas under concurrent creation, and the event stream.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.signing import UrlSigner
from devkit.firebase_auth import AuthUser, claims, sign_up, tampered
from infra.blobs import storage_client
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from tests.integration.conftest import QUOTA_CAP, QUOTA_PIPELINE

pytestmark = pytest.mark.pipelines("transcribe", "flaky", "flakyslow")

LONG = {"steps": 400, "step_seconds": 0.05}  # 20 s unless cancelled


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    # The server closes a connection idle for 5 s (uvicorn's keep-alive); a client that kept it as
    # long could send a request on it as it closes ("Server disconnected without sending a
    # response"): this one lets idle connections go first.
    limits = httpx.Limits(keepalive_expiry=2.0)
    with httpx.Client(base_url=stack.env["API_URL"], timeout=60, limits=limits) as http:
        yield http


@pytest.fixture
def alice(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


@pytest.fixture
def bob(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def create(
    api: httpx.Client, user: AuthUser, pipeline: str = "flaky", key: str | None = None, **inputs: Any
) -> httpx.Response:
    headers = {**user.headers, **({"Idempotency-Key": key} if key else {})}
    return api.post("/v1/jobs", headers=headers, json={"pipeline": pipeline, "inputs": inputs})


def problem(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["code"] == code, body
    assert body["message"]
    return body


# -- who may call --------------------------------------------------------------------------------


def test_the_openapi_schema_is_served_without_a_token(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/uploads", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events"} <= set(paths)
    assert api.get("/docs").status_code == 200


def test_a_valid_token_is_accepted(api: httpx.Client, alice: AuthUser) -> None:
    assert api.get("/v1/jobs", headers=alice.headers).json() == {"jobs": [], "nextPageToken": None}


@pytest.mark.parametrize(
    ("make_header", "code"),
    [
        (lambda u: None, "unauthenticated"),
        (lambda u: f"Basic {u.token}", "unauthenticated"),
        (lambda u: "Bearer not-a-jwt", "invalid_token"),
        (
            lambda u: f"Bearer {tampered(u.token, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)}",
            "token_expired",
        ),
        (
            lambda u: (
                f"Bearer {tampered(u.token, aud='another-project', iss='https://securetoken.google.com/another-project')}"
            ),
            "invalid_token",
        ),
        # Unsigned emulator tokens can be made up; one naming a user the project does not have is refused.
        (
            lambda u: f"Bearer {tampered(u.token, sub='made-up-user', user_id='made-up-user')}",
            "invalid_token",
        ),
        (lambda u: f"Bearer {tampered(u.token, iat=int(time.time()) + 3600)}", "invalid_token"),
    ],
    ids=[
        "missing",
        "not-bearer",
        "garbage",
        "expired",
        "another-project",
        "forged-user",
        "issued-in-the-future",
    ],
)
def test_requests_without_a_valid_token_are_refused(
    api: httpx.Client, alice: AuthUser, make_header: Any, code: str
) -> None:
    header = make_header(alice)
    resp = api.post(
        "/v1/jobs", headers={"Authorization": header} if header else {}, json={"pipeline": "flaky"}
    )
    problem(resp, 401, code)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_another_users_job_is_invisible(api: httpx.Client, alice: AuthUser, bob: AuthUser) -> None:
    job = create(api, alice, **LONG).json()
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/results"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
    ]:
        problem(api.request(method, path, headers=bob.headers), 404, "not_found")
    assert api.get("/v1/jobs", headers=bob.headers).json()["jobs"] == []
    assert api.get(f"/v1/jobs/{job['id']}", headers=alice.headers).json()["cancelRequested"] is False
    api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice.headers)


def test_a_job_may_not_name_another_users_file(
    api: httpx.Client, alice: AuthUser, bob: AuthUser, settings: Settings
) -> None:
    theirs = f"gs://{settings.media_bucket}/uploads/{bob.uid}/talk.wav"
    problem(create(api, alice, "transcribe", media=theirs), 403, "forbidden_object")


# -- uploads and results --------------------------------------------------------------------------


def upload_slot(
    api: httpx.Client, user: AuthUser, size: int, content_type: str = "audio/wav"
) -> dict[str, Any]:
    resp = api.post(
        "/v1/uploads",
        headers=user.headers,
        json={"name": "talk.wav", "contentType": content_type, "size": size},
    )
    assert resp.status_code == 201, resp.text
    slot: dict[str, Any] = resp.json()
    assert slot["uri"].startswith("gs://") and f"/uploads/{user.uid}/" in slot["uri"]
    return slot


def test_an_upload_url_works_only_for_its_object_type_and_size(
    api: httpx.Client, alice: AuthUser, client: Client
) -> None:
    body = b"RIFF" + b"\0" * 996
    slot = upload_slot(api, alice, len(body))
    url, headers = slot["url"], slot["headers"]
    other_object = url.replace("talk.wav", "other.wav")
    assert httpx.put(other_object, headers=headers, content=body).status_code == 403
    assert httpx.put(url, headers={**headers, "Content-Type": "image/png"}, content=body).status_code == 403
    without_range = {k: v for k, v in headers.items() if k.lower() != "x-goog-content-length-range"}
    assert httpx.put(url, headers=without_range, content=body).status_code == 403
    too_big = httpx.put(url, headers=headers, content=body + b"x")
    assert too_big.status_code == 400 and b"EntityTooLarge" in too_big.content
    assert client.gcs.bucket(client.settings.media_bucket).get_blob(slot["uri"].split("/", 3)[3]) is None
    assert httpx.put(url, headers=headers, content=body).status_code == 200
    blob = client.gcs.bucket(client.settings.media_bucket).get_blob(slot["uri"].split("/", 3)[3])
    assert blob is not None and blob.size == len(body) and blob.content_type == "audio/wav"


def test_upload_requests_are_checked(api: httpx.Client, alice: AuthUser, settings: Settings) -> None:
    def ask(**body: Any) -> httpx.Response:
        return api.post(
            "/v1/uploads",
            headers=alice.headers,
            json={"name": "a.wav", "contentType": "audio/wav", "size": 1, **body},
        )

    problem(ask(name="../../etc/passwd"), 400, "invalid_request")
    problem(ask(contentType="not a type"), 400, "invalid_request")
    problem(ask(size=0), 400, "invalid_request")
    problem(ask(size=settings.max_input_bytes + 1), 422, "too_large")


def test_signed_urls_expire(settings: Settings, client: Client, alice: AuthUser) -> None:
    # Lifetimes long enough to be used at once on a busy machine, short enough to wait out.
    short = settings.model_copy(update={"upload_url_seconds": 4, "download_url_seconds": 4})
    signer = UrlSigner(short, storage_client(settings))
    uri = f"gs://{settings.media_bucket}/uploads/{alice.uid}/expiring.txt"
    url, headers, _ = signer.upload(uri, "text/plain", 10)
    get_url, _ = signer.download(uri)
    signed_at = time.monotonic()
    assert httpx.put(url, headers=headers, content=b"hello").status_code == 200
    assert httpx.get(get_url).content == b"hello"
    time.sleep(max(0.0, signed_at + 5.2 - time.monotonic()))
    expired = httpx.put(url, headers=headers, content=b"hello")
    assert expired.status_code == 400 and b"ExpiredToken" in expired.content
    assert httpx.get(get_url).status_code == 400


def test_upload_create_wait_and_fetch_results(api: httpx.Client, alice: AuthUser, media_dir: Path) -> None:
    from devkit.speech import synthesize

    wav = synthesize("The quarterly report is due on Friday.", media_dir / f"api-{uuid.uuid4().hex[:6]}.wav")
    slot = upload_slot(api, alice, wav.stat().st_size)
    assert httpx.put(slot["url"], headers=slot["headers"], content=wav.read_bytes()).status_code == 200
    resp = api.post(
        "/v1/jobs?wait=60",
        headers=alice.headers,
        json={"pipeline": "transcribe", "inputs": {"media": slot["uri"]}},
        timeout=90,  # past the wait: a job still running at 60 s is answered, not cut off
    )
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["status"] == "succeeded", job
    assert "report" in job["outputs"]["text"].lower()
    results = api.get(f"/v1/jobs/{job['id']}/results", headers=alice.headers).json()
    files = {f["name"]: f["url"] for f in results["files"]}
    assert set(files) >= {"transcript.txt", "transcript.srt"}
    assert "report" in httpx.get(files["transcript.txt"]).text.lower()
    # A result URL is for that object only.
    assert httpx.get(files["transcript.txt"].replace("transcript.txt", "transcript.srt")).status_code == 403


def test_results_of_a_job_that_did_not_succeed_say_why(api: httpx.Client, alice: AuthUser) -> None:
    failed = api.post(
        "/v1/jobs?wait=30",
        headers=alice.headers,
        json={"pipeline": "flaky", "inputs": {"fail_permanently": True}},
    ).json()
    assert failed["status"] == "failed"
    body = problem(api.get(f"/v1/jobs/{failed['id']}/results", headers=alice.headers), 409, "told_to_fail")
    assert body["message"] == failed["error"]["message"]
    running = create(api, alice, **LONG).json()
    problem(api.get(f"/v1/jobs/{running['id']}/results", headers=alice.headers), 409, "not_finished")
    api.post(f"/v1/jobs/{running['id']}/cancel", headers=alice.headers)


# -- creating jobs ----------------------------------------------------------------------------------


def test_a_rejected_job_answers_with_the_job_documents_error(
    api: httpx.Client, alice: AuthUser, client: Client
) -> None:
    body = problem(create(api, alice, "transcribe", beam_size=99), 422, "invalid_inputs")
    jobs = api.get("/v1/jobs", headers=alice.headers).json()["jobs"]
    assert len(jobs) == 1 and jobs[0]["status"] == "rejected"
    assert jobs[0]["error"]["code"] == body["code"] and jobs[0]["error"]["message"] == body["message"]
    problem(create(api, alice, "paint-my-house"), 422, "unknown_pipeline")


def test_malformed_requests_are_json_errors(api: httpx.Client, alice: AuthUser) -> None:
    problem(
        api.post("/v1/jobs", headers={**alice.headers, "Content-Type": "application/json"}, content=b"{"),
        400,
        "invalid_request",
    )
    problem(api.post("/v1/jobs", headers=alice.headers, json={"inputs": {}}), 400, "invalid_request")
    problem(api.get("/v1/nothing-here", headers=alice.headers), 404, "not_found")
    problem(api.get("/v1/jobs/not.a.job.id", headers=alice.headers), 404, "not_found")
    problem(api.get("/v1/jobs", params={"pageSize": 0}, headers=alice.headers), 400, "invalid_request")


def test_a_retried_create_makes_one_job(api: httpx.Client, alice: AuthUser, client: Client) -> None:
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: create(api, alice, key=key, steps=2), range(4)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["id"] for a in answers}) == 1
    assert len(client.list(alice.uid)) == 1
    problem(create(api, alice, key=key, steps=3), 409, "idempotency_key_reused")


def test_wait_answers_with_the_outputs(api: httpx.Client, alice: AuthUser) -> None:
    job = api.post(
        "/v1/jobs?wait=30", headers=alice.headers, json={"pipeline": "flaky", "inputs": {"steps": 3}}
    ).json()
    assert job["status"] == "succeeded"
    assert job["outputs"]["steps"] == 3 and "result.txt" in job["outputs"]["files"]


def test_my_jobs_newest_first_page_by_page(api: httpx.Client, alice: AuthUser) -> None:
    made = [create(api, alice, steps=1).json()["id"] for _ in range(3)]
    first = api.get("/v1/jobs", params={"pageSize": 2}, headers=alice.headers).json()
    assert [j["id"] for j in first["jobs"]] == made[::-1][:2]
    rest = api.get(
        "/v1/jobs", params={"pageSize": 2, "pageToken": first["nextPageToken"]}, headers=alice.headers
    ).json()
    assert [j["id"] for j in rest["jobs"]] == made[:1] and rest["nextPageToken"] is None
    problem(
        api.get("/v1/jobs", params={"pageToken": "someone-elses"}, headers=alice.headers),
        400,
        "invalid_request",
    )


def test_cancel_stops_a_running_job(api: httpx.Client, alice: AuthUser) -> None:
    job = create(api, alice, **LONG).json()
    deadline = time.monotonic() + 30
    while api.get(f"/v1/jobs/{job['id']}", headers=alice.headers).json()["status"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice.headers).json()
    assert cancelled["cancelRequested"] is True
    while (status := api.get(f"/v1/jobs/{job['id']}", headers=alice.headers).json()["status"]) == "running":
        assert time.monotonic() < deadline, "the job never stopped"
        time.sleep(0.1)
    assert status == "cancelled"
    problem(api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice.headers), 409, "already_final")


# -- quotas -----------------------------------------------------------------------------------------


def test_a_flood_of_creates_is_slowed_down_exactly_at_the_cap(
    api: httpx.Client, alice: AuthUser, client: Client
) -> None:
    n = QUOTA_CAP + 7
    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(lambda _: create(api, alice, QUOTA_PIPELINE, **LONG), range(n)))
    admitted = [a.json() for a in answers if a.status_code == 201]
    refused = [a for a in answers if a.status_code != 201]
    assert len(admitted) == QUOTA_CAP, [a.text for a in answers]
    for resp in refused:
        body = problem(resp, 429, "quota_exceeded")
        assert int(resp.headers["Retry-After"]) > 0 and body["retryAfterSeconds"] == int(
            resp.headers["Retry-After"]
        )
        assert f"the limit is {QUOTA_CAP}" in body["message"]
    ledger = client.db.collection("quotas").document(alice.uid).get().to_dict()
    assert sorted(ledger["active"]) == sorted(j["id"] for j in admitted)
    # A job that ends frees its place: the next create is admitted.
    api.post(f"/v1/jobs/{admitted[0]['id']}/cancel", headers=alice.headers)
    deadline = time.monotonic() + 30
    while api.get(f"/v1/jobs/{admitted[0]['id']}", headers=alice.headers).json()["status"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    again = create(api, alice, QUOTA_PIPELINE, **LONG)
    assert again.status_code == 201, again.text
    for job in [*admitted[1:], again.json()]:
        api.post(f"/v1/jobs/{job['id']}/cancel", headers=alice.headers)


def test_job_documents_over_the_cap_end_rejected(client: Client, uid: str) -> None:
    n = QUOTA_CAP + 4
    with ThreadPoolExecutor(n) as pool:
        ids = list(pool.map(lambda _: client.create_job(uid, QUOTA_PIPELINE, dict(LONG)), range(n)))
    deadline = time.monotonic() + 30
    while True:
        jobs = {i: client.get(i) for i in ids}
        states = [j.status.value if j and j.status else "pending" for j in jobs.values()]
        if "pending" not in states or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    rejected = [j for j in jobs.values() if j and j.error and j.error.code == "quota_exceeded"]
    assert len(rejected) == n - QUOTA_CAP, states
    assert all(
        j.status and j.status.value == "rejected" and j.error.retry_after_seconds for j in rejected if j.error
    )
    for job_id, job in jobs.items():
        if job and job.status and not job.status.is_final:
            client.cancel(job_id)


# -- following a job --------------------------------------------------------------------------------


def read_events(resp: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = None
    for line in resp.iter_lines():
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event:
            yield event, json.loads(line.removeprefix("data: "))


def test_the_event_stream_follows_the_job_and_ends_with_it(api: httpx.Client, alice: AuthUser) -> None:
    job = create(api, alice, steps=10, step_seconds=0.1).json()
    seen: list[tuple[str, dict[str, Any]]] = []
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=alice.headers, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        seen.extend(read_events(resp))
    kinds = [kind for kind, _ in seen]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    statuses = [data["status"] for kind, data in seen if kind == "job"]
    assert statuses[-1] == "succeeded" and "running" in statuses
    fractions = [
        data["progress"]["fraction"] for kind, data in seen if kind == "job" and data.get("progress")
    ]
    assert len(fractions) >= 3 and fractions == sorted(fractions)
    assert seen[-1][1] == {"id": job["id"], "status": "succeeded"}


def test_the_event_stream_of_a_finished_job_is_one_event(api: httpx.Client, alice: AuthUser) -> None:
    job = api.post(
        "/v1/jobs?wait=30", headers=alice.headers, json={"pipeline": "flaky", "inputs": {"steps": 1}}
    ).json()
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=alice.headers) as resp:
        seen = list(read_events(resp))
    assert [k for k, _ in seen] == ["job", "end"] and seen[0][1]["status"] == "succeeded"


def test_tokens_carry_the_user(alice: AuthUser) -> None:
    assert claims(alice.token)["user_id"] == alice.uid
