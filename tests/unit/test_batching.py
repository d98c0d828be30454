"""Dynamic batching keeps everything per job: results and seeds, progress, cancellation, failures.

On a tiny random-weight InstructPix2Pix the tests build and save (through the production loader),
and on a stand-in pipeline for the batcher's own rules (grouping, waiting, splitting).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import Cancelled, InvalidInput, OutOfGpuMemory
from core.spec import RunContext, RunResult
from devkit import tiny_diffusers as tiny
from devkit.sample_images import make_sample
from gpu_service.batching import Batcher
from pipelines.edit import SPEC, EditConfig
from pipelines.edit.pipeline import EditPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> EditPipeline:
    model_dir = tiny.build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny") / "tiny-ip2p")
    pipeline = SPEC.load(EditConfig.model_validate({"model_dir": str(model_dir), "device": "cpu"}))
    assert isinstance(pipeline, EditPipeline)
    return pipeline


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for n in range(4):
        _clean, marked, _mask = make_sample(64 + 8 * (n % 2), 48)
        marked.save(root / f"p{n}.png")
        paths.append(root / f"p{n}.png")
    return paths


def _ctx(tmp: Path, name: str, image: Path, progress: Any = None) -> RunContext:
    work = tmp / name
    work.mkdir()
    return RunContext(
        job_id=name, workdir=work, files={"image": image}, progress=progress or (lambda f, s: None)
    )


def _inputs(seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "image": "gs://bucket/uploads/u/p.png",
        "instruction": f"make it blue {seed}",
        "steps": 2,
        "seed": seed,
        **extra,
    }


def _pixels(result: RunResult[Any]) -> np.ndarray:
    return np.asarray(Image.open(next(iter(result.files.values()))))


def test_each_job_of_a_batch_gets_what_it_gets_alone_seed_for_seed(
    editor: EditPipeline, photos: list[Path], tmp_path: Path
) -> None:
    alone = [
        editor.run(editor.inputs_model.model_validate(_inputs(s)), _ctx(tmp_path, f"a{s}", photos[0]))
        for s in (1, 2, 3)
    ]
    batched = editor.run_batch([(_inputs(s), _ctx(tmp_path, f"b{s}", photos[0])) for s in (1, 2, 3)])
    assert all(isinstance(r, RunResult) for r in batched)
    for one, many in zip(alone, batched, strict=True):
        assert isinstance(many, RunResult)
        assert many.outputs.seed == one.outputs.seed
        # The same noise and the same image, up to float summation order in batched matmuls, which
        # can move an 8-bit value by one (measured: 1 value in 9216 on CPU).
        np.testing.assert_allclose(_pixels(many), _pixels(one), atol=1)
        assert (np.abs(_pixels(many).astype(int) - _pixels(one)) > 0).mean() < 0.01
        assert many.outputs.timings["batch_size"] == 3
    assert not np.array_equal(_pixels(batched[0]), _pixels(batched[1]))  # seeds still decide


def test_jobs_of_different_sizes_run_in_one_batch_call_per_size(
    editor: EditPipeline, photos: list[Path], tmp_path: Path
) -> None:
    results = editor.run_batch([(_inputs(n), _ctx(tmp_path, f"s{n}", photos[n])) for n in range(4)])
    sizes = [r.outputs.width for r in results if isinstance(r, RunResult)]
    assert sizes == [64, 72, 64, 72]
    assert all(isinstance(r, RunResult) and r.outputs.timings["batch_size"] == 2 for r in results)


def test_a_bad_input_or_a_cancel_never_fails_its_batch_mates(
    editor: EditPipeline, photos: list[Path], tmp_path: Path
) -> None:
    not_an_image = tmp_path / "bad.png"
    not_an_image.write_text("not an image")
    steps: dict[str, list[float]] = {"ok": [], "cancel": []}

    def log_to(name: str) -> Any:
        def progress(fraction: float, stage: str) -> None:
            if stage == "denoising":
                steps[name].append(fraction)
                if name == "cancel":
                    raise Cancelled("cancelled at the client's request")

        return progress

    results = editor.run_batch(
        [
            (_inputs(1), _ctx(tmp_path, "ok", photos[0], log_to("ok"))),
            (_inputs(2), _ctx(tmp_path, "bad", not_an_image)),
            (_inputs(3), _ctx(tmp_path, "cancel", photos[0], log_to("cancel"))),
            (_inputs(4, steps=0), _ctx(tmp_path, "schema", photos[0])),
        ]
    )
    assert isinstance(results[0], RunResult)
    assert isinstance(results[1], InvalidInput) and results[1].code == "invalid_image"
    assert isinstance(results[2], Cancelled)
    assert isinstance(results[3], InvalidInput) and "steps" in str(results[3])
    assert steps["ok"] == [0.5, 1.0]  # progress per step, per job
    assert steps["cancel"] == [0.5]  # stopped being told at its checkpoint


class _Stand:
    """A batching stand-in: doubles numbers; 'boom' fails the whole call; records the calls."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.lock = threading.Lock()

    def run(self, inputs: Any, ctx: RunContext) -> RunResult[Any]:
        raise AssertionError("a batching pipeline is called through run_batch")

    def batch_key(self, inputs: Any) -> Any:
        return inputs.get("key", 0)

    def run_batch(self, items: Sequence[tuple[Any, RunContext]]) -> list[RunResult[Any] | Exception]:
        with self.lock:
            self.calls.append([i["n"] for i, _ in items])
        if any(i.get("boom") for i, _ in items) and len(items) > 1:
            raise OutOfGpuMemory("CUDA out of memory")
        out: list[RunResult[Any] | Exception] = []
        for inputs, _ in items:
            if inputs.get("boom"):
                out.append(OutOfGpuMemory("CUDA out of memory"))
            else:
                out.append(RunResult(outputs=inputs["n"] * 2))  # type: ignore[arg-type]
        return out


