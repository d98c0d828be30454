"""A streamed tts job: each chunk published as it is spoken, in pieces that concatenate into audio
as long as the job's whole file; formats whose pieces cannot concatenate are refused."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from core.spec import RunContext
from pipelines.tts import PiperVoiceConfig, TtsConfig, TtsInputs
from pipelines.tts.pipeline import TtsPipeline
from pipelines.tts.piper_backend import PiperBackend
from pipelines.tts.stream import wav_stream_header

SENTENCES = (
    "The first chunk is about the weather in the hills this morning. "
    "The second chunk is about the harbour and the boats that left it. "
    "The third chunk is about the market and what it sold today."
)
CONFIG = TtsConfig(voices={"joe": PiperVoiceConfig(noise_scale=0.0, noise_w_scale=0.0)})


@pytest.fixture(scope="module")
def tts() -> TtsPipeline:
    return TtsPipeline(CONFIG, PiperBackend(CONFIG))


def streamed(
    tts: TtsPipeline, tmp_path: Path, fmt: str
) -> tuple[Any, list[tuple[bytes, dict[str, Any]]], list[str]]:
    published: list[tuple[bytes, dict[str, Any]]] = []
    events: list[str] = []

    def publish(key: str, path: Path, item: dict[str, Any]) -> str:
        assert key == f"stream/{item['index']:05d}{path.suffix}"
        published.append((path.read_bytes(), item))
        events.append(f"publish {item['index']}")
        return f"gs://bucket/results/u/j/1/{key}"

    out = tmp_path / fmt
    out.mkdir()
    ctx = RunContext(job_id="t", workdir=out, publish=publish, progress=lambda f, s: events.append(s))
    result = tts.run(TtsInputs(text=SENTENCES, format=fmt, stream=True, sample_rate=24000), ctx)
    return result, published, events


def decoded_samples(data: bytes, fmt: str) -> int:
    source = ["-f", "s16le", "-ar", "24000", "-ac", "1"] if fmt == "pcm" else []
    out = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            *source,
            "-i",
            "pipe:0",
            "-f",
            "s16le",
            "-ac",
            "1",
            "-ar",
            "24000",
            "pipe:1",
        ],
        input=data,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return len(out.stdout) // 2


@pytest.mark.parametrize("fmt", ["wav", "pcm"])
def test_streamed_pieces_concatenate_into_the_whole_files_length(
    tts: TtsPipeline, tmp_path: Path, fmt: str
) -> None:
    result, published, events = streamed(tts, tmp_path, fmt)
    items = [item for _, item in published]
    assert [item["index"] for item in items] == list(range(result.outputs.chunks))
    assert result.outputs.chunks == 3
    # Each chunk is published as soon as it is spoken, before the next one is.
    assert events.index("publish 0") < events.index("spoken 2/3 chunks")
    data = b"".join(piece for piece, _ in published)
    if fmt == "wav":
        assert data[:44] == wav_stream_header(24000)
        assert all(not piece.startswith(b"RIFF") for piece, _ in published[1:])
    samples = decoded_samples(data, fmt)
    whole = decoded_samples(result.files[f"speech.{fmt}"].read_bytes(), fmt)
    assert abs(samples - whole) <= result.outputs.chunks
    assert sum(item["seconds"] for item in items) == pytest.approx(result.outputs.duration_seconds, abs=0.01)
    assert [item["bytes"] for item in items] == [len(piece) for piece, _ in published]
    # The whole file is still the result.
    assert set(result.files) == {f"speech.{fmt}"}


def test_streamed_mp3_pieces_decode_one_after_the_other(tts: TtsPipeline, tmp_path: Path) -> None:
    result, published, _ = streamed(tts, tmp_path, "mp3")
    seconds = decoded_samples(b"".join(piece for piece, _ in published), "mp3") / 24000
    assert result.outputs.duration_seconds <= seconds < result.outputs.duration_seconds + 0.08 * 3


def test_a_job_without_stream_publishes_nothing(tts: TtsPipeline, tmp_path: Path) -> None:
    published: list[str] = []
    ctx = RunContext(
        job_id="t", workdir=tmp_path, publish=lambda key, path, item: published.append(key) or None
    )
    tts.run(TtsInputs(text=SENTENCES, format="wav"), ctx)
    assert published == []


@pytest.mark.parametrize("fmt", ["opus", "flac"])
def test_formats_whose_pieces_do_not_concatenate_cannot_stream(fmt: str) -> None:
    with pytest.raises(ValidationError, match="do not concatenate"):
        TtsInputs(text="Hello there.", format=fmt, stream=True)


def test_the_streaming_wav_header_says_its_length_is_unknown() -> None:
    header = wav_stream_header(22050)
    assert len(header) == 44 and header[4:8] == header[40:44] == b"\xff\xff\xff\xff"
    assert int(np.frombuffer(header[24:28], "<u4")[0]) == 22050
