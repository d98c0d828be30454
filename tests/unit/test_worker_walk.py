"""The shape of one push through the worker (scripts/walk.py runs it in-process): every unit ends,
and control never comes back into the worker from a module it called (no callbacks, no circle)."""

from __future__ import annotations

from scripts.walk import walk_pushes


def test_each_push_enters_the_worker_once_and_every_job_ends() -> None:
    steps, ends = walk_pushes()
    assert [s.detail for s in steps] == ["succeeded", "fanned out", "part succeeded", "part succeeded"]
    assert ends == {"single": "succeeded", "multi": "succeeded"}
    for step in steps:
        assert step.walk.entered[0] == "gpu_service/worker.py"
        assert step.walk.entered.count("gpu_service/worker.py") == 1, (step.label, step.walk.entered)
