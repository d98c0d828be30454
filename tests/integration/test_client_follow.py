"""``Client.follow`` when the listener's stream says nothing: the job's final state still arrives."""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud.firestore_v1.document import DocumentReference

from core.contract import JobStatus
from infra.client import Client, JobTimeout

pytestmark = pytest.mark.pipelines()


class _SilentWatch:
    """A listener whose stream has stalled: subscribed, never called back."""

    def unsubscribe(self) -> None:
        pass


@pytest.fixture
def stalled_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DocumentReference, "on_snapshot", lambda self, callback: _SilentWatch())


@pytest.mark.usefixtures("stalled_listeners")
def test_follow_returns_the_final_state_when_the_listener_stalls(client: Client, uid: str) -> None:
    reading = Client(client.settings, client.db, client.gcs)
    reading.RECHECK_SECONDS = 0.5
    seen: list[Any] = []
    job_id = client.create_job(uid, "paint-my-house", {})
    job = reading.follow(job_id, on_update=seen.append, timeout=60)
    assert job.status is JobStatus.REJECTED and job.error and job.error.code == "unknown_pipeline"
    assert seen and seen[-1].status is JobStatus.REJECTED  # the caller's callback hears it too


@pytest.mark.usefixtures("stalled_listeners")
def test_follow_still_times_out_on_a_job_that_never_ends(client: Client, uid: str) -> None:
    quick = Client(client.settings, client.db, client.gcs)
    quick.RECHECK_SECONDS = 0.2
    with pytest.raises(JobTimeout, match="is still absent after 1s"):
        quick.follow(f"{uid}-never-written", timeout=1)