def _submit_all(batcher: Batcher, inputs: list[dict[str, Any]]) -> list[Any]:
    with ThreadPoolExecutor(len(inputs)) as pool:
        futures = [pool.submit(batcher.submit, i, None) for i in inputs]  # type: ignore[arg-type]
        time.sleep(0.01)
        out = []
        for f in futures:
            try:
                out.append(f.result(timeout=10).outputs)
            except Exception as exc:
                out.append(exc)
        return out


def test_jobs_arriving_together_share_a_call_up_to_max_batch_and_by_key() -> None:
    stand = _Stand()
    # Each key's batch fills (3) long before the wait ends: the wait only bounds how late a slow
    # thread start (a loaded machine) may join its batch.
    batcher = Batcher("stand", stand, max_batch=3, max_wait_ms=5000)  # type: ignore[arg-type]
    results = _submit_all(batcher, [{"n": n, "key": n % 2} for n in range(6)])
    assert results == [0, 2, 4, 6, 8, 10]
    assert sorted(sorted(c) for c in stand.calls) == [[0, 2, 4], [1, 3, 5]]
    assert batcher.stats.batches == 2 and batcher.stats.mean_size == 3


def test_a_batch_that_runs_out_of_memory_is_split_before_any_job_fails() -> None:
    stand = _Stand()
    batcher = Batcher("stand", stand, max_batch=4, max_wait_ms=200)  # type: ignore[arg-type]
    results = _submit_all(batcher, [{"n": 1}, {"n": 2}, {"n": 3, "boom": True}, {"n": 4}])
    assert results[:2] == [2, 4] and results[3] == 8
    assert isinstance(results[2], OutOfGpuMemory)  # only the job that cannot fit fails
    assert batcher.stats.splits >= 1


def test_a_lone_job_runs_after_the_wait_without_batch_mates() -> None:
    stand = _Stand()
    batcher = Batcher("stand", stand, max_batch=4, max_wait_ms=50)  # type: ignore[arg-type]
    started = time.monotonic()
    assert _submit_all(batcher, [{"n": 7}]) == [14]
    assert time.monotonic() - started < 5 and stand.calls == [[7]]


def test_the_model_pool_batches_only_pipelines_configured_and_able_to() -> None:
    from types import SimpleNamespace

    from core.spec import Catalog
    from gpu_service.pool import ModelPool
    from infra.settings import Batching

    stand = _Stand()
    spec = SimpleNamespace(name="stand")
    pool = ModelPool(Catalog(specs={}), {"stand": Batching(max_batch=2, max_wait_ms=100)})
    with ThreadPoolExecutor(2) as executor:
        futures = [executor.submit(pool.infer, spec, stand, {"n": n}, None) for n in (1, 2)]  # type: ignore[arg-type]
        assert sorted(f.result(timeout=10).outputs for f in futures) == [2, 4]
    assert stand.calls == [[1, 2]] or sorted(stand.calls) == [[1], [2]]
    assert pool.batch_stats()["stand"]["jobs"] == 2
    # Not configured: the pipeline's own run, one job at a time.
    with pytest.raises(AssertionError, match="through run_batch"):
        ModelPool(Catalog(specs={})).infer(spec, stand, {"n": 1}, None)  # type: ignore[arg-type]


def test_a_batch_larger_than_the_slots_is_refused_at_start() -> None:
    from pydantic import ValidationError

    from infra.settings import Settings

    with pytest.raises(ValidationError, match="raise MAX_CONCURRENT_JOBS"):
        Settings(batching={"edit": {"max_batch": 4}}, max_concurrent_jobs=2)
