"""The VibeVoice backend on a tiny random-weight model the tests build and save themselves.

The model (devkit/tiny_vibevoice.py) goes through ``load_vibevoice`` like the real 7B
checkpoint: local directory, processor and chat template, transformers' generation with the
diffusion head and the audio tokenizers. Its weights are random, so these tests check what a
job sees (audio per chunk, rate, seeds, batching, progress, errors), never how the speech sounds.
"""

from __future__ import annotations

import shutil
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidInput, OutOfGpuMemory, PermanentError
from devkit.tiny_vibevoice import HOP, SAMPLE_RATE, build_tiny_vibevoice
from pipelines.tts.backend import Chunk, SpeechBackend, Turn, Voice
from pipelines.tts.vibevoice import (
    change_tempo,
    check_fits,
    checkpoint_bytes,
    choose_attention,
    load_vibevoice,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = [
    Chunk((Turn(0, "Hello there."), Turn(1, "Hi!"))),
    Chunk((Turn(1, "Good to see you."),)),
    Chunk((Turn(0, "Same."),)),
]


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def tone(seconds: float, rate: int, freq: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave_ = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(wave_[:, None], channels, axis=1).reshape(-1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vibevoice(tmp_path_factory.mktemp("tiny-vibevoice"))


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two speakers' references in formats a user may send: 16 kHz mono, 48 kHz stereo."""
    d = tmp_path_factory.mktemp("refs")
    return {
        "alice": write_wav(d / "alice.wav", tone(2.0, 16_000, 220), 16_000),
        "bob": write_wav(d / "bob.wav", tone(3.0, 48_000, 330, channels=2), 48_000, channels=2),
    }


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory, refs: dict[str, Path]) -> Path:
    d = tmp_path_factory.mktemp("voices")
    shutil.copy(refs["alice"], d / "alice.wav")
    shutil.copy(refs["bob"], d / "bob.wav")
    return d


@pytest.fixture(scope="module")
def backend(model_dir: Path, voices_dir: Path) -> SpeechBackend:
    return load_vibevoice(str(model_dir), device="cpu", voices_dir=str(voices_dir), max_batch_chunks=2)


@pytest.fixture(scope="module")
def two_voices(refs: dict[str, Path]) -> list[Voice]:
    return [Voice("alice", refs["alice"]), Voice("bob", refs["bob"])]


def speak(backend: SpeechBackend, voices: list[Voice], seed: int = 7, speed: float = 1.0) -> list[np.ndarray]:
    return backend.synthesize(SCRIPT, voices, speed=speed, seed=seed, on_chunk=lambda n: None)


@pytest.fixture(scope="module")
def spoken(backend: SpeechBackend, two_voices: list[Voice]) -> Iterator[tuple[list[np.ndarray], list[int]]]:
    done: list[int] = []
    audio = backend.synthesize(SCRIPT, two_voices, speed=1.0, seed=7, on_chunk=done.append)
    yield audio, done


def test_tiny_random_vibevoice_speaks_each_chunk_as_24khz_float_audio(
    backend: SpeechBackend, spoken: tuple[list[np.ndarray], list[int]]
) -> None:
    audio, _ = spoken
    assert backend.name == "vibevoice" and backend.multi_speaker
    assert backend.sample_rate == SAMPLE_RATE == 24_000
    assert len(audio) == len(SCRIPT)
    for chunk, a in zip(SCRIPT, audio, strict=True):
        assert a.dtype == np.float32 and a.ndim == 1
        assert np.all(np.isfinite(a)) and np.max(np.abs(a)) <= 1.0
        assert float(np.sqrt(np.mean(a**2))) > 1e-3  # audible, not silence
        # One 3200-sample frame per audio token; the random model speaks until its budget ends.
        assert a.size > 0 and a.size % HOP == 0
        assert a.size / SAMPLE_RATE <= 2.0 + chunk.chars / 5.0 + HOP / SAMPLE_RATE


def test_tiny_random_vibevoice_reports_progress_between_batches(
    spoken: tuple[list[np.ndarray], list[int]],
) -> None:
    # Three chunks in batches of two: progress after the first batch, then after the last.
    assert spoken[1] == [2, 3]


def test_tiny_random_vibevoice_same_seed_same_audio_other_seed_other_audio(
    backend: SpeechBackend, two_voices: list[Voice], spoken: tuple[list[np.ndarray], list[int]]
) -> None:
    again = speak(backend, two_voices, seed=7)
    for a, b in zip(spoken[0], again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = speak(backend, two_voices, seed=8)
    assert all(a.shape == b.shape for a, b in zip(spoken[0], other, strict=True))
    assert not np.allclose(spoken[0][0], other[0], rtol=0, atol=1e-3 * np.max(np.abs(other[0])))


def test_tiny_random_vibevoice_batch_of_chunks_equals_each_chunk_alone(
    model_dir: Path, two_voices: list[Voice], spoken: tuple[list[np.ndarray], list[int]]
) -> None:
    alone = load_vibevoice(str(model_dir), device="cpu", max_batch_chunks=1)
    done: list[int] = []
    one_by_one = alone.synthesize(SCRIPT, two_voices, speed=1.0, seed=7, on_chunk=done.append)
    assert done == [1, 2, 3]
    for batched, single in zip(spoken[0], one_by_one, strict=True):
        assert batched.shape == single.shape
        scale = float(np.max(np.abs(single)))
        np.testing.assert_allclose(batched, single, rtol=0, atol=1e-4 * scale)


def test_batch_that_runs_out_of_gpu_memory_is_split_with_the_same_audio(
    model_dir: Path, two_voices: list[Voice], spoken: tuple[list[np.ndarray], list[int]]
) -> None:
    """A GPU too small for two chunks at once (simulated: torch's OOM error above one row)."""
    import torch

    backend = load_vibevoice(str(model_dir), device="cpu", max_batch_chunks=3)
    model = backend.model  # type: ignore[attr-defined]
    real_generate = model.generate
    rows: list[int] = []

    def small_gpu(**inputs: object) -> object:
        rows.append(inputs["input_ids"].shape[0])  # type: ignore[attr-defined]
        if rows[-1] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(**inputs)

    model.generate = small_gpu
    done: list[int] = []
    audio = backend.synthesize(SCRIPT, two_voices, speed=1.0, seed=7, on_chunk=done.append)
    assert rows == [3, 1, 2, 1, 1]
    assert done == [3]
    for split, batched in zip(audio, spoken[0], strict=True):
        np.testing.assert_allclose(split, batched, rtol=0, atol=1e-4 * float(np.max(np.abs(batched))))


def test_one_chunk_that_does_not_fit_the_gpu_is_a_retryable_error(
    model_dir: Path, two_voices: list[Voice]
) -> None:
    import torch

    backend = load_vibevoice(str(model_dir), device="cpu", max_batch_chunks=2)
    model = backend.model  # type: ignore[attr-defined]

    def no_room(**inputs: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model.generate = no_room
    with pytest.raises(OutOfGpuMemory):
        backend.synthesize(SCRIPT, two_voices, speed=1.0, seed=7, on_chunk=lambda n: None)


def test_guidance_costs_one_extra_lm_pass_per_frame_not_two(
    backend: SpeechBackend, two_voices: list[Voice]
) -> None:
    """cfg_scale guides the diffusion head (a negative LM branch); the LM's own choice is unguided."""
    model = backend.model  # type: ignore[attr-defined]
    passes: list[int] = []
    hook = model.model.language_model.register_forward_hook(lambda *args: passes.append(1))
    try:
        (audio,) = backend.synthesize(SCRIPT[2:], two_voices, speed=1.0, seed=0, on_chunk=lambda n: None)
    finally:
        hook.remove()
    assert audio.size // HOP == 23  # the budget of "Same.": (2 s + 5 chars / 5 a s) x 7.5 frames/s
    assert len(passes) == 2 * (audio.size // HOP)


def test_tiny_random_vibevoice_speed_shortens_the_audio(
    backend: SpeechBackend, two_voices: list[Voice], spoken: tuple[list[np.ndarray], list[int]]
) -> None:
    fast = speak(backend, two_voices, speed=2.0)
    for normal, quick in zip(spoken[0], fast, strict=True):
        assert quick.size == pytest.approx(normal.size / 2, rel=0.05)


def test_tiny_random_vibevoice_conditions_a_chunk_on_its_own_speakers_voices(
    backend: SpeechBackend, refs: dict[str, Path]
) -> None:
    """Only the voices of the speakers in a chunk reach the model, each for its own speaker."""
    bob_only = [Chunk((Turn(1, "Good to see you."),))]

    def say(first: str, second: str) -> np.ndarray:
        voices = [Voice(first, refs[first]), Voice(second, refs[second])]
        return backend.synthesize(bob_only, voices, speed=1.0, seed=5, on_chunk=lambda n: None)[0]

    as_bob = say("alice", "bob")
    np.testing.assert_array_equal(as_bob, say("bob", "bob"))  # speaker 1's voice is not used
    # The random LM barely listens to its prompt (differences of ~1e-5), but the same inputs give
    # bit-identical audio, so any difference shows that speaker 1's reference reached the model.
    assert not np.array_equal(as_bob, say("bob", "alice"))


@pytest.mark.parametrize("speed", [0.25, 0.7, 3.0, 4.0])
def test_speed_stretches_audio_by_its_factor_across_atempo_stages(speed: float) -> None:
    second = tone(1.0, SAMPLE_RATE, 200).astype(np.float32)
    stretched = change_tempo(second, speed, SAMPLE_RATE)
    assert stretched.dtype == np.float32
    assert stretched.size == pytest.approx(SAMPLE_RATE / speed, rel=0.03)


def test_tiny_random_vibevoice_speaks_configured_voices_by_name(backend: SpeechBackend) -> None:
    assert backend.voice_names() == ["alice", "bob"]
    audio = backend.synthesize(
        SCRIPT[1:2], [Voice("alice"), Voice("bob")], speed=1.0, seed=1, on_chunk=lambda n: None
    )
    assert len(audio) == 1 and audio[0].size > 0


# -- bad voices and text: clear errors before any model work ------------------------------------


def test_unknown_voice_name_is_rejected_with_the_voices_there_are(backend: SpeechBackend) -> None:
    with pytest.raises(
        InvalidInput, match=r"Unknown voice 'carol' for Speaker 2; the voices are: alice, bob"
    ):
        backend.check_voices([Voice("alice"), Voice("carol")])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.wav", "is missing"),
        (lambda d: _text_file(d / "notes.wav"), "could not be read as audio"),
        (lambda d: write_wav(d / "quiet.wav", np.zeros(48_000), 16_000), "is silent"),
        (lambda d: write_wav(d / "short.wav", tone(0.4, 16_000, 200), 16_000), "at least 1 s"),
        (lambda d: write_wav(d / "long.wav", tone(61.5, 8_000, 200), 8_000), "longer than 60 s"),
    ],
    ids=["missing", "not-audio", "silent", "too-short", "too-long"],
)
def test_bad_reference_recording_is_rejected_naming_the_speaker(
    backend: SpeechBackend, refs: dict[str, Path], tmp_path: Path, make: object, message: str
) -> None:
    bad = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(InvalidInput, match=f"The reference recording for Speaker 2 .*{message}") as e:
        backend.check_voices([Voice("alice", refs["alice"]), Voice("x", bad)])
    assert e.value.code == "bad_reference"


def _text_file(path: Path) -> Path:
    path.write_text("these are not the samples you are looking for\n" * 50)
    return path


def test_more_speakers_than_the_model_knows_are_rejected(backend: SpeechBackend) -> None:
    with pytest.raises(InvalidInput, match="at most 4 speakers; this job has 5"):
        backend.check_voices([Voice("alice")] * 5)


def test_no_voice_at_all_is_rejected(backend: SpeechBackend) -> None:
    with pytest.raises(InvalidInput, match="needs a voice for each speaker"):
        backend.check_voices([])


def test_broken_configured_voice_is_a_deployment_error_not_the_users(model_dir: Path, tmp_path: Path) -> None:
    _text_file(tmp_path / "broken.wav")
    backend = load_vibevoice(str(model_dir), device="cpu", voices_dir=str(tmp_path))
    with pytest.raises(PermanentError, match="The configured voice 'broken' could not be read"):
        backend.check_voices([Voice("broken")])


def test_synthesize_rejects_bad_voices_before_generating(backend: SpeechBackend) -> None:
    calls: list[int] = []
    with pytest.raises(InvalidInput, match="Unknown voice"):
        backend.synthesize(SCRIPT, [Voice("nobody")], speed=1.0, seed=0, on_chunk=calls.append)
    assert calls == []


def test_text_with_the_models_reserved_markers_is_rejected(
    backend: SpeechBackend, two_voices: list[Voice]
) -> None:
    chunk = Chunk((Turn(0, "Say <|vision_pad|> twice"),))
    with pytest.raises(InvalidInput, match=r"reserved marker '<\|vision_pad\|>'"):
        backend.synthesize([chunk], two_voices, speed=1.0, seed=0, on_chunk=lambda n: None)


@pytest.mark.parametrize("speed", [0.0, -1.0, 4.5, float("nan")])
def test_speed_outside_what_can_be_stretched_is_rejected(
    backend: SpeechBackend, two_voices: list[Voice], speed: float
) -> None:
    with pytest.raises(InvalidInput, match=r"speed must be between 0\.25 and 4\.0"):
        backend.synthesize(SCRIPT, two_voices, speed=speed, seed=0, on_chunk=lambda n: None)


def test_turn_of_a_speaker_without_a_voice_is_rejected(
    backend: SpeechBackend, two_voices: list[Voice]
) -> None:
    chunk = Chunk((Turn(2, "Who am I?"),))
    with pytest.raises(InvalidInput, match="speaker 3, but only 2 voices"):
        backend.synthesize([chunk], two_voices, speed=1.0, seed=0, on_chunk=lambda n: None)


# -- loading ------------------------------------------------------------------------------------


def test_missing_model_dir_is_a_permanent_error(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        load_vibevoice(str(tmp_path / "nowhere"))


def test_incomplete_model_dir_names_what_is_missing(tmp_path: Path, model_dir: Path) -> None:
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(
        PermanentError,
        match=r"incomplete: missing \*.safetensors \(the weights\), processor_config.json, tokenizer.json",
    ):
        load_vibevoice(str(tmp_path))


def test_tiny_model_loads_in_float32_with_sdpa_on_the_cpu(backend: SpeechBackend) -> None:
    import torch

    model = backend.model  # type: ignore[attr-defined]
    assert model.dtype == torch.float32
    assert model.config.text_config._attn_implementation == "sdpa"
    assert model.device.type == "cpu"


@pytest.mark.parametrize(
    ("attention", "device", "flash", "chosen"),
    [
        ("auto", "cpu", True, "sdpa"),
        ("auto", "cuda", True, "flash_attention_2"),
        ("auto", "cuda", False, "sdpa"),
        ("eager", "cuda", True, "eager"),
        ("sdpa", "cuda:1", True, "sdpa"),
    ],
)
def test_attention_kernel_choice(attention: str, device: str, flash: bool, chosen: str) -> None:
    assert choose_attention(attention, device, flash_available=flash) == chosen


def test_flash_attention_where_it_cannot_run_is_refused_at_load() -> None:
    with pytest.raises(PermanentError, match="flash_attn package is not installed"):
        choose_attention("flash_attention_2", "cuda", flash_available=False)
    with pytest.raises(PermanentError, match="the device is 'cpu'"):
        choose_attention("flash_attention_2", "cpu", flash_available=True)
    with pytest.raises(PermanentError, match="attention must be one of"):
        choose_attention("fast", "cuda", flash_available=True)


def test_weights_are_sized_from_the_checkpoint_headers_before_loading(
    model_dir: Path, backend: SpeechBackend
) -> None:
    model = backend.model  # type: ignore[attr-defined]
    total, lm = checkpoint_bytes(model_dir, 2)  # as bf16
    assert total == 2 * sum(p.numel() for p in model.parameters())
    lm_params = sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()
    assert lm == 2 * lm_params
    (model_dir.parent / "junk").mkdir(exist_ok=True)
    (model_dir.parent / "junk" / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(PermanentError, match="not a readable safetensors file"):
        checkpoint_bytes(model_dir.parent / "junk", 2)


def test_7b_in_bf16_fits_an_l4_and_a_16gb_gpu_is_refused_with_the_figures() -> None:
    weights, lm = int(18.7e9), int(15.2e9)
    check_fits("cuda", int(22.5e9), weights, lm)  # an L4 after the CUDA context
    check_fits("cuda", int(80e9), weights, lm)
    check_fits("cpu", None, weights, lm)
    with pytest.raises(PermanentError, match=r"needs 18.7 GB of weights .* only 15.5 GB is free"):
        check_fits("cuda", int(15.5e9), weights, lm)
