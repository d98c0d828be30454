"""Reference recordings through the real download path (Storage emulator) into the tts pipeline on
the VibeVoice backend, with a tiny random-weight checkpoint built here.

The test stack's tts service runs Piper (one tts configuration per stack); the VibeVoice pipeline
runs in the test process, fed by the same steps the GPU service takes: the inputs' file fields
(:func:`core.spec.file_uris`), the location check, and :class:`infra.blobs.BlobStore` downloads.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.spec import RunContext, RunResult, check_input_location, file_uris
from devkit.tiny_vibevoice import build_tiny_vibevoice
from infra.blobs import BlobStore, storage_client
from infra.client import Client
from infra.localstack.stack import LocalStack
from infra.settings import Settings
from pipelines.tts import TtsConfig, TtsInputs
from pipelines.tts.pipeline import load

pytestmark = pytest.mark.pipelines()


def sine(path: Path, freq: int, seconds: float) -> Path:
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"sine=f={freq}:d={seconds}",
            str(path),
        ],
        check=True,
    )
    return path


def downloaded(inputs: TtsInputs, uid: str, settings: Settings, workdir: Path) -> dict[str, Path]:
    """The job's input files, fetched as the GPU service fetches them."""
    blobs = BlobStore(storage_client(settings))
    files: dict[str, Path] = {}
    for name, uri, _rule in file_uris(inputs):
        check_input_location(name, uri, uid, settings.media_bucket)
        dest = workdir / f"input-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}{Path(uri).suffix}"
        files[name] = blobs.download(uri, dest)
    return files


def test_tiny_random_vibevoice_speaks_uploaded_references_for_two_speakers(
    stack: LocalStack, client: Client, settings: Settings, uid: str, tmp_path: Path
) -> None:
    model_dir = build_tiny_vibevoice(tmp_path / "model")
    tts = load(TtsConfig(backend="vibevoice", model_dir=str(model_dir), device="cpu", max_chunk_chars=40))
    notes = tmp_path / "notes.wav"
    notes.write_text("not a recording\n")
    first = client.upload(sine(tmp_path / "first.wav", 220, 2.0), uid)
    second = client.upload(sine(tmp_path / "second.mp3", 330, 1.5), uid)
    broken = client.upload(notes, uid, content_type="audio/wav")  # declared audio, is not

    script = "Speaker 1: Is the harbour open today?\nSpeaker 2: It is, the boats leave at nine."
    jobs = {
        "good": TtsInputs(
            text=script, references={"Speaker 1": first, "Speaker 2": second}, format="wav", seed=4
        ),
        "broken": TtsInputs(text=script, references={"Speaker 1": first, "Speaker 2": broken}, format="wav"),
    }
    items = []
    stages: dict[str, list[str]] = {name: [] for name in jobs}
    for name, inputs in jobs.items():
        workdir = tmp_path / name
        workdir.mkdir()
        files = downloaded(inputs, uid, settings, workdir)
        assert sorted(files) == ["references.Speaker 1", "references.Speaker 2"]
        ctx = RunContext(
            job_id=name,
            workdir=workdir,
            files=files,
            progress=lambda f, s, name=name: stages[name].append(s),
        )
        items.append((inputs, ctx))

    good, broken_result = tts.run_batch(items)
    assert isinstance(broken_result, InvalidInput)
    assert "reference recording for Speaker 2 could not be read" in str(broken_result)
    assert isinstance(good, RunResult)
    out = good.outputs
    assert out.backend == "vibevoice" and out.sample_rate == 24_000 and out.chunks == 2
    assert out.voices == ["Speaker 1", "Speaker 2"] and out.duration_seconds > 1
    assert out.loudness_lufs == pytest.approx(-16.0, abs=1.0)
    assert "spoken 2/2 chunks" in stages["good"]
    assert Path(good.files["speech.wav"]).stat().st_size > 24_000
