"""The Firestore security rules, as an app user meets them (REST with an end-user token).

The server libraries bypass rules on the emulator, so these go through REST with an unsigned
Firebase-style JWT, which the emulator accepts in place of a real ID token.

The emulator applies ``infra/firestore.rules`` to every project it serves, but delivers
created-events only for the stack's project. Most tests therefore use a project of their own, where
no function or sweeper ever changes a document, so each verdict is the rules' alone; the last test
uses the stack's project to show that a job the rules let in is one the backend runs.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from infra.localstack.stack import LocalStack

# The one job these tests send to the backend names a pipeline nobody has: no pipeline of the stack
# runs it, so none needs starting beyond the cheapest (and no tiny model is built).
pytestmark = pytest.mark.pipelines()

ALLOWED = 200
DENIED = 403
FINAL = ["succeeded", "failed", "rejected", "cancelled"]


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
    """What an app user can do through the Firestore REST API.

    ``uid=None`` sends no token at all; ``owner=True`` sends the emulator's admin token, which
    bypasses the rules (to set up documents only the backend could write).
    """

    def __init__(self, host: str, project: str, uid: str | None, *, owner: bool = False) -> None:
        self.root = f"projects/{project}/databases/(default)/documents"
        self.base = f"http://{host}/v1/{self.root}"
        if owner:
            self.headers = {"Authorization": "Bearer owner"}
        elif uid is None:
            self.headers = {}
        else:
            self.headers = {"Authorization": f"Bearer {_token(project, uid)}"}

    def create(self, job_id: str, fields: dict[str, Any], collection: str = "jobs") -> httpx.Response:
        return httpx.post(
            f"{self.base}/{collection}",
            params={"documentId": job_id},
            json={"fields": encode(fields)},
            headers=self.headers,
        )

    def create_stamped(self, job_id: str, fields: dict[str, Any]) -> httpx.Response:
        """Create with ``createdAt`` set by the server (``request.time``), as the SDKs'
        ``serverTimestamp()`` does."""
        write = {
            "update": {"name": f"{self.root}/jobs/{job_id}", "fields": encode(fields)},
            "currentDocument": {"exists": False},
            "updateTransforms": [{"fieldPath": "createdAt", "setToServerValue": "REQUEST_TIME"}],
        }
        return httpx.post(f"{self.base}:commit", json={"writes": [write]}, headers=self.headers)

    def read(self, job_id: str, collection: str = "jobs") -> httpx.Response:
        return httpx.get(f"{self.base}/{collection}/{job_id}", headers=self.headers)

    def fields(self, job_id: str) -> dict[str, Any]:
        response = self.read(job_id)
        assert response.status_code == ALLOWED, response.text
        return decode(response.json()["fields"])

    def patch(self, job_id: str, fields: dict[str, Any]) -> httpx.Response:
        return httpx.patch(
            f"{self.base}/jobs/{job_id}",
            params=[("updateMask.fieldPaths", k) for k in fields],
            json={"fields": encode(fields)},
            headers=self.headers,
        )

    def delete(self, job_id: str) -> httpx.Response:
        return httpx.delete(f"{self.base}/jobs/{job_id}", headers=self.headers)

    def list_jobs(self, uid: str | None) -> httpx.Response:
        query: dict[str, Any] = {"from": [{"collectionId": "jobs"}]}
        if uid is not None:
            query["where"] = {
                "fieldFilter": {"field": {"fieldPath": "uid"}, "op": "EQUAL", "value": {"stringValue": uid}}
            }
        return httpx.post(f"{self.base}:runQuery", json={"structuredQuery": query}, headers=self.headers)


def encode(values: dict[str, Any]) -> dict[str, Any]:
    return {key: _value(value) for key, value in values.items()}


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"integerValue": str(value)}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, datetime):
        return {"timestampValue": value.isoformat().replace("+00:00", "Z")}
    if isinstance(value, dict):
        return {"mapValue": {"fields": encode(value)}}
    if isinstance(value, list):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    raise TypeError(value)


def decode(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: _plain(value) for key, value in fields.items()}


def _plain(value: dict[str, Any]) -> Any:
    (kind, inner), *_ = value.items()
    if kind == "integerValue":
        return int(inner)
    if kind == "timestampValue":
        return datetime.fromisoformat(inner)
    if kind == "mapValue":
        return decode(inner.get("fields", {}))
    if kind == "arrayValue":
        return [_plain(v) for v in inner.get("values", [])]
    return inner


class Users:
    """Apps for any user, all in one project."""

    def __init__(self, host: str, project: str) -> None:
        self.host, self.project = host, project

    def __call__(self, uid: str | None) -> App:
        return App(self.host, self.project, uid)

    @property
    def backend(self) -> App:
        return App(self.host, self.project, None, owner=True)


@pytest.fixture
def users(stack: LocalStack, uid: str) -> Users:
    """A project of the test's own, without triggers or sweeper: documents change only when the
    test changes them."""
    return Users(stack.env["FIRESTORE_EMULATOR_HOST"], f"rules-{uid}")


@pytest.fixture
def alice(users: Users, uid: str) -> App:
    return users(uid)


def new_job(uid: str, **extra: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "pipeline": "transcribe",
        "inputs": {"media": f"gs://media/uploads/{uid}/a.wav", "beam_size": 5, "vad": True},
        "status": "pending",
        **extra,
    }


def without(job: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k != key}


# --- create -----------------------------------------------------------------------------------


def test_user_creates_a_pending_job_that_reads_back_as_written(alice: App, uid: str) -> None:
    job = new_job(uid)
    assert alice.create("j", job).status_code == ALLOWED
    assert alice.fields("j") == job


@pytest.mark.parametrize(
    "job",
    [
        lambda uid: without(new_job(uid), "inputs"),
        lambda uid: new_job(uid, pipeline="p" * 40),
        lambda uid: new_job(uid, inputs={f"k{i}": i for i in range(32)}),
        lambda uid: new_job(uid, retentionDays=1),
        lambda uid: new_job(uid, deadline=datetime(2099, 1, 1, tzinfo=UTC)),
        lambda uid: new_job(uid, priority="batch"),
    ],
    ids=["without-inputs", "pipeline-of-40", "32-inputs", "retention-days", "deadline", "priority"],
)
def test_create_at_the_bounds_is_allowed(alice: App, uid: str, job: Any) -> None:
    assert alice.create("j", job(uid)).status_code == ALLOWED
    assert alice.fields("j") == job(uid)


def test_created_at_set_by_the_server_is_allowed(alice: App, uid: str) -> None:
    before = datetime.now(UTC)
    response = alice.create_stamped("j", new_job(uid))
    assert response.status_code == ALLOWED, response.text
    stored = alice.fields("j")
    assert without(stored, "createdAt") == new_job(uid)
    assert before - timedelta(seconds=5) < stored["createdAt"] < datetime.now(UTC) + timedelta(seconds=5)


def test_created_at_from_the_clients_clock_is_refused(alice: App, uid: str) -> None:
    """Even a client timestamp of "now" is not the server's: only ``request.time`` passes."""
    job = new_job(uid, createdAt=datetime.now(UTC))
    assert alice.create("j", job).status_code == DENIED


