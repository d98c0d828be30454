"""The warm prober: PyAV children that read media headers as ffprobe does, without a process each.

Real files made with ffmpeg (devkit/media_files.py), real child processes, the real ffprobe: for
every sample and for the cuts the functions read (the first bytes; the first and last bytes in a
sparse file of the object's size) both readers give the same facts, and for what is not media
the same error; a child that is stopped, killed or over its memory cap costs that one file an
ffprobe run, never the caller its answer.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.errors import InvalidInput
from devkit.media_files import SAMPLES, flac_with_large_tag, playlist, samples
from pipelines import media, prober
from pipelines.media import AUDIO, AUDIO_OR_VIDEO, VIDEO, MediaFacts, MediaPolicy
from pipelines.prober import ProberConfig, WarmProber

HEAD = 32 * 1024  # a cut of the first bytes, as the functions' 256 KiB are of larger objects


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("prober-samples")
    return {path.name: path for path, _ in samples(folder)}


@pytest.fixture(scope="module")
def warm() -> Iterator[WarmProber]:
    pool = WarmProber(ProberConfig(children=2))
    yield pool
    pool.close()


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[WarmProber], WarmProber]]:
    """Make ``probe`` in this test use a prober of its own (closed at the end of the test)."""
    made: list[WarmProber] = []

    def install(pool: WarmProber) -> WarmProber:
        made.append(pool)
        monkeypatch.setattr(prober, "shared", lambda: pool)
        return pool

    yield install
    for pool in made:
        pool.close()


def cut(path: Path, how: str, folder: Path) -> Path:
    """The file as the functions see it: whole, its first bytes (``HEAD``, or a quarter of a
    smaller file), or those and as many last bytes in a sparse file of its size
    (``functions.handlers.probe_head``)."""
    if how == "whole":
        return path
    data = path.read_bytes()
    n = min(HEAD, len(data) // 4)
    out = folder / f"{how}-{path.name}"
    with out.open("wb") as f:
        f.write(data[:n])
        if how == "head-and-tail":
            f.seek(len(data) - n)
            f.write(data[-n:])
    return out


def same(found: MediaFacts, expected: MediaFacts) -> bool:
    """Equal, but for a length a few hundredths of a second apart (ffmpeg versions differ in how
    they count an MP3's encoder delay) and the frames that follow from it."""
    if found.duration is None or expected.duration is None:
        close = found.duration == expected.duration
    else:
        close = abs(found.duration - expected.duration) <= max(0.1, 0.01 * expected.duration)
    frames = found.frames == expected.frames or (
        found.frames is not None and expected.frames is not None and abs(found.frames - expected.frames) <= 1
    )
    rest = {k: v for k, v in vars(found).items() if k not in ("duration", "frames")}
    return (
        close
        and frames
        and rest == {k: v for k, v in vars(expected).items() if k not in ("duration", "frames")}
    )


def ffprobe_outcome(path: Path, policy: MediaPolicy, size: int) -> MediaFacts | tuple[str, str]:
    try:
        return media.probe_with_ffprobe(path, policy, size=size)
    except InvalidInput as exc:
        return (exc.code, exc.message)


# -- the same facts --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["whole", "head", "head-and-tail"])
@pytest.mark.parametrize("name", [name for name, _, _ in SAMPLES])
def test_the_warm_prober_reads_what_ffprobe_reads(
    files: dict[str, Path], warm: WarmProber, tmp_path: Path, name: str, how: str
) -> None:
    whole = files[name]
    size = whole.stat().st_size
    path = cut(whole, how, tmp_path)
    expected = ffprobe_outcome(path, AUDIO_OR_VIDEO, size)
    asked = warm.stats["answered"]
    found = media.probe_warm(path, AUDIO_OR_VIDEO, warm, size=size)
    assert warm.stats["answered"] == asked + 1  # a child answered: no ffprobe stood in for it
    if isinstance(expected, MediaFacts):
        assert found is not None and same(found, expected), (found, expected)
    else:
        assert found is None  # ffmpeg could not read it either: ffprobe's error is the job's


def test_a_length_guessed_from_the_bit_rate_of_a_head_is_scaled_as_ffprobe_scales_it(
    files: dict[str, Path], warm: WarmProber, tmp_path: Path
) -> None:
    whole = files["tone.aac"]  # ADTS: no header states the length
    head = cut(whole, "head", tmp_path)
    found = media.probe_warm(head, AUDIO, warm, size=whole.stat().st_size)
    assert found is not None and found.duration == pytest.approx(30, abs=0.5)
    assert media.probe_warm(head, AUDIO, warm) == media.probe_with_ffprobe(head, AUDIO)  # unscaled
    stated = cut(files["tone.flac"], "head", tmp_path)  # STREAMINFO states it: never scaled
    found = media.probe_warm(stated, AUDIO, warm, size=files["tone.flac"].stat().st_size)
    assert found is not None and found.duration == 8.0


# -- the same errors -------------------------------------------------------------------------------


def _bad_files(folder: Path, good: dict[str, Path]) -> dict[str, Path]:
    made = {
        "text.mp3": b"hello, this is not audio\n" * 100,
        "random.wav": os.urandom(50_000),
        "empty.mp3": b"",
        "riff-only.wav": b"RIFF\x00\x00\x00\x00WAVE",
        "ffconcat.mp3": f"ffconcat version 1.0\nfile '{good['tone.mp3']}'\nfile '{good['tone.wav']}'\n".encode(),
        "concat.wav": f"file '{good['tone.mp3']}'\n".encode(),
        "truncated.wav": good["tone.wav"].read_bytes()[:40],
        "truncated.flac": good["tone.flac"].read_bytes()[:100],
        "truncated.mp4": good["clip.mp4"].read_bytes()[:1000],
        "truncated.mkv": good["clip.mkv"].read_bytes()[:300],
        "truncated.ogg": good["tone.ogg"].read_bytes()[:60],
    }
    paths = {}
    for name, data in made.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    paths["hls.mp3"] = playlist(good["tone.mp3"], folder / "hls.mp3")
    # past the first probe buffers: a newer ffmpeg then takes it for an MP3 on a low score
    paths["hls-padded.mp3"] = playlist(good["tone.mp3"], folder / "hls-padded.mp3", pad_to=300_000)
    return paths


BAD = [
    "text.mp3", "random.wav", "empty.mp3", "riff-only.wav", "ffconcat.mp3", "concat.wav", "hls.mp3",
    "hls-padded.mp3", "truncated.wav", "truncated.flac", "truncated.mp4", "truncated.mkv", "truncated.ogg",
]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
def test_what_is_not_media_gets_ffprobes_own_error(
    files: dict[str, Path], warm: WarmProber, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    path = _bad_files(tmp_path, files)[name]
    monkeypatch.setattr(prober, "shared", lambda: warm)
    for policy in (AUDIO, VIDEO, AUDIO_OR_VIDEO):
        expected = ffprobe_outcome(path, policy, path.stat().st_size)
        assert isinstance(expected, tuple) and expected[0] == "unsupported_media"
        asked = warm.stats["answered"]
        with pytest.raises(InvalidInput) as caught:
            media.probe(path, policy)
        assert (caught.value.code, caught.value.message) == expected
        assert warm.stats["answered"] == asked + 1  # the child read it first, and said so
        assert str(tmp_path) not in caught.value.message


def test_a_video_container_outside_the_audio_policy_is_refused_alike(
    files: dict[str, Path], warm: WarmProber, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prober, "shared", lambda: warm)
    for name in ("clip.avi", "clip.ts", "clip.flv", "clip.wmv", "clip.mpg"):
        expected = ffprobe_outcome(files[name], AUDIO, files[name].stat().st_size)
        with pytest.raises(InvalidInput) as caught:
            media.probe(files[name], AUDIO)
        assert (caught.value.code, caught.value.message) == expected
        assert media.probe(files[name], VIDEO).has_video


# -- children that fail ----------------------------------------------------------------------------


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_child_killed_mid_request_is_replaced_and_the_request_answered(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    pool = use(WarmProber(ProberConfig(children=1)))
    clip = files["clip.mp4"]
    expected = media.probe_with_ffprobe(clip, VIDEO)
    assert media.probe(clip, VIDEO) == expected
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGSTOP)  # it cannot answer the next request before it is killed
    answers: list[MediaFacts] = []
    asking = threading.Thread(target=lambda: answers.append(media.probe(clip, VIDEO)))
    asking.start()
    _wait_for(lambda: pool.stats["asked"] == 2)
    os.kill(pid, signal.SIGKILL)
    asking.join()
    assert answers == [expected]  # by ffprobe, for this one file
    assert pool.stats["lost"] == 1 and pool.stats["fell_back"] == 1
    assert media.probe(files["tone.flac"], AUDIO).duration == 8.0
    (replacement,) = pool.pids()
    assert replacement != pid and pool.stats["started"] == 2


def test_a_child_that_misses_its_deadline_is_killed_and_ffprobe_answers(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    pool = use(WarmProber(ProberConfig(children=1, timeout_seconds=1.0)))
    wav = files["tone.wav"]
    assert media.probe(wav, AUDIO).duration == 4.0
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGSTOP)  # a child stuck in a file, as far as the caller can tell
    assert media.probe(wav, AUDIO) == media.probe_with_ffprobe(wav, AUDIO)
    assert pool.stats["lost"] == 1 and _gone(pid)
    assert media.probe(wav, AUDIO).duration == 4.0 and pool.pids() != [pid]


def test_a_child_stuck_on_one_file_does_not_hold_up_the_other_requests(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    pool = use(WarmProber(ProberConfig(children=1, timeout_seconds=600, wait_seconds=0.2)))
    assert media.probe(files["tone.wav"], AUDIO).duration == 4.0
    (pid,) = pool.pids()
    os.kill(pid, signal.SIGSTOP)  # stuck until it is killed: its deadline is far away
    answers: list[MediaFacts] = []
    stuck = threading.Thread(target=lambda: answers.append(media.probe(files["clip.mp4"], VIDEO)))
    stuck.start()
    _wait_for(lambda: pool.stats["asked"] == 2)
    flac = files["tone.flac"]
    assert media.probe(flac, AUDIO) == media.probe_with_ffprobe(flac, AUDIO)  # ffprobe, meanwhile
    assert stuck.is_alive() and pool.stats["fell_back"] == 1 and pool.stats["lost"] == 0
    os.kill(pid, signal.SIGKILL)
    stuck.join()
    assert answers == [media.probe_with_ffprobe(files["clip.mp4"], VIDEO)] and pool.stats["lost"] == 1


def test_a_child_over_its_memory_cap_fails_that_probe_to_ffprobe_not_the_caller(
    tmp_path: Path, files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    # A FLAC whose tag block is 16 MB: ffmpeg allocates it whole while reading the header.
    tagged = flac_with_large_tag(files["tone.flac"], tmp_path / "tagged.flac", 2**24 - 1)
    expected = media.probe_with_ffprobe(tagged, AUDIO)
    assert expected.duration == 8.0
    pool = use(WarmProber(ProberConfig(children=1, memory_mb=8)))
    assert media.probe(tagged, AUDIO) == expected
    assert pool.stats["over_memory"] == 1 and pool.stats["fell_back"] == 1
    (pid,) = pool.pids()
    assert media.probe(files["tone.flac"], AUDIO) == media.probe_with_ffprobe(files["tone.flac"], AUDIO)
    assert pool.pids() == [pid] and pool.stats["answered"] == 1  # the same child goes on
    roomy = WarmProber(ProberConfig(children=1))
    try:
        assert media.probe_warm(tagged, AUDIO, roomy) == expected  # within the default cap
    finally:
        roomy.close()


def test_a_child_that_cannot_start_leaves_every_probe_to_ffprobe(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    pool = use(WarmProber(ProberConfig(children=1, start_seconds=5), python="/bin/false"))
    for name in ("tone.mp3", "clip.mkv"):
        assert media.probe(files[name], AUDIO_OR_VIDEO) == media.probe_with_ffprobe(
            files[name], AUDIO_OR_VIDEO
        )
    assert pool.stats["started"] == 0 and pool.stats["fell_back"] == 2 and pool.pids() == []


def test_a_child_near_its_lifetime_cpu_is_retired_between_requests(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    pool = use(WarmProber(ProberConfig(children=1, lifetime_cpu_seconds=1)))
    for _ in range(2):
        assert media.probe(files["tone.ogg"], AUDIO).duration == 30.0
    assert pool.stats["answered"] == 2 and pool.stats["retired"] == 2 and pool.stats["fell_back"] == 0
    assert pool.stats["started"] == 2 and pool.pids() == []


# -- threads, and what the child holds --------------------------------------------------------------


def test_requests_from_several_threads_are_answered_by_the_few_children(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    pool = use(WarmProber(ProberConfig(children=2, wait_seconds=60)))  # a busy machine: none falls back
    names = ["tone.wav", "tone.mp3", "clip.mp4", "clip.webm", "tone.m4a", "clip.mkv"]
    expected = {name: media.probe_with_ffprobe(files[name], AUDIO_OR_VIDEO) for name in names}
    found: dict[tuple[int, str], MediaFacts] = {}

    def work(worker: int) -> None:
        for name in names * 2:
            found[(worker, name)] = media.probe(files[name], AUDIO_OR_VIDEO)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 4 * len(names)
    assert all(same(facts, expected[name]) for (_, name), facts in found.items())
    assert pool.stats["answered"] == 4 * 2 * len(names) and pool.stats["fell_back"] == 0
    assert pool.stats["started"] <= 2


def test_the_child_holds_nothing_of_the_caller_and_runs_under_limits(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, use: Callable[[WarmProber], WarmProber]
) -> None:
    monkeypatch.setenv("CALLERS_SECRET", "do-not-pass")
    pool = use(WarmProber(ProberConfig(children=1, memory_mb=256, cpu_seconds=5)))
    media.probe(files["tone.wav"], AUDIO)
    (pid,) = pool.pids()
    proc = Path("/proc") / str(pid)
    assert b"CALLERS_SECRET" not in (proc / "environ").read_bytes()
    assert sorted(os.listdir(proc / "fd")) == ["0", "1", "2"]  # its pipes, nothing inherited
    limits = {line[:26].strip(): line[26:].split() for line in (proc / "limits").read_text().splitlines()[1:]}
    assert limits["Max address space"][0] != "unlimited"
    assert int(limits["Max cpu time"][0]) <= int(limits["Max cpu time"][1]) < 10**6
    assert limits["Max file size"][:2] == ["0", "0"]


def test_configured_with_no_children_probe_runs_ffprobe(files: dict[str, Path]) -> None:
    try:
        prober.configure(ProberConfig(children=0))
        assert prober.shared() is None
        assert media.probe(files["tone.flac"], AUDIO).duration == 8.0
    finally:
        prober.configure(ProberConfig())
    shared = prober.shared()
    assert shared is not None and shared.config == ProberConfig()


def test_the_deployment_settings_default_to_the_probers_own_defaults(no_settings_env: None) -> None:
    from infra.settings import Settings

    assert prober.config_from(Settings()) == ProberConfig()
    assert prober.config_from(Settings(media_probers=0, media_prober_memory_mb=64)) == ProberConfig(
        children=0, memory_mb=64
    )


def test_the_functions_head_check_reads_through_the_warm_prober(
    files: dict[str, Path], use: Callable[[WarmProber], WarmProber]
) -> None:
    from functions.handlers import probe_head
    from pipelines.transcribe import SPEC as TRANSCRIBE

    pool = use(WarmProber(ProberConfig(children=1)))
    rule = TRANSCRIBE.file_fields()["media"]
    data = files["tone.mp3"].read_bytes()
    assert len(data) > rule.header_bytes  # a range read of the head and one of the tail
    head, tail = data[: rule.header_bytes], data[-rule.header_bytes :]
    measured = probe_head(rule, head, complete=False, size=len(data), content_type="audio/mpeg", tail=tail)
    assert measured is not None and measured["duration_seconds"] == pytest.approx(40, abs=0.1)
    assert measured["sample_rate"] == 44100
    assert pool.stats["answered"] == 1 and pool.stats["fell_back"] == 0
