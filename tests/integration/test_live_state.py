"""What an app sees of a job while it waits and runs: its place in the queue counting down with an
estimated start, transcript segments before the job ends, an event stream that resumes instead of
starting over, ``Prefer: wait``, and jobs created without ``createdAt`` in the job list."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.apiserver import api_server
from devkit.firebase_auth import AuthUser, sign_up
from devkit.speech import synthesize, wav_duration
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings

pytestmark = pytest.mark.pipelines("flaky", "transcribe")

#: each job of the burst: 20 steps of 0.1 s on one of the stack's two slots
BURST_JOB = {"steps": 20, "step_seconds": 0.1}
BURST = 8
#: the estimate's stated error: within half the job's actual wait, plus 3 s of claim and commit
ERROR_SHARE, ERROR_SECONDS = 0.5, 3.0

LONG_TEXT = " ".join(
    [
        "The committee met on Tuesday morning to review the plans for the new library.",
        "Several members asked whether the budget would cover the reading rooms and the garden.",
        "After a long discussion they agreed to hire an architect before the end of the month.",
        "The builders will start work in the spring if the weather allows it.",
        "Children from the local school painted pictures of the library they would like to see.",
        "Their drawings will hang in the town hall until the building opens next year.",
    ]
    * 2
)


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.env["API_URL"], timeout=60) as http:
        yield http


@pytest.fixture
def alice(stack: LocalStack) -> AuthUser:
    return sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])


def read_events(resp: httpx.Response) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """``(event, id, data)`` for each event of an SSE answer."""
    event: str | None = None
    event_id: str | None = None
    for line in resp.iter_lines():
        if line.startswith("id: "):
            event_id = line.removeprefix("id: ")
        elif line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: ") and event:
            yield event, event_id, json.loads(line.removeprefix("data: "))
            event = None


def follow(
    api: httpx.Client,
    user: AuthUser,
    job_id: str,
    last_event_id: str | None = None,
    arrivals: list[float] | None = None,
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The events of a job's stream; ``arrivals`` gets each one's arrival time (monotonic)."""
    headers = {**user.headers, **({"Last-Event-ID": last_event_id} if last_event_id else {})}
    events = []
    with api.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=180) as resp:
        assert resp.status_code == 200, resp.read()
        for event in read_events(resp):
            events.append(event)
            if arrivals is not None:
                arrivals.append(time.monotonic())
    return events


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def create(
    api: httpx.Client,
    user: AuthUser,
    pipeline: str,
    inputs: dict[str, Any],
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    body = {"pipeline": pipeline, "inputs": inputs}
    resp = api.post("/v1/jobs", headers={**user.headers, **(headers or {})}, json=body, **kw)
    assert resp.status_code in (200, 201), resp.text
    return resp


# -- live state ----------------------------------------------------------------------------------------


def test_queue_position_counts_down_and_the_estimate_holds(stack: LocalStack, client: Client) -> None:
    user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
    # The estimate reads the pipeline's last two run times: the warm-up's own, not earlier tests'.
    with (
        api_server(Settings(live_history_jobs=2, live_refresh_seconds=0.5)) as (url, _),
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        for _ in range(2):
            warm = create(http, user, "flaky", BURST_JOB, params={"wait": 30}).json()
            assert warm["status"] == "succeeded", warm
        ids = [create(http, user, "flaky", BURST_JOB).json()["id"] for _ in range(BURST)]
        last = ids[-1]
        events = follow(http, user, last)
        doc = client.db.collection(client.settings.jobs_collection).document(last).get().to_dict() or {}
    jobs = [data for kind, _, data in events if kind == "job"]
    queued = [j for j in jobs if j["status"] == "queued"]
    positions = [j["live"]["position"] for j in queued]
    assert positions and positions[0] >= 2, positions
    assert positions == sorted(positions, reverse=True), positions  # never goes back up
    assert len(set(positions)) >= 2, positions  # it counts down while the stream is open
    assert all(j["live"]["phase"] == "waiting_for_gpu" for j in queued)
    assert {j["live"]["phase"] for j in jobs if j["status"] == "running"} <= {
        "running",
        "downloading",
        "loading_model",
        "uploading",
    }
    final = jobs[-1]
    assert final["status"] == "succeeded" and "live" not in final
    estimate = when(queued[0]["live"]["estimatedStartAt"])
    actual = when(final["startedAt"])
    wait = (actual - when(final["queuedAt"])).total_seconds()
    error = abs((estimate - actual).total_seconds())
    print(
        f"\nlive estimate: position {positions[0]}, waited {wait:.1f} s, start estimate off by {error:.1f} s"
    )
    assert error <= ERROR_SHARE * wait + ERROR_SECONDS, (estimate, actual, wait)
    # The document carried the place in the queue while the stream followed it; the claim removed it.
    assert "live" not in doc and doc["status"] == "succeeded"


def test_a_followed_queued_job_has_its_place_on_the_document(
    stack: LocalStack, client: Client, api: httpx.Client, alice: AuthUser
) -> None:
    blockers = [
        create(api, alice, "flaky", {"steps": 60, "step_seconds": 0.1}).json()["id"] for _ in range(2)
    ]
    job_id = create(api, alice, "flaky", {"steps": 1}).json()["id"]
    ref = client.db.collection(client.settings.jobs_collection).document(job_id)
    seen: dict[str, Any] = {}
    with api.stream("GET", f"/v1/jobs/{job_id}/events", headers=alice.headers, timeout=120) as resp:
        for kind, _, data in read_events(resp):
            if kind == "job" and data["status"] == "queued":
                seen = (ref.get().to_dict() or {}).get("live") or {}
                break
    got = api.get(f"/v1/jobs/{job_id}", headers=alice.headers).json()
    for blocker in blockers:
        api.post(f"/v1/jobs/{blocker}/cancel", headers=alice.headers)
    assert seen.get("phase") == "waiting_for_gpu" and isinstance(seen.get("position"), int), seen
    if got["status"] == "queued":  # GET computes it too
        assert got["live"]["phase"] == "waiting_for_gpu" and got["live"]["position"] >= 0


# -- partial output ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_speech(media_dir: Path) -> Path:
    path = synthesize(LONG_TEXT, media_dir / "long.wav")
    assert wav_duration(path) > 45  # more than one 30 s window
    return path


def test_transcript_segments_arrive_before_the_job_ends(
    client: Client, api: httpx.Client, alice: AuthUser, long_speech: Path
) -> None:
    uri = client.upload(long_speech, alice.uid)
    job_id = create(api, alice, "transcribe", {"media": uri}).json()["id"]
    arrivals: list[float] = []
    events = follow(api, alice, job_id, arrivals=arrivals)
    kinds = [kind for kind, _, _ in events]
    assert kinds[-1] == "end" and events[-1][2]["status"] == "succeeded", events[-3:]
    partial = [data for kind, _, data in events if kind == "partial"]
    ended = next(
        i for i, (kind, _, data) in enumerate(events) if kind == "job" and data["status"] == "succeeded"
    )
    before = [i for i, (kind, _, _) in enumerate(events) if kind == "partial" and i < ended]
    assert before, kinds  # segments while it ran, not only at the end
    started = next(
        i for i, (kind, _, data) in enumerate(events) if kind == "job" and data["status"] == "running"
    )
    run = arrivals[ended] - arrivals[started]
    first = arrivals[before[0]] - arrivals[started]
    print(f"\npartial transcript: first segments {first:.1f} s into a {run:.1f} s run ({first / run:.0%})")
    items = [item for data in partial for item in data["items"]]
    counts = [data["count"] for data in partial]
    assert counts == sorted(counts) and len(items) == counts[-1]  # each segment once, in order
    assert all(item["text"] and item["end"] >= item["start"] for item in items)
    final = events[ended][2]
    assert [s["start"] for s in final["outputs"]["segments"]][: len(items)] == [i["start"] for i in items]


# -- the event stream resumes -------------------------------------------------------------------------


def test_a_reconnect_with_last_event_id_does_not_replay(api: httpx.Client, alice: AuthUser) -> None:
    job = create(api, alice, "flaky", {"steps": 1}, params={"wait": 30}).json()
    assert job["status"] == "succeeded"
    first = follow(api, alice, job["id"])
    assert [kind for kind, _, _ in first] == ["job", "end"]
    _, last_id, _ = first[0]
    again = follow(api, alice, job["id"], last_event_id=last_id)
    assert [kind for kind, _, _ in again] == ["end"]  # the job it had seen is not sent again
    fresh = follow(api, alice, job["id"], last_event_id="not-one-of-ours")
    assert [kind for kind, _, _ in fresh] == ["job", "end"]


# -- Prefer: wait and createdAt ------------------------------------------------------------------------


def test_prefer_wait_is_the_header_form_of_wait(api: httpx.Client, alice: AuthUser) -> None:
    resp = create(api, alice, "flaky", {"steps": 3, "step_seconds": 0.1}, headers={"Prefer": "wait=30"})
    assert resp.json()["status"] == "succeeded", resp.json()
    assert resp.headers["Preference-Applied"] == "wait=30"
    plain = create(api, alice, "flaky", {"steps": 3, "step_seconds": 0.1})
    assert "Preference-Applied" not in plain.headers


def test_a_job_created_without_created_at_is_listed(
    client: Client, api: httpx.Client, alice: AuthUser
) -> None:
    jobs = client.db.collection(client.settings.jobs_collection)
    made = {f"{alice.uid}-bare": "flaky", f"{alice.uid}-bare-rejected": "no-such-pipeline"}
    for job_id, pipeline in made.items():
        # A client SDK write without createdAt (the rules allow leaving it out).
        jobs.document(job_id).create(
            {"uid": alice.uid, "pipeline": pipeline, "inputs": {}, "status": "pending"}
        )
    deadline = time.monotonic() + 60
    while True:
        listed = {j["id"]: j for j in api.get("/v1/jobs", headers=alice.headers).json()["jobs"]}
        if set(made) <= set(listed) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(made) <= set(listed), listed
    assert all(listed[j]["createdAt"] for j in made)