FORGED: dict[str, Any] = {
    "missing-status": lambda uid: without(new_job(uid), "status"),
    "status-queued": lambda uid: new_job(uid, status="queued"),
    "status-succeeded": lambda uid: new_job(uid, status="succeeded"),
    "status-not-a-string": lambda uid: new_job(uid, status=1),
    "created-at-a-string": lambda uid: new_job(uid, createdAt="garbage"),
    "created-at-in-2099": lambda uid: new_job(uid, createdAt=datetime(2099, 1, 1, tzinfo=UTC)),
    "extra-client": lambda uid: new_job(uid, client="web"),
    "extra-outputs": lambda uid: new_job(uid, outputs={"text": "forged"}),
    "extra-lease": lambda uid: new_job(
        uid, lease={"owner": "me", "expiresAt": datetime(2099, 1, 1, tzinfo=UTC)}
    ),
    "extra-attempt": lambda uid: new_job(uid, attempt=0),
    "extra-cancel-requested": lambda uid: new_job(uid, cancelRequested=True),
    "extra-usage": lambda uid: new_job(uid, usage={"gpuSeconds": 0}),
    "extra-reused-from": lambda uid: new_job(uid, reusedFrom="someone-elses-job"),
    "extra-reuse-key": lambda uid: new_job(uid, reuseKey="0" * 64),
    "retention-days-zero": lambda uid: new_job(uid, retentionDays=0),
    "retention-days-a-string": lambda uid: new_job(uid, retentionDays="30"),
    "deadline-a-string": lambda uid: new_job(uid, deadline="tomorrow"),
    "priority-not-a-lane": lambda uid: new_job(uid, priority="urgent"),
    "share-weight-set-by-a-client": lambda uid: new_job(uid, shareWeight=100),
    "uid-of-another-user": lambda uid: new_job(f"{uid}-victim"),
    "uid-missing": lambda uid: without(new_job(uid), "uid"),
    "pipeline-missing": lambda uid: without(new_job(uid), "pipeline"),
    "pipeline-with-a-dash": lambda uid: new_job(uid, pipeline="nothing-here"),
    "pipeline-upper-case": lambda uid: new_job(uid, pipeline="Transcribe"),
    "pipeline-with-a-slash": lambda uid: new_job(uid, pipeline="../transcribe"),
    "pipeline-empty": lambda uid: new_job(uid, pipeline=""),
    "pipeline-of-41": lambda uid: new_job(uid, pipeline="p" * 41),
    "pipeline-not-a-string": lambda uid: new_job(uid, pipeline=7),
    "inputs-a-string": lambda uid: new_job(uid, inputs="gs://media/a.wav"),
    "inputs-a-list": lambda uid: new_job(uid, inputs=["gs://media/a.wav"]),
    "inputs-33-keys": lambda uid: new_job(uid, inputs={f"k{i}": i for i in range(33)}),
}


