"""The tts pipeline on the VibeVoice backend (a tiny random-weight checkpoint built here), alone and
with the chunks of several jobs in shared model calls.

The random model says nothing intelligible: these tests check what the pipeline does around it
(references per speaker, outputs, progress, cancel, errors, and that batching changes no job's audio).
"""

from __future__ import annotations

import shutil
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import Cancelled, InvalidInput
from core.spec import RunContext, RunResult
from devkit.tiny_vibevoice import build_tiny_vibevoice
from pipelines.tts import TtsConfig, TtsInputs
from pipelines.tts.audio import decode
from pipelines.tts.pipeline import TtsPipeline, load

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIALOGUE = (
    "Speaker 1: Good morning, is the harbour open today?\n"
    "Speaker 2: It is, the boats leave at nine.\n"
    "Speaker 1: Then I will take the first one."
)


def write_wav(path: Path, seconds: float, rate: int, freq: float) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    samples = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("refs")
    bad = d / "notes.wav"
    bad.write_text("these are my notes, not a recording\n")
    return {
        "alice": write_wav(d / "alice.wav", 2.0, 16_000, 220),
        "bob": write_wav(d / "bob.wav", 1.5, 24_000, 330),
        "bad": bad,
    }


@pytest.fixture(scope="module")
def tts(tmp_path_factory: pytest.TempPathFactory) -> TtsPipeline:
    model_dir = build_tiny_vibevoice(tmp_path_factory.mktemp("tiny-vibevoice"))
    config = TtsConfig(
        backend="vibevoice", model_dir=str(model_dir), device="cpu", max_chunk_chars=40, max_batch_chunks=4
    )
    return load(config)


@pytest.fixture(scope="module")
def alone_tts(tts: TtsPipeline) -> TtsPipeline:
    """The same loaded model speaking one chunk per call: what each chunk gives alone."""
    config = tts.config.model_copy(update={"max_batch_chunks": 1})
    backend = tts.backend
    single = type(backend).__new__(type(backend))
    single.__dict__.update(backend.__dict__)
    single.max_batch_chunks = 1
    return TtsPipeline(config, single)


def gs(name: str) -> str:
    return f"gs://bucket/uploads/u1/{name}"


def job(
    tmp_path: Path,
    name: str,
    refs: dict[str, Path],
    progress: Callable[[float, str], None] | None = None,
    **inputs: Any,
) -> tuple[TtsInputs, RunContext]:
    """A job whose ``references`` map speaker labels to keys of ``refs`` (downloaded as the service does)."""
    given: dict[str, str] = inputs.pop("references", {})
    workdir = tmp_path / name
    workdir.mkdir()
    files = {f"references.{label}": str(refs[key]) for label, key in given.items()}
    ctx = RunContext(job_id=name, workdir=workdir, progress=progress or (lambda f, s: None), files=files)
    uris = {label: gs(f"{key}.wav") for label, key in given.items()}
    return TtsInputs(references=uris, format="wav", **inputs), ctx


def samples(result: RunResult[Any]) -> np.ndarray:
    return decode(Path(result.files["speech.wav"]), "wav", result.outputs.sample_rate)


