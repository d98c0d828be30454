"""The GPU benchmark: what the GPU paths do on the machine it runs on, in figures.

    python -m bench.gpu                 # on a CUDA machine (scripts/gpu_check.py runs it)
    python -m bench.gpu --device cpu    # the same code on the CPU, smaller (a dry run)

1. **Batched vs one at a time** for each pipeline that batches (``inpaint`` with FLUX.1 Fill, GGUF
   and bf16; ``edit`` with InstructPix2Pix), every job submitted at once to the service's batcher:
   seconds both ways, the speedup, and whether every job's image is the same result both ways (on
   CUDA: PSNR and mean difference, ``devkit/gpu.py``).
2. **Peak GPU memory per pipeline**: weights after load and the peak of one job, each pipeline
   loaded alone, and the memory plan each chose.
3. **faster-whisper on CUDA in float16**, where the machine's CUDA allows it: CTranslate2 4.8.5
   loads ``libcublas.so.12`` (CUDA 12); a machine with only CUDA 13 gets the reason recorded. With
   a Whisper model (``GPUJOBS_WHISPER_MODEL_DIR`` or the bundled tiny.en) and speech clips (Piper),
   batched vs one at a time.
4. **The plans** for the real models on an L4 and on this card (pure arithmetic over the sizes in
   the README), so the figures sit next to what the deployment would do.

The models are the tiny random-weight pipelines the tests build (nothing is downloaded): their
timings are dominated by per-call overhead, which is what batching amortizes; real-weight figures
come from the slow GPU tests with ``GPUJOBS_*`` directories. Writes ``bench/results/gpu.json``
(``gpu-dry-run.json`` for ``--device cpu``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_cuda": torch.version.cuda,
    }
    from importlib import metadata

    for name in ("diffusers", "transformers", "accelerate", "peft", "gguf", "ctranslate2", "faster-whisper"):
        try:
            info[name] = metadata.version(name)
        except metadata.PackageNotFoundError:  # a missing optional package is a figure, not a failure
            info[name] = "missing"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info.update(gpu=props.name, gpu_total_gb=round(total / 1e9, 1), gpu_free_gb=round(free / 1e9, 1))
    return info


def _same(device: str) -> Callable[[Any, Any], bool]:
    import numpy as np
    from PIL import Image

    from devkit.gpu import assert_same_image

    def same(a: Any, b: Any) -> bool:
        with Image.open(next(iter(a.files.values()))) as x, Image.open(next(iter(b.files.values()))) as y:
            try:
                assert_same_image(
                    np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")), device=device, batched=True
                )
            except AssertionError:
                return False
        return True

    return same


def batching(device: str, models: dict[str, Path], tmp: Path, *, jobs: int, max_batch: int) -> dict[str, Any]:
    from devkit.batching import edit_on_off, inpaint_on_off

    flux = {"model_dir": str(models["flux"]), "device": device, "max_sequence_length": 32}
    out: dict[str, Any] = {}
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "inpaint_flux_fill": lambda: inpaint_on_off(
            flux, tmp / "flux", jobs=jobs, max_batch=max_batch, steps=4, size=256, same=_same(device)
        ),
        "inpaint_flux_fill_gguf": lambda: inpaint_on_off(
            {**flux, "transformer_gguf": str(models["gguf"]), "gguf_dequantize": "never"},
            tmp / "gguf",
            jobs=jobs,
            max_batch=max_batch,
            steps=4,
            size=256,
            same=_same(device),
        ),
        "edit_instruct_pix2pix": lambda: edit_on_off(
            models["ip2p"], tmp / "ip2p", jobs=jobs, max_batch=max_batch, steps=4, size=256, device=device,
            same=_same(device),
        ),
    }  # fmt: skip
    for name, run in runs.items():
        out[name] = _guarded(run)
    return out


def peaks(device: str, models: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """Each pipeline alone: weights on the GPU after load, the peak of one job, its plan."""
    import torch

    from core.spec import RunContext
    from devkit.sample_images import make_sample
    from pipelines.edit import SPEC as EDIT
    from pipelines.inpaint import SPEC as INPAINT

    _clean, marked, mask = make_sample(512, 512)
    marked.save(tmp / "peak-image.png")
    mask.save(tmp / "peak-mask.png")
    files = {"image": tmp / "peak-image.png", "mask": tmp / "peak-mask.png"}
    cases: dict[str, tuple[Any, dict[str, Any], dict[str, Any]]] = {
        "inpaint_flux_fill_gguf": (
            INPAINT,
            {"backend": "flux", "model_dir": str(models["flux"]), "transformer_gguf": str(models["gguf"]),
             "device": device, "max_sequence_length": 32},
            {"image": "gs://bucket/i.png", "mask": "gs://bucket/m.png", "steps": 4, "seed": 1},
        ),
        "edit_instruct_pix2pix": (
            EDIT,
            {"model_dir": str(models["ip2p"]), "device": device},
            {"image": "gs://bucket/i.png", "instruction": "make it blue", "steps": 4, "seed": 1},
        ),
    }  # fmt: skip
    out: dict[str, Any] = {}
    for name, (spec, config, job) in cases.items():

        def one(
            spec: Any = spec, config: dict[str, Any] = config, job: dict[str, Any] = job
        ) -> dict[str, Any]:
            cuda = device.startswith("cuda")
            if cuda:
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated()
            pipeline = spec.load(spec.config.model_validate(config))
            loaded = torch.cuda.memory_allocated() - base if cuda else None
            work = tmp / f"peak-{spec.name}"
            work.mkdir(exist_ok=True)
            result = pipeline.run(spec.inputs.model_validate(job), RunContext("peak", work, files))
            figures = {
                "weights_on_gpu_bytes": loaded,
                "peak_gpu_memory_bytes": result.outputs.peak_gpu_memory_bytes,
                "memory_strategy": result.outputs.memory_strategy,
            }
            del pipeline
            return figures

        out[name] = _guarded(one)
    return out


def whisper(device: str, tmp: Path) -> dict[str, Any]:
    """faster-whisper (CTranslate2) on CUDA in float16, where this machine's CUDA allows it."""
    if not device.startswith("cuda"):
        return {"skipped": "not a CUDA run"}
    try:
        ctypes.CDLL("libcublas.so.12")
    except OSError as exc:
        return {
            "skipped": "CTranslate2 4.8.5 (faster-whisper's engine) is built for CUDA 12 and loads "
            f"libcublas.so.12, which this machine does not have ({exc}); torch here uses CUDA {_torch_cuda()}"
        }
    try:
        import ctranslate2
    except ImportError as exc:
        return {"skipped": f"ctranslate2 not installed ({exc}): prepare the wheels with --whisper"}
    figures: dict[str, Any] = {"ctranslate2": ctranslate2.__version__}
    figures["cuda_devices"] = ctranslate2.get_cuda_device_count()
    figures["cuda_compute_types"] = sorted(ctranslate2.get_supported_compute_types("cuda"))
    if "float16" not in figures["cuda_compute_types"]:
        figures["skipped"] = "float16 is not a supported CUDA compute type here"
        return figures
    try:
        from devkit.batching import transcribe_on_off
        from devkit.speech import speech_clips

        clips = speech_clips(tmp)
    except Exception as exc:
        figures["skipped"] = f"no speech clips to transcribe ({type(exc).__name__}: {exc})"
        return figures
    config: dict[str, Any] = {"device": "cuda", "compute_type": "float16"}
    if os.environ.get("GPUJOBS_WHISPER_MODEL_DIR"):
        config["model_dir"] = os.environ["GPUJOBS_WHISPER_MODEL_DIR"]
    figures["batching"] = _guarded(
        lambda: transcribe_on_off(clips, tmp / "whisper", jobs=8, max_batch=4, config=config)
    )
    return figures


