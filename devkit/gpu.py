"""Helpers for the GPU-marked tests that run real weights from a local directory."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines.imaging.memory import GpuBudget

L4_BUDGET_BYTES = 22 * 10**9  # what a 24 GB L4 has free after the CUDA context


def needs(*modules: str) -> None:
    """Skip the test, saying which, when a package it needs is not installed (a bare GPU machine
    has torch but not the Piper voices or the bundled Whisper model)."""
    for module in modules:
        pytest.importorskip(module, reason=f"needs the {module!r} package, not installed here")


def needs_program(*programs: str) -> None:
    """Skip the test when a program it runs (ffmpeg, ffprobe) is not on the PATH."""
    import shutil

    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"needs {program} on the PATH")


def local_model(variable: str) -> Path:
    """The path in environment variable ``variable``; the test is skipped, saying why, when it is
    unset or names nothing (weights are never downloaded)."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"set {variable} to a local model path to run this test")
    path = Path(value)
    if not path.exists():
        pytest.skip(f"{variable}={value} does not exist")
    return path


# -- what "the same result" means on each device ---------------------------------------------------
#
# On the CPU the same inputs give the same bits, so results are compared exactly (batched calls up
# to float summation order: an 8-bit value may move by one). On CUDA they do not: bf16 GEMMs and
# cuDNN pick kernels by shape (a batch of four takes other kernels than one image), and reductions
# may sum in another order from run to run. There a result is the same when it is perceptually the
# same: a high PSNR and a small mean difference for images, a high SNR and the same length for audio,
# the same words for a transcript.

#: Images: PSNR at least this (8-bit), and a mean absolute difference at most this.
MIN_PSNR_DB = 30.0
MAX_MEAN_ABS_DIFF = 2.0
#: Audio: signal-to-difference ratio at least this.
MIN_AUDIO_SNR_DB = 20.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit images, in dB (infinite when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def assert_same_image(a: np.ndarray, b: np.ndarray, *, device: str, batched: bool = False) -> None:
    """``a`` and ``b`` are the same result on ``device`` (see above)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    if not device.startswith("cuda"):
        if batched:
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
        else:
            assert diff.max() == 0
        return
    assert psnr(a, b) >= MIN_PSNR_DB, f"PSNR {psnr(a, b):.1f} dB"
    assert float(diff.mean()) <= MAX_MEAN_ABS_DIFF, f"mean difference {diff.mean():.2f}"


def assert_same_audio(a: np.ndarray, b: np.ndarray, *, device: str) -> None:
    """Two renderings of the same speech are the same on ``device``: equal on the CPU; on CUDA the
    same length and a difference at least ``MIN_AUDIO_SNR_DB`` below the signal."""
    if not device.startswith("cuda"):
        np.testing.assert_array_equal(a, b)
        return
    assert a.shape == b.shape, (a.shape, b.shape)
    signal = float(np.mean(a.astype(np.float64) ** 2))
    noise = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    snr = float("inf") if noise == 0 else 10 * math.log10(max(signal, 1e-12) / noise)
    assert snr >= MIN_AUDIO_SNR_DB, f"SNR {snr:.1f} dB"


def l4_budget() -> GpuBudget:
    """An L4's GPU memory, to plan against on a larger card: a test that claims an L4 result runs
    the plan an L4 would run (the H100's ``auto`` plan places everything on the GPU)."""
    return GpuBudget(L4_BUDGET_BYTES, concurrent=1, source="an L4 (forced by the test)")
