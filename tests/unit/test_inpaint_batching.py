"""Inpaint jobs batched across jobs on a tiny random-weight Flux Fill the tests build and save
(loaded through the production loader): each job keeps its seed, prompt, progress, cancel and errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.errors import Cancelled, InvalidInput
from core.spec import RunContext, RunResult
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from devkit.sample_images import make_sample
from gpu_service.batching import Batcher
from pipelines.inpaint import SPEC, InpaintConfig, InpaintInputs
from pipelines.inpaint.pipeline import InpaintPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

URIS = {"image": "gs://bucket/in/image.png", "mask": "gs://bucket/in/mask.png"}


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> InpaintPipeline:
    model_dir = tiny.build_tiny_fluxfill(tmp_path_factory.mktemp("tiny-flux") / "tiny-flux-fill")
    config = {"backend": "flux", "model_dir": str(model_dir), "device": "cpu", "max_sequence_length": 32}
    pipeline = SPEC.load(InpaintConfig.model_validate(config))
    assert isinstance(pipeline, InpaintPipeline)
    return pipeline


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Path]]:
    """Two 64x48 photos and one 80x48 (another work size), each with its mask."""
    root = tmp_path_factory.mktemp("photos")
    out = []
    for n, width in enumerate((64, 64, 80)):
        _clean, marked, mask = make_sample(width, 48)
        marked.save(root / f"p{n}.png")
        mask.save(root / f"m{n}.png")
        out.append({"image": root / f"p{n}.png", "mask": root / f"m{n}.png"})
    return out


def _ctx(tmp: Path, name: str, files: dict[str, Path], progress: Any = None) -> RunContext:
    work = tmp / name
    work.mkdir()
    return RunContext(job_id=name, workdir=work, files=files, progress=progress or tiny.ProgressLog())


def _inputs(seed: int, prompt: str = "a wooden bench", **extra: Any) -> dict[str, Any]:
    return {**URIS, "prompt": prompt, "steps": 2, "seed": seed, **extra}


def _pixels(result: RunResult[Any] | Exception) -> np.ndarray:
    assert isinstance(result, RunResult), result
    with Image.open(next(iter(result.files.values()))) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def test_each_inpaint_job_of_a_batch_gets_what_it_gets_alone_tiny_random_fluxfill(
    flux: InpaintPipeline, photos: list[dict[str, Path]], tmp_path: Path
) -> None:
    jobs = [(1, "a wooden bench"), (2, "a red car"), (3, "a wooden bench")]
    alone = [
        flux.run(InpaintInputs.model_validate(_inputs(s, p)), _ctx(tmp_path, f"a{s}", photos[s % 2]))
        for s, p in jobs
    ]
    batched = flux.run_batch([(_inputs(s, p), _ctx(tmp_path, f"b{s}", photos[s % 2])) for s, p in jobs])
    for one, many in zip(alone, batched, strict=True):
        assert isinstance(many, RunResult)
        assert many.outputs.seed == one.outputs.seed
        assert many.outputs.timings["batch_size"] == 3
        # The same noise and image, up to float summation order in batched matmuls (an 8-bit value
        # may move by one).
        np.testing.assert_allclose(_pixels(many), _pixels(one), atol=1)
    # Seeds and prompts still decide: no two jobs of the batch got the same picture.
    assert not np.array_equal(_pixels(batched[0]), _pixels(batched[2]))
    assert not np.array_equal(_pixels(batched[0]), _pixels(batched[1]))


def test_inpaint_jobs_of_different_sizes_run_one_call_per_size_tiny_random_fluxfill(
    flux: InpaintPipeline, photos: list[dict[str, Path]], tmp_path: Path
) -> None:
    results = flux.run_batch([(_inputs(n), _ctx(tmp_path, f"s{n}", photos[n])) for n in range(3)])
    assert [r.outputs.width for r in results if isinstance(r, RunResult)] == [64, 64, 80]
    assert [r.outputs.timings["batch_size"] for r in results if isinstance(r, RunResult)] == [2, 2, 1]


def test_a_bad_mask_or_a_cancel_never_fails_inpaint_batch_mates_tiny_random_fluxfill(
    flux: InpaintPipeline, photos: list[dict[str, Path]], tmp_path: Path
) -> None:
    not_an_image = tmp_path / "bad.png"
    not_an_image.write_text("not an image")
    ok, cancel = tiny.ProgressLog(), tiny.ProgressLog(cancel_at=("denoising", 1))
    results = flux.run_batch(
        [
            (_inputs(1), _ctx(tmp_path, "ok", photos[0], ok)),
            (_inputs(2), _ctx(tmp_path, "bad", {**photos[1], "mask": not_an_image})),
            (_inputs(3), _ctx(tmp_path, "cancel", photos[0], cancel)),
            (_inputs(4, strength=2.0), _ctx(tmp_path, "strength", photos[0])),
        ]
    )
    assert isinstance(results[0], RunResult) and results[0].outputs.timings["batch_size"] == 2
    assert isinstance(results[1], InvalidInput) and "the mask is not an image" in str(results[1])
    assert isinstance(results[2], Cancelled)
    assert isinstance(results[3], InvalidInput) and "strength" in str(results[3])
    assert ok.stages("denoising") == [0.5, 1.0]  # progress per step, per job
    assert cancel.stages("denoising") == [0.5]  # stopped being told at its checkpoint
    assert ok.stages("writing result") == [1.0] and cancel.stages("writing result") == []


def test_inpaint_jobs_submitted_together_share_a_call_through_the_batcher_tiny_random_fluxfill(
    flux: InpaintPipeline, photos: list[dict[str, Path]], tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    batcher = Batcher("inpaint", flux, max_batch=4, max_wait_ms=500)
    with ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(batcher.submit, _inputs(n), _ctx(tmp_path, f"t{n}", photos[0])) for n in range(4)
        ]
        results = [f.result(timeout=120) for f in futures]
    assert [r.outputs.seed for r in results] == [0, 1, 2, 3]
    assert batcher.stats.jobs == 4 and batcher.stats.batches < 4
