"""GPU checks for the ``t2v`` pipeline. Auto-skipped without CUDA.

- a tiny random Wan on CUDA (no downloads): bf16, every memory strategy places and runs, runtime
  and fused adapters, peak memory reported;
- real weights from a local directory named by an environment variable (skipped when unset):

  ``GPUJOBS_WAN_T2V_DIR``  Wan2.1-T2V-1.3B in diffusers layout (Wan-AI/Wan2.1-T2V-1.3B-Diffusers)

Run with ``pytest tests/gpu/test_t2v_gpu.py -m gpu -s`` to see timings and peak memory.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from core.spec import RunContext, RunResult
from devkit import tiny_diffusers as tiny  # sets HF_HUB_OFFLINE before diffusers loads
from devkit.gpu import L4_BUDGET_BYTES, l4_budget, local_model, needs_program
from pipelines.imaging.memory import lend
from pipelines.t2v import SPEC, T2VConfig, T2VInputs, T2VOutputs

pytestmark = pytest.mark.gpu

LORA = "wan/pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-wan-gpu")
    model = tiny.build_tiny_wan(root / "wan")
    tiny.write_tiny_lora(model, root / "loras" / "wan", kind="wan")
    return model, root / "loras"


def _run(config: T2VConfig, workdir: Path, **inputs: Any) -> RunResult[T2VOutputs]:
    needs_program("ffmpeg", "ffprobe")  # the MP4 is encoded and counted with them
    pipeline = SPEC.load(config)
    workdir.mkdir(parents=True, exist_ok=True)
    job = {"prompt": "a red cat", "num_frames": 9, "width": 64, "height": 32, "steps": 3, "seed": 1, **inputs}
    result: RunResult[T2VOutputs] = pipeline.run(T2VInputs.model_validate(job), RunContext("job", workdir))
    return result


def _frame_count(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "json", str(path)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return int(json.loads(out.stdout)["streams"][0]["nb_read_frames"])


@pytest.mark.parametrize("strategy", ["gpu", "model_offload", "sequential_offload", "auto"])
def test_t2v_tiny_random_wan_on_cuda_with_each_memory_strategy(
    tiny_wan: tuple[Path, Path], tmp_path: Path, strategy: str
) -> None:
    model, loras = tiny_wan
    config = T2VConfig.model_validate(
        {"model_dir": str(model), "device": "cuda", "memory_strategy": strategy, "lora_dir": str(loras)}
    )
    result = _run(config, tmp_path, loras=[{"path": LORA, "weight": 0.8}])
    out = result.outputs
    assert out.memory_strategy.startswith("gpu" if strategy == "auto" else strategy)
    assert out.peak_gpu_memory_bytes is not None and out.peak_gpu_memory_bytes > 0
    assert _frame_count(result.files["video.mp4"]) == 9


def test_t2v_tiny_random_wan_fused_adapters_on_cuda(tiny_wan: tuple[Path, Path], tmp_path: Path) -> None:
    model, loras = tiny_wan
    config = T2VConfig.model_validate(
        {
            "model_dir": str(model),
            "device": "cuda",
            "lora_dir": str(loras),
            "lora_mode": "fused",
            "fused_loras": [{"path": LORA, "weight": 0.8}],
        }
    )
    result = _run(config, tmp_path)
    assert result.outputs.lora_mode == "fused" and _frame_count(result.files["video.mp4"]) == 9


@pytest.mark.slow
def test_t2v_wan_1_3b_fits_an_l4_budget(tmp_path: Path, record_property: Any) -> None:
    """Wan2.1-T2V-1.3B, 33 frames at 832x480, planned as on an L4: peak under its free memory."""
    config = T2VConfig(model_dir=str(local_model("GPUJOBS_WAN_T2V_DIR")), device="cuda", dtype="bfloat16")
    with lend(l4_budget(), "t2v"):
        result = _run(
            config,
            tmp_path,
            prompt="a cat walks on the grass",
            num_frames=33,
            width=832,
            height=480,
            steps=30,
        )
    out = result.outputs
    record_property("timings", out.timings)
    record_property("peak_gpu_memory_bytes", out.peak_gpu_memory_bytes)
    print(
        f"wan 1.3B: {out.memory_strategy}, peak {(out.peak_gpu_memory_bytes or 0) / 1e9:.1f} GB, {out.timings}"
    )
    assert out.peak_gpu_memory_bytes is not None and out.peak_gpu_memory_bytes < L4_BUDGET_BYTES
    assert _frame_count(result.files["video.mp4"]) == 33