def _torch_cuda() -> str:
    import torch

    return str(torch.version.cuda)


def plans() -> dict[str, Any]:
    """What the deployment plans for the real models: on an L4 (22 GB free) and on this card."""
    from pipelines.imaging.memory import GiB, choose_memory_strategy, place_text_encoders

    gb = 10**9
    flux_denoiser = int(12.87 * gb)
    flux_encoders = int(9.75 * gb)
    out: dict[str, Any] = {}
    for card, free in (("L4", 22 * gb), ("H100", 78 * gb)):
        encoders, _ = place_text_encoders(
            "cuda", free, denoiser_bytes=flux_denoiser, encoder_bytes=flux_encoders, headroom_bytes=3 * GiB
        )
        row: dict[str, Any] = {"inpaint_flux_q8_text_encoders": encoders}
        for batch in (1, 4):
            try:
                row[f"inpaint_flux_q8_batch{batch}"] = choose_memory_strategy(
                    "cuda",
                    free,
                    flux_denoiser,
                    largest_component_bytes=int(12.7 * gb),
                    quantized=True,
                    max_batch=batch,
                ).name
            except Exception as exc:
                row[f"inpaint_flux_q8_batch{batch}"] = f"refused: {exc}"
        try:
            row["edit_qwen_bf16"] = choose_memory_strategy(
                "cuda", free, int(57.6 * gb), largest_component_bytes=int(40.8 * gb), sequential=False
            ).name
        except Exception as exc:
            row["edit_qwen_bf16"] = f"refused: {exc}"
        out[card] = row
    return out


def _guarded(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A part's figures, or the error that stopped it (the other parts still run)."""
    started = time.perf_counter()
    try:
        figures = run()
    except Exception as exc:
        figures = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    figures["part_seconds"] = round(time.perf_counter() - started, 2)
    return figures


def tiny_models(root: Path) -> dict[str, Path]:
    from devkit import tiny_diffusers as tiny

    flux = tiny.build_tiny_fluxfill(root / "flux")
    return {
        "flux": flux,
        "gguf": tiny.write_flux_transformer_gguf_q8(flux, root / "flux-Q8_0.gguf"),
        "ip2p": tiny.build_tiny_instruct_pix2pix(root / "ip2p"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present), 'cuda' or 'cpu'")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="the JSON file to write")
    args = parser.parse_args(argv)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = args.out or RESULTS / ("gpu.json" if device.startswith("cuda") else "gpu-dry-run.json")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp_name:
        tmp = Path(tmp_name)
        report: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": device,
            "environment": environment(),
            "models": "tiny random-weight pipelines built here (no downloads)",
        }
        models = tiny_models(tmp / "models")
        report["batched_vs_one_at_a_time"] = batching(
            device, models, tmp, jobs=args.jobs, max_batch=args.max_batch
        )
        report["peak_memory_per_pipeline"] = peaks(device, models, tmp)
        report["whisper_float16"] = whisper(device, tmp)
        report["plans"] = plans()
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