@pytest.mark.parametrize("job", FORGED.values(), ids=FORGED.keys())
def test_forged_create_is_refused(users: Users, alice: App, uid: str, job: Any) -> None:
    response = alice.create("j", job(uid))
    assert response.status_code == DENIED, response.text
    assert users.backend.read("j").status_code == 404  # nothing was written


@pytest.mark.parametrize(
    "bad_uid",
    ["has space", "slash/uid", "ümlaut", "x" * 129],
    ids=["space", "slash", "non-ascii", "129-chars"],
)
def test_user_whose_uid_has_a_bad_shape_cannot_create(users: Users, bad_uid: str) -> None:
    """The uid matches the caller's token, but not the contract's shape."""
    assert users(bad_uid).create("j", new_job(bad_uid)).status_code == DENIED


def test_anonymous_create_is_refused(users: Users, uid: str) -> None:
    assert users(None).create("j", new_job(uid)).status_code == DENIED


# --- update -----------------------------------------------------------------------------------


@pytest.fixture
def job_id(alice: App, uid: str) -> str:
    assert alice.create("j", new_job(uid)).status_code == ALLOWED
    return "j"


@pytest.mark.parametrize("status", ["pending", "queued", "running"])
def test_owner_may_request_cancellation_while_the_job_runs(
    users: Users, alice: App, uid: str, job_id: str, status: str
) -> None:
    assert users.backend.patch(job_id, {"status": status}).status_code == ALLOWED
    assert alice.patch(job_id, {"cancelRequested": True}).status_code == ALLOWED
    assert alice.fields(job_id) == new_job(uid, status=status, cancelRequested=True)


@pytest.mark.parametrize(
    "change",
    [
        {"status": "cancelled"},
        {"status": "succeeded"},
        {"outputs": {"text": "forged"}},
        {"uid": "someone-else"},
        {"pipeline": "inpaint"},
        {"inputs": {"media": "gs://media/other.wav"}},
        {"attempt": 0},
        {"createdAt": datetime(2099, 1, 1, tzinfo=UTC)},
        {"cancelRequested": True, "status": "cancelled"},
        {"cancelRequested": True, "attempt": 0},
    ],
    ids=[
        "status",
        "status-final",
        "outputs",
        "uid",
        "pipeline",
        "inputs",
        "attempt",
        "created-at",
        "cancel-and-status",
        "cancel-and-attempt",
    ],
)
def test_owner_may_change_nothing_but_cancel_requested(
    alice: App, uid: str, job_id: str, change: dict[str, Any]
) -> None:
    assert alice.patch(job_id, change).status_code == DENIED
    assert alice.fields(job_id) == new_job(uid)


@pytest.mark.parametrize("value", [False, "yes", 1])
def test_cancel_requested_may_only_be_set_to_true(alice: App, uid: str, job_id: str, value: Any) -> None:
    assert alice.patch(job_id, {"cancelRequested": value}).status_code == DENIED
    assert alice.fields(job_id) == new_job(uid)


