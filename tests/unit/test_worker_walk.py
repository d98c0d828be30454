"""The shape of one push through the worker (scripts/walk.py runs it in-process): every unit ends,
and control never comes back into the worker from a module it called (no callbacks, no circle)."""

from __future__ import annotations

from scripts.walk import walk_pushes


def test_each_push_enters_the_worker_once_and_every_job_ends() -> None:
    steps, ends = walk_pushes()
    assert [s.detail for s in steps] == ["succeeded", "fanned_out", "succeeded", "succeeded"]
    assert ends == {"single": "succeeded", "multi": "succeeded"}
    for step in steps:
        assert step.walk.entered[0] == "gpu_service/worker.py"
        assert step.walk.entered.count("gpu_service/worker.py") == 1, (step.label, step.walk.entered)


def test_a_push_comes_back_no_more_often_than_the_refactored_worker_did() -> None:
    """Usage metering, live progress and partial output add no round trips through the worker's
    helpers: settings are resolved when the worker starts, and a unit's ending is built with its
    usage in one visit to ``gpu_service/endings.py`` (the last part visits it again for the join)."""
    steps, _ = walk_pushes()
    # the returns of docs/architecture.md's walk table, "after the refactor"
    limits = {
        "single job": 19,
        "multi-part: prepare": 26,
        "multi-part: part": 17,
        "multi-part: last part": 20,
    }
    for step in steps:
        assert step.walk.returns <= limits[step.label], (step.label, step.walk.entered)
        assert "infra/settings.py" not in step.walk.entered, step.label
    endings = {s.label: s.walk.entered.count("gpu_service/endings.py") for s in steps}
    assert endings == {
        "single job": 1,
        "multi-part: prepare": 1,
        "multi-part: part": 1,
        "multi-part: last part": 2,
    }
