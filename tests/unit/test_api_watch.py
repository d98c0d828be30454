"""Following jobs: one listener per job however many follow it, shared, closed by the last
follower to leave, and capped (503 with Retry-After past API_MAX_LISTENERS). The listener here
is a stand-in at the seam where the API opens Firestore's (``on_snapshot``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.errors import ApiError
from api.watch import JobWatches
from core.contract import JobStatus


class Snap:
    def __init__(self, status: str) -> None:
        self.exists = True
        self._data = {"uid": "u1", "pipeline": "flaky", "status": status}

    def to_dict(self) -> dict[str, Any]:
        return self._data


class Listeners:
    def __init__(self) -> None:
        self.opened: dict[str, Any] = {}
        self.closed: list[str] = []

    def open(self, job_id: str, callback: Any) -> Any:
        self.opened[job_id] = callback
        listeners = self

        class Handle:
            def unsubscribe(self) -> None:
                listeners.closed.append(job_id)

        return Handle()


def test_followers_of_a_job_share_one_listener_and_the_cap_counts_jobs() -> None:
    async def run() -> None:
        listeners = Listeners()
        watches = JobWatches(listeners.open, limit=1, retry_after=3)
        async with watches.follow("a") as first, watches.follow("a") as second:
            assert list(listeners.opened) == ["a"] and watches.open == 1
            listeners.opened["a"]([Snap("running")], None, None)
            assert (await first.next(5)).status is JobStatus.RUNNING  # type: ignore[union-attr]
            assert (await second.next(5)).status is JobStatus.RUNNING  # type: ignore[union-attr]
            with pytest.raises(ApiError) as busy:
                async with watches.follow("b"):
                    pass
            assert (busy.value.status, busy.value.code, busy.value.retry_after) == (503, "overloaded", 3)
            # A late follower is handed the job as last seen at once.
            async with watches.follow("a") as late:
                assert (await late.next(5)).status is JobStatus.RUNNING  # type: ignore[union-attr]
        for _ in range(200):  # the close runs off the event loop
            if listeners.closed:
                break
            await asyncio.sleep(0.05)
        assert watches.open == 0 and listeners.closed == ["a"]
        assert await first.next(0.01) is None

    asyncio.run(run())


def test_a_listener_whose_stream_ended_is_opened_again_and_its_followers_see_the_job_as_it_is() -> None:
    """Firestore can cancel a listener's stream for good (the client library's thread then ends
    and calls back no more): a ``?wait`` or an event stream must not wait out its time on it and
    answer a state long gone."""

    async def run() -> None:
        opened: list[Any] = []

        class Handle:
            def __init__(self, callback: Any) -> None:
                self.callback = callback
                self.is_active = True

            def unsubscribe(self) -> None:
                self.is_active = False

        def open_listener(job_id: str, callback: Any) -> Handle:
            opened.append(Handle(callback))
            return opened[-1]

        watches = JobWatches(open_listener, limit=5, retry_after=3)
        async with watches.follow("a") as first, watches.follow("a") as second:
            opened[0].callback([Snap("queued")], None, None)
            assert (await first.next(5)).status is JobStatus.QUEUED  # type: ignore[union-attr]
            assert (await second.next(5)).status is JobStatus.QUEUED  # type: ignore[union-attr]
            opened[0].is_active = False  # the stream was cancelled; the job then succeeded
            assert await first.next(0.05) is None  # nothing heard: the listener is checked
            assert await second.next(0.05) is None
            assert len(opened) == 2  # opened again once, not once per follower
            opened[1].callback([Snap("succeeded")], None, None)  # its first snapshot: the job now
            assert (await first.next(5)).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
            assert (await second.next(5)).status is JobStatus.SUCCEEDED  # type: ignore[union-attr]
            assert await first.next(0.05) is None and len(opened) == 2  # a live one is left alone
        for _ in range(200):
            if not opened[1].is_active:
                break
            await asyncio.sleep(0.05)
        assert not opened[1].is_active and watches.open == 0  # the reopened one is closed at the end

    asyncio.run(run())
