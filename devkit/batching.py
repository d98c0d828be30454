"""Batching across jobs, on vs off at the same offered load: every job submitted at once to the
batcher the service uses (``gpu_service.batching.Batcher``), with batches of one, then of
``max_batch``. Used by ``bench/throughput.py`` (tiny and bundled models on the CPU) and by
``tests/gpu/test_batching_gpu.py`` (real models on CUDA).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from core.spec import BatchingPipeline, RunContext, RunResult
from gpu_service.batching import Batcher

#: A job of the benchmark: ``(inputs, files)`` for job number ``n``.
JobMaker = Callable[[int], tuple[dict[str, Any], dict[str, Path]]]
#: Whether two results of one job (alone, batched) are the same result.
Same = Callable[[RunResult[Any], RunResult[Any]], bool]


def _all_at_once(
    pipeline: BatchingPipeline, make_job: JobMaker, jobs: int, size: int, tmp: Path, label: str
) -> tuple[float, list[RunResult[Any]], Batcher]:
    batcher = Batcher(f"bench-{label}", pipeline, max_batch=size, max_wait_ms=50)

    def one(n: int) -> RunResult[Any]:
        inputs, files = make_job(n)
        work = tmp / f"{label}-{n}"
        work.mkdir(parents=True)
        return batcher.submit(inputs, RunContext(job_id=f"{label}{n}", workdir=work, files=files))

    started = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(one, range(jobs)))
    return time.perf_counter() - started, results, batcher


def on_off(
    pipeline: BatchingPipeline,
    make_job: JobMaker,
    *,
    jobs: int,
    max_batch: int,
    tmp: Path,
    same: Callable[[RunResult[Any], RunResult[Any]], bool],
) -> dict[str, Any]:
    """Seconds for ``jobs`` jobs unbatched and batched (after a warm-up), the speedup, and whether
    every job's result was the same both ways (``same``)."""
    _all_at_once(pipeline, make_job, min(jobs, max_batch), max_batch, tmp, "warm")
    off, alone, _ = _all_at_once(pipeline, make_job, jobs, 1, tmp, "off")
    on, batched, batcher = _all_at_once(pipeline, make_job, jobs, max_batch, tmp, "on")
    return {
        "jobs": jobs,
        "max_batch": max_batch,
        "unbatched_seconds": round(off, 3),
        "batched_seconds": round(on, 3),
        "speedup": round(off / on, 2),
        "mean_batch": round(batcher.stats.mean_size, 2),
        "same_results": all(same(a, b) for a, b in zip(alone, batched, strict=True)),
        "peak_gpu_memory_bytes": max(
            (getattr(r.outputs, "peak_gpu_memory_bytes", None) or 0 for r in [*alone, *batched]), default=0
        ),
    }


def same_transcript(a: RunResult[Any], b: RunResult[Any]) -> bool:
    return bool(a.outputs == b.outputs)


def same_image(atol: int = 1) -> Callable[[RunResult[Any], RunResult[Any]], bool]:
    """Results whose images differ by at most ``atol`` per 8-bit value (batched matmuls may sum in
    another order)."""
    import numpy as np
    from PIL import Image

    def pixels(r: RunResult[Any]) -> Any:
        with Image.open(next(iter(r.files.values()))) as image:
            return np.asarray(image.convert("RGB")).astype(np.int16)

    return lambda a, b: bool(np.abs(pixels(a) - pixels(b)).max() <= atol)


# -- the pipelines ----------------------------------------------------------------------------------


def transcribe_on_off(
    clips: list[Path], tmp: Path, *, jobs: int, max_batch: int, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Speech clips through the transcribe pipeline (bundled tiny.en unless ``config`` says)."""
    from pipelines.transcribe import TranscribeConfig
    from pipelines.transcribe.model import load

    settings = {"batch_size": 8, **(config or {})}
    pipeline = load(TranscribeConfig.model_validate(settings))

    def job(n: int) -> tuple[dict[str, Any], dict[str, Path]]:
        return {"media": "gs://bucket/uploads/u/x.wav", "beam_size": 5}, {"media": clips[n % len(clips)]}

    figures = on_off(pipeline, job, jobs=jobs, max_batch=max_batch, tmp=tmp, same=same_transcript)
    model = settings.get("model_dir") or "bundled tiny.en"
    return {
        "model": f"{model}, {pipeline.device} {pipeline.compute_type}, batch_size {settings['batch_size']}",
        **figures,
    }


def edit_on_off(
    model_dir: Path,
    tmp: Path,
    *,
    jobs: int,
    max_batch: int,
    steps: int,
    size: int,
    device: str,
    same: Same | None = None,
) -> dict[str, Any]:
    from devkit.sample_images import make_sample
    from pipelines.edit import SPEC, EditConfig

    tmp.mkdir(parents=True, exist_ok=True)
    config = EditConfig.model_validate({"model_dir": str(model_dir), "device": device})
    pipeline = cast(BatchingPipeline, SPEC.load(config))  # the spec declares batching
    _clean, marked, _mask = make_sample(size, size)
    photo = tmp / "edit-photo.png"
    marked.save(photo)

    def job(n: int) -> tuple[dict[str, Any], dict[str, Path]]:
        inputs = {
            "image": "gs://bucket/uploads/u/p.png",
            "instruction": "make it blue",
            "steps": steps,
            "seed": n,
        }
        return inputs, {"image": photo}

    figures = on_off(pipeline, job, jobs=jobs, max_batch=max_batch, tmp=tmp, same=same or same_image())
    return {"model": f"{model_dir.name}, {size}x{size}, {steps} steps, {device}", **figures}


def inpaint_on_off(
    config: dict[str, Any],
    tmp: Path,
    *,
    jobs: int,
    max_batch: int,
    steps: int,
    size: int,
    same: Same | None = None,
) -> dict[str, Any]:
    from devkit.sample_images import make_sample
    from pipelines.inpaint import SPEC, InpaintConfig

    tmp.mkdir(parents=True, exist_ok=True)
    settings = InpaintConfig.model_validate({"backend": "flux", **config})
    pipeline = cast(BatchingPipeline, SPEC.load(settings))  # the spec declares batching
    _clean, marked, mask = make_sample(size, size)
    image, mask_path = tmp / "inpaint-photo.png", tmp / "inpaint-mask.png"
    marked.save(image)
    mask.save(mask_path)

    def job(n: int) -> tuple[dict[str, Any], dict[str, Path]]:
        inputs = {
            "image": "gs://bucket/uploads/u/p.png",
            "mask": "gs://bucket/uploads/u/m.png",
            "prompt": "a wooden bench",
            "steps": steps,
            "seed": n,
        }
        return inputs, {"image": image, "mask": mask_path}

    figures = on_off(pipeline, job, jobs=jobs, max_batch=max_batch, tmp=tmp, same=same or same_image())
    return {"model": f"{Path(config['model_dir']).name}, {size}x{size}, {steps} steps", **figures}
