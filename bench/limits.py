"""Peak memory of one job at the cost caps: the figures of the README's limits table.

Each case runs in a fresh process: it makes its input, loads what the pipeline loads, resets the
process's peak RSS (``/proc/self/clear_refs``), runs one job, and reports the peak RSS during the
job and how much it added over the loaded process. Inputs are the cheap-to-make, costly-to-run
kind the caps exist for (hours of silence in a few MB of FLAC, an hour of video, a 40-megapixel
image in a few KB).

    python -m bench.limits                      # every case, writes bench/results/limits.json
    python -m bench.limits --case transcribe_cap
    python -m bench.limits --only tts_cap,image_cap   # these cases; the others keep their last figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "limits.json"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status(field: str) -> int:
    """A ``/proc/self/status`` figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _measure(setup: Callable[[Path], Callable[[], Any]]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="limits-") as tmp:
        job = setup(Path(tmp))
        _reset_peak()
        before = _status("VmRSS")
        started = time.perf_counter()
        detail = job()
        seconds = time.perf_counter() - started
        peak = _status("VmHWM")
    return {
        "rss_before_job_mb": round(before / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "added_by_job_mb": round((peak - before) / 2**20, 1),
        "seconds": round(seconds, 1),
        **(detail or {}),
    }


# -- cases -------------------------------------------------------------------------------------------


def _transcribe(seconds: float, *, whole: bool) -> Callable[[Path], Callable[[], Any]]:
    def setup(tmp: Path) -> Callable[[], Any]:
        from core.spec import RunContext
        from devkit.media_files import silent_flac
        from pipelines.transcribe import TranscribeConfig, TranscribeInputs
        from pipelines.transcribe.model import SAMPLING_RATE, load

        flac = silent_flac(tmp / "quiet.flac", seconds)  # ffmpeg's default frames: ~190 B a second
        transcriber = load(TranscribeConfig())
        inputs = TranscribeInputs(media="gs://bench-bucket/uploads/u/quiet.flac")
        size = flac.stat().st_size

        def job() -> dict[str, Any]:
            if whole:  # what the service did before: decode it all, then transcribe it all
                from faster_whisper import decode_audio

                audio = decode_audio(str(flac), sampling_rate=SAMPLING_RATE)
                segments, _info = transcriber.model.transcribe(audio, vad_filter=True)
                list(segments)
                return {"audio_seconds": round(audio.size / SAMPLING_RATE), "file_mb": round(size / 2**20, 2)}
            out = tmp / "out"
            out.mkdir()
            result = transcriber.run(inputs, RunContext(job_id="bench", workdir=out, files={"media": flac}))
            return {"audio_seconds": round(result.outputs.duration), "file_mb": round(size / 2**20, 2)}

        return job

    return setup


def _image_cap(tmp: Path) -> Callable[[], Any]:
    from PIL import Image

    from pipelines.imaging.checks import load_image
    from pipelines.imaging.fields import ImageLimitsConfig

    limits = ImageLimitsConfig()
    side = int(limits.max_input_pixels**0.5)
    path = tmp / "cap.png"
    Image.new("1", (side, side), 1).save(path)
    size = path.stat().st_size

    def job() -> dict[str, Any]:
        checked = load_image(path, limits)
        w, h = checked.size
        return {"pixels": w * h, "file_mb": round(size / 2**20, 3)}

    return job


def _video_frames_cap(tmp: Path) -> Callable[[], Any]:
    from devkit.media_files import long_video
    from pipelines.video import VideoConfig
    from pipelines.video.frames import effective_interval, sample_frames

    config = VideoConfig()
    video = long_video(tmp / "hour.mp4", config.max_duration_seconds, size="1280x720", fps=1)

    def job() -> dict[str, Any]:
        interval = effective_interval(
            config.frame_interval_seconds, config.max_duration_seconds, config.max_frames
        )
        count = sum(1 for _ in sample_frames(video, interval))
        return {"video_seconds": config.max_duration_seconds, "sampled_frames": count, "frame": "1280x720"}

    return job


def _tts(chars: int) -> Callable[[Path], Callable[[], Any]]:
    def setup(tmp: Path) -> Callable[[], Any]:
        from core.spec import RunContext
        from pipelines.tts import TtsConfig, TtsInputs
        from pipelines.tts.pipeline import load

        sentence = "The quarterly report goes to the finance team before Friday afternoon. "
        text = (sentence * (chars // len(sentence) + 1))[:chars].rsplit(" ", 1)[0] + "."
        pipeline = load(TtsConfig())
        inputs = TtsInputs(text=text, format="mp3")

        def job() -> dict[str, Any]:
            out = tmp / "out"
            out.mkdir()
            result = pipeline.run(inputs, RunContext(job_id="bench", workdir=out))
            return {"characters": len(text), "audio_seconds": round(result.outputs.duration_seconds)}

        return job

    return setup


CASES: dict[str, tuple[str, Callable[[Path], Callable[[], Any]]]] = {
    "transcribe_30min": ("transcribe, 30 min of silence (windows of 120 s)", _transcribe(1800, whole=False)),
    "transcribe_cap": (
        "transcribe, 4 h of silence = the cap (windows of 120 s)",
        _transcribe(14400, whole=False),
    ),
    "transcribe_30min_whole": ("before: decode 30 min whole, then transcribe", _transcribe(1800, whole=True)),
    "transcribe_1h_whole": ("before: decode 1 h whole, then transcribe", _transcribe(3600, whole=True)),
    "tts_2000_chars": ("tts (piper), 2,000 characters", _tts(2000)),
    "tts_cap": ("tts (piper), 20,000 characters = the cap", _tts(20000)),
    "image_cap": ("inpaint/edit input checks, 40 Mpx image = the cap", _image_cap),
    "video_frames_cap": ("video screen part: frames of a 1 h 720p video = the cap", _video_frames_cap),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
    parser.add_argument("--only", help="comma-separated cases to run again (the rest are kept)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_measure(CASES[args.case][1])))
        return
    only = set(args.only.split(",")) if args.only else set(CASES)
    previous = json.loads(RESULTS.read_text()).get("cases", {}) if RESULTS.exists() else {}
    results: dict[str, Any] = {}
    for name, (what, _setup) in CASES.items():
        if name not in only:
            if name in previous:
                results[name] = previous[name]
            continue
        out = subprocess.run(
            [sys.executable, "-m", "bench.limits", "--case", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            results[name] = {"what": what, "error": out.stderr.strip().splitlines()[-1:]}
        else:
            results[name] = {"what": what, **json.loads(out.stdout.strip().splitlines()[-1])}
        print(f"{name:24} {json.dumps(results[name])}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f}",
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "cases": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