def test_tiny_random_vibevoice_speaks_a_two_speaker_script_with_a_reference_each(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    stages: list[tuple[float, str]] = []
    inputs, ctx = job(
        tmp_path, "dialogue", refs, lambda f, s: stages.append((f, s)),
        text=DIALOGUE, references={"Speaker 1": "alice", "Speaker 2": "bob"}, seed=3,
    )  # fmt: skip
    result = tts.run(inputs, ctx)
    out = result.outputs
    assert out.backend == "vibevoice" and out.sample_rate == 24_000 and out.format == "wav"
    assert out.voices == ["Speaker 1", "Speaker 2"]
    assert out.chunks == 3  # one chunk per line at 40 characters
    audio = samples(result)
    assert out.duration_seconds == pytest.approx(len(audio) / 24_000, abs=0.01) and out.duration_seconds > 1
    assert out.loudness_lufs == pytest.approx(-16.0, abs=1.0)
    assert out.peak_dbfs <= -0.9
    spoken = [s for _, s in stages if s.startswith("spoken")]
    assert spoken[-1] == "spoken 3/3 chunks"
    assert [f for f, _ in stages] == sorted(f for f, _ in stages)


def test_tiny_random_vibevoice_gives_the_asked_sample_rate(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    inputs, ctx = job(
        tmp_path, "rate", refs, text="Hello there.", references={"Speaker 1": "bob"}, sample_rate=16000
    )
    result = tts.run(inputs, ctx)
    assert result.outputs.sample_rate == 16_000 and result.outputs.voices == ["Speaker 1"]
    with wave.open(str(result.files["speech.wav"])) as w:
        assert w.getframerate() == 16_000


def test_tiny_random_vibevoice_reports_each_chunk_and_stops_between_chunks_on_cancel(
    tts: TtsPipeline, alone_tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    rows: list[int] = []
    original = alone_tts.backend.speak_chunks

    def counted(requests: Any) -> Any:
        rows.append(len(requests))
        return original(requests)

    def progress(fraction: float, stage: str) -> None:
        if stage == "spoken 1/3 chunks":
            raise Cancelled("the client cancelled")

    alone_tts.backend.speak_chunks = counted  # type: ignore[method-assign]
    try:
        inputs, ctx = job(
            tmp_path,
            "cancel",
            refs,
            progress,
            text=DIALOGUE,
            references={"Speaker 1": "alice", "Speaker 2": "bob"},
        )
        with pytest.raises(Cancelled):
            alone_tts.run(inputs, ctx)
    finally:
        del alone_tts.backend.speak_chunks
    assert rows == [1]  # the second and third chunks were never spoken


def test_a_reference_that_is_not_audio_is_invalid_naming_the_speaker_as_written(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    # The script skips Speaker 2: the message names Speaker 3, the label the user wrote.
    inputs, ctx = job(
        tmp_path, "bad", refs,
        text="Speaker 1: Hello.\nSpeaker 3: Hi there.", references={"Speaker 1": "alice", "Speaker 3": "bad"},
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="reference recording for Speaker 3 could not be read") as err:
        tts.run(inputs, ctx)
    assert err.value.code == "bad_reference"


def test_a_speaker_without_reference_when_no_voices_are_configured_is_told_to_send_one(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    # No voices_dir: the default voice ("joe", a Piper name) does not exist for VibeVoice.
    inputs, ctx = job(tmp_path, "novoice", refs, text=DIALOGUE, references={"Speaker 1": "alice"})
    with pytest.raises(InvalidInput, match=r"Speaker 2 has no voice.*give a reference recording") as err:
        tts.run(inputs, ctx)
    assert err.value.code == "speaker_without_voice"


def test_an_unconfigured_default_voice_is_named_as_such(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    shutil.copy(refs["alice"], voices / "alice.wav")
    tts.backend.voices_dir = voices  # type: ignore[attr-defined]
    try:
        inputs, ctx = job(tmp_path, "default", refs, text="Hello there.")
        with pytest.raises(InvalidInput, match="default voice 'joe' is not configured; name one of alice"):
            tts.run(inputs, ctx)
        inputs, ctx = job(tmp_path, "named", refs, text="Hello there.", voice="alice", seed=1)
        assert tts.run(inputs, ctx).outputs.voices == ["alice"]
    finally:
        tts.backend.voices_dir = None  # type: ignore[attr-defined]


# -- chunks of several jobs in one batch ---------------------------------------------------------


def test_tiny_random_vibevoice_batches_chunks_of_several_jobs_each_as_alone(
    tts: TtsPipeline, alone_tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    rows: list[int] = []
    original = tts.backend._generate  # type: ignore[attr-defined]

    def counted(batch: Any, seeds: Any) -> Any:
        rows.append(len(batch))
        return original(batch, seeds)

    stages: dict[str, list[str]] = {"a": [], "b": [], "c": [], "d": []}

    def progress_of(name: str) -> Callable[[float, str], None]:
        def progress(fraction: float, stage: str) -> None:
            stages[name].append(stage)
            if name == "d" and stage.startswith("spoken 1/"):
                raise Cancelled("the client cancelled")

        return progress

    def jobs(root: Path) -> list[tuple[TtsInputs, RunContext]]:
        root.mkdir()
        return [
            job(root, "a", refs, progress_of("a"), text=DIALOGUE,
                references={"Speaker 1": "alice", "Speaker 2": "bob"}, seed=11),
            job(root, "b", refs, progress_of("b"), text="Speaker 1: A short one, said quickly. And then one more thing.",
                references={"Speaker 1": "bob"}, seed=12, speed=1.25, loudness=-20.0),
            job(root, "c", refs, progress_of("c"), text="Speaker 1: Hello.", references={"Speaker 1": "bad"}),
            job(root, "d", refs, progress_of("d"), text=DIALOGUE,
                references={"Speaker 1": "bob", "Speaker 2": "alice"}, seed=14),
        ]  # fmt: skip

    tts.backend._generate = counted  # type: ignore[attr-defined]
    try:
        a, b, c, d = jobs(tmp_path / "batch")
        ra, rd, rb, rc = tts.run_batch([a, d, b, c])
    finally:
        del tts.backend._generate  # type: ignore[attr-defined]
    assert isinstance(rc, InvalidInput) and "Speaker 1" in str(rc)  # its bad reference ends only c
    assert isinstance(rd, Cancelled)
    assert isinstance(ra, RunResult) and isinstance(rb, RunResult)
    assert ra.metadata["batch_jobs"] == 3
    # a's three chunks and d's first share the first call; d is cancelled after it (between its
    # chunks), so the second call holds b's two chunks only.
    assert rows == [4, 2]
    assert "spoken 2/3 chunks" not in stages["d"]
    assert stages["a"][-1] == stages["b"][-1] == "joining and encoding"
    assert "spoken 3/3 chunks" in stages["a"] and "spoken 2/2 chunks" in stages["b"]
    assert ra.outputs.chunks == 3 and rb.outputs.chunks == 2
    assert rb.outputs.loudness_lufs == pytest.approx(-20.0, abs=1.0)

    for batched, (inputs, ctx) in zip((ra, rb), jobs(tmp_path / "alone")[:2], strict=True):
        alone = samples(alone_tts.run(inputs, ctx))
        together = samples(batched)
        assert together.shape == alone.shape
        # within 1e-4 of the peak, plus the 16-bit rounding of the file
        np.testing.assert_allclose(
            together, alone, rtol=0, atol=1e-4 * float(np.max(np.abs(alone))) + 2 / 32768
        )


def test_a_chunk_that_fails_in_the_model_call_ends_only_its_own_job(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    # The model's reserved marker passes the text checks and is refused when the prompt is built,
    # inside the shared call: the batch is retried job by job and only that job fails.
    items = [
        job(tmp_path, "ok", refs, text="Hello there.", references={"Speaker 1": "alice"}, seed=5),
        job(tmp_path, "marker", refs, text="Say <|vision_pad|> now.", references={"Speaker 1": "bob"}),
    ]
    ok, marker = tts.run_batch(items)
    assert isinstance(ok, RunResult) and ok.outputs.chunks == 1
    assert isinstance(marker, InvalidInput) and "reserved marker" in str(marker)


def test_batch_key_lets_every_job_of_the_backend_share_calls(tts: TtsPipeline) -> None:
    one = TtsInputs(text="Hi.", seed=1, speed=2.0)
    other = TtsInputs(text="Speaker 1: Bye.", voices={"Speaker 1": "x"}, format="opus")
    assert tts.batch_key(one) == tts.batch_key(other) == "vibevoice"


def test_jobs_submitted_together_to_the_service_batcher_share_one_batch(
    tts: TtsPipeline, refs: dict[str, Path], tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gpu_service.batching import Batcher

    batcher = Batcher("tts", tts, max_batch=3, max_wait_ms=2000)
    items = [
        job(tmp_path, "one", refs, text="Hello there.", references={"Speaker 1": "alice"}, seed=1),
        job(tmp_path, "two", refs, text="Speaker 1: Hi.\nSpeaker 2: Bye.",
            references={"Speaker 1": "bob", "Speaker 2": "alice"}, seed=2),
        job(tmp_path, "three", refs, text="Hello.", references={"Speaker 1": "bad"}),
    ]  # fmt: skip
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher.submit, inputs, ctx) for inputs, ctx in items]
        one, two = (f.result(timeout=120) for f in futures[:2])
        with pytest.raises(InvalidInput, match="Speaker 1 could not be read"):
            futures[2].result(timeout=120)
    assert batcher.stats.batches == 1 and batcher.stats.jobs == 3
    assert one.outputs.voices == ["Speaker 1"] and two.outputs.voices == ["Speaker 1", "Speaker 2"]
    assert one.metadata["batch_jobs"] == two.metadata["batch_jobs"] == 2