def test_cancel_requested_cannot_be_taken_back(alice: App, job_id: str) -> None:
    assert alice.patch(job_id, {"cancelRequested": True}).status_code == ALLOWED
    assert alice.patch(job_id, {"cancelRequested": False}).status_code == DENIED
    assert alice.fields(job_id)["cancelRequested"] is True


@pytest.mark.parametrize("status", FINAL)
def test_a_final_job_cannot_be_cancelled(users: Users, alice: App, job_id: str, status: str) -> None:
    assert users.backend.patch(job_id, {"status": status}).status_code == ALLOWED
    assert alice.patch(job_id, {"cancelRequested": True}).status_code == DENIED
    assert "cancelRequested" not in alice.fields(job_id)


def test_another_user_cannot_cancel_read_or_delete_a_job(
    users: Users, alice: App, uid: str, job_id: str
) -> None:
    mallory = users(f"{uid}-mallory")
    assert mallory.patch(job_id, {"cancelRequested": True}).status_code == DENIED
    assert mallory.read(job_id).status_code == DENIED
    assert mallory.delete(job_id).status_code == DENIED
    assert alice.fields(job_id) == new_job(uid)


def test_nobody_deletes_a_job_not_even_its_owner(alice: App, uid: str, job_id: str) -> None:
    assert alice.delete(job_id).status_code == DENIED
    assert alice.fields(job_id) == new_job(uid)


def test_anonymous_user_cannot_read_or_cancel(users: Users, job_id: str) -> None:
    anonymous = users(None)
    assert anonymous.read(job_id).status_code == DENIED
    assert anonymous.patch(job_id, {"cancelRequested": True}).status_code == DENIED


# --- queries ----------------------------------------------------------------------------------


def test_user_lists_exactly_their_own_jobs(users: Users, alice: App, uid: str) -> None:
    other = f"{uid}-other"
    assert users(other).create("theirs", new_job(other)).status_code == ALLOWED
    for n in range(2):
        assert alice.create(f"mine-{n}", new_job(uid)).status_code == ALLOWED

    response = alice.list_jobs(uid)
    assert response.status_code == ALLOWED, response.text
    names = [row["document"]["name"].rsplit("/", 1)[-1] for row in response.json() if "document" in row]
    assert sorted(names) == ["mine-0", "mine-1"]


@pytest.mark.parametrize("whose", ["another-user", "everyone"])
def test_user_cannot_list_other_users_jobs(users: Users, alice: App, uid: str, whose: str) -> None:
    other = f"{uid}-other"
    assert users(other).create("theirs", new_job(other)).status_code == ALLOWED
    response = alice.list_jobs(other if whose == "another-user" else None)
    assert response.status_code == DENIED, response.text


# --- other collections ------------------------------------------------------------------------


@pytest.mark.parametrize("collection", ["users", "uploads", "jobs/j/notes"])
def test_other_collections_are_closed(users: Users, alice: App, uid: str, collection: str) -> None:
    if collection.startswith("jobs/"):
        assert alice.create("j", new_job(uid)).status_code == ALLOWED
    assert alice.create("d", {"uid": uid}, collection=collection).status_code == DENIED
    assert users.backend.create("d", {"uid": uid}, collection=collection).status_code == ALLOWED
    assert alice.read("d", collection=collection).status_code == DENIED


# --- with the backend -------------------------------------------------------------------------


def test_backend_runs_a_job_the_rules_let_in(stack: LocalStack, uid: str) -> None:
    """In the stack's own project, a job created through the rules reaches the functions, which
    reject its unknown pipeline; its owner sees the verdict and can no longer cancel it."""
    alice = App(stack.env["FIRESTORE_EMULATOR_HOST"], stack.config.project, uid)
    job_id = f"rules-{uid}"
    response = alice.create_stamped(job_id, new_job(uid, pipeline="paint_my_house"))
    assert response.status_code == ALLOWED, response.text

    deadline = time.monotonic() + 30
    while (job := alice.fields(job_id))["status"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job["status"] == "rejected"
    assert job["error"]["code"] == "unknown_pipeline"
    assert alice.patch(job_id, {"cancelRequested": True}).status_code == DENIED
