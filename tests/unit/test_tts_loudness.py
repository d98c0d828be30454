"""The tts pipeline's own BS.1770 loudness and its in-process read-back of what it encoded.

Loudness is what a listener of a tts output gets (`loudness_lufs` on the job, and the level the
pipeline aims at): it must agree with the reference meters, ffmpeg's ``ebur128`` and pyloudnorm's
meter on the recommendation's filter coefficients, at every rate a job can ask for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from pipelines.tts.audio import (
    ENCODINGS,
    SILENCE_LUFS,
    _moving_average,
    decode,
    encode,
    limit_peaks,
    loudness,
)

RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def speechlike(rate: int, seconds: float = 6.0, seed: int = 0) -> np.ndarray:
    """Bursts of a voiced tone over noise, with pauses: blocks above and below both gates."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    voiced = 0.3 * np.sin(2 * np.pi * 180 * t) * np.sin(2 * np.pi * 3 * t) ** 2
    envelope = (np.sin(2 * np.pi * 0.4 * t) > -0.2).astype(np.float64)
    return ((voiced + 0.02 * rng.standard_normal(len(t))) * envelope).astype(np.float32)


@pytest.mark.parametrize("rate", RATES)
def test_loudness_is_the_reference_bs1770_meter_at_every_rate(rate: int) -> None:
    audio = speechlike(rate, seed=rate)
    reference = pyloudnorm.Meter(rate, filter_class="DeMan").integrated_loudness(audio.astype(np.float64))
    assert loudness(audio, rate) == pytest.approx(reference, abs=1e-6)


def test_loudness_agrees_with_ffmpeg_ebur128(tmp_path: Path) -> None:
    rate = 48000
    audio = speechlike(rate, seconds=8.0)
    wav = encode(audio, rate, "flac", tmp_path)
    report = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-nostats", "-i", str(wav), "-af", "ebur128", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr  # fmt: skip
    summary = report[report.rindex("Integrated loudness:") :]
    ffmpeg_lufs = float(re.search(r"I:\s+(-?[\d.]+) LUFS", summary)[1])  # type: ignore[index]
    assert loudness(decode(wav, "flac", rate), rate) == pytest.approx(ffmpeg_lufs, abs=0.1)


def test_silence_and_a_too_short_sound_are_measured_as_the_recommendation_says() -> None:
    assert loudness(np.zeros(48000, np.float32), 48000) == SILENCE_LUFS
    blip = speechlike(16000, seconds=0.2)
    # Shorter than one 400 ms block: measured padded with silence, so quieter, not an error.
    assert SILENCE_LUFS < loudness(blip, 16000) < loudness(np.tile(blip, 10), 16000)


def test_a_gain_moves_loudness_by_as_many_decibels() -> None:
    audio = speechlike(22050)
    assert loudness(audio * 10 ** (6 / 20), 22050) - loudness(audio, 22050) == pytest.approx(6.0, abs=1e-6)


@pytest.mark.parametrize("fmt", sorted(ENCODINGS))
def test_an_output_read_back_in_process_is_what_ffmpeg_decodes(fmt: str, tmp_path: Path) -> None:
    rate = 24000
    audio = speechlike(rate, seconds=3.0)
    path = encode(audio, rate, fmt, tmp_path)
    played = 48000 if fmt == "opus" else rate
    ours = decode(path, fmt, played)
    source = ["-f", "s16le", "-ar", str(played), "-ac", "1"] if fmt == "pcm" else []
    cli = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *source, "-i", str(path),
         "-f", "f32le", "-ac", "1", "-ar", str(played), "pipe:1"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    theirs = np.frombuffer(cli, dtype="<f4")
    assert abs(len(ours) - len(theirs)) <= played // 100  # within 10 ms (codec padding)
    n = min(len(ours), len(theirs))
    assert np.max(np.abs(ours[:n] - theirs[:n])) < 1e-3
    assert loudness(ours, played) == pytest.approx(loudness(theirs, played), abs=0.01)


def test_a_corrupt_output_is_a_named_encoding_failure(tmp_path: Path) -> None:
    from core.errors import PermanentError

    bad = tmp_path / "speech.mp3"
    bad.write_bytes(b"not an mp3 at all" * 10)
    with pytest.raises(PermanentError) as caught:
        decode(bad, "mp3", 22050)
    assert caught.value.code == "encode_failed"


def test_the_peak_limiter_keeps_every_sample_under_its_ceiling_with_a_smooth_gain() -> None:
    rate = 22050
    audio = speechlike(rate) * 4.0
    limited = limit_peaks(audio.astype(np.float32), rate, -1.0)
    assert np.max(np.abs(limited)) <= 10 ** (-1 / 20) + 1e-6
    width = 110
    x = np.random.default_rng(1).standard_normal(5000)
    kernel = np.ones(width) / width
    padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    np.testing.assert_allclose(
        _moving_average(x, width), np.convolve(padded, kernel, mode="valid"), atol=1e-9
    )
