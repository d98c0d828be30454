"""Measuring a media input: one ffprobe process per file against the warm PyAV prober.

Every sample the development kit makes (``devkit.media_files.SAMPLES``: WAV, MP3, FLAC, Ogg,
M4A, MP4, WebM, MKV...) is probed ``--rounds`` times each way, alternating, on the same machine
in the same run: wall time per probe (median and p90 over all), the CPU it cost all the
processes involved (this one, its ffprobe children, the warm children), the start of a warm
child (paid once per process), and both ways from several threads at once (the worker runs
several units side by side). Writes ``bench/results/probe.json``.

    .venv/bin/python -m bench.probe [--rounds 10] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devkit.media_files import samples
from pipelines import media
from pipelines.media import AUDIO_OR_VIDEO
from pipelines.prober import ProberConfig, WarmProber

RESULTS = Path(__file__).parent / "results" / "probe.json"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds the processes ``pids`` have used (``/proc/PID/stat``: utime + stime)."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def _own_cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 1),
    }


def _threaded(probe: Callable[[Path], Any], files: list[Path], threads: int) -> float:
    """Probes per second with ``threads`` threads each probing every file once."""
    started = time.perf_counter()
    workers = [threading.Thread(target=lambda: [probe(p) for p in files]) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return threads * len(files) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="probes of each sample each way")
    parser.add_argument("--threads", type=int, default=4, help="threads probing at once, in the last part")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        files = [path for path, _ in samples(Path(tmp))]
        config = ProberConfig(children=2)
        warm = WarmProber(config)
        started = time.perf_counter()
        media.probe_warm(files[0], AUDIO_OR_VIDEO, warm)
        first = time.perf_counter() - started  # a child's start and its first probe

        def cold(path: Path) -> Any:
            return media.probe_with_ffprobe(path, AUDIO_OR_VIDEO)

        def hot(path: Path) -> Any:
            return media.probe_warm(path, AUDIO_OR_VIDEO, warm)

        times: dict[str, list[float]] = {"ffprobe": [], "warm": []}
        per_file: dict[str, dict[str, float]] = {}
        cpu = {"ffprobe": 0.0, "warm": 0.0}
        for path in files:
            spent: dict[str, list[float]] = {"ffprobe": [], "warm": []}
            for _ in range(args.rounds):
                for way, probe in (("ffprobe", cold), ("warm", hot)):
                    pids = warm.pids()
                    cpu0, child0 = _own_cpu(), _cpu_of(pids)
                    t0 = time.perf_counter()
                    probe(path)
                    spent[way].append(time.perf_counter() - t0)
                    cpu[way] += _own_cpu() - cpu0 + _cpu_of(pids) - child0
            times["ffprobe"] += spent["ffprobe"]
            times["warm"] += spent["warm"]
            per_file[path.name] = {
                "ffprobe_ms": round(statistics.median(spent["ffprobe"]) * 1000, 1),
                "warm_ms": round(statistics.median(spent["warm"]) * 1000, 1),
            }
        fell_back = warm.stats["fell_back"]
        probes = len(files) * args.rounds
        rate = {
            "ffprobe_per_s": round(_threaded(cold, files, args.threads), 1),
            "warm_per_s": round(_threaded(hot, files, args.threads), 1),
        }
        warm.close()

    ffprobe, hot_ms = _ms(times["ffprobe"]), _ms(times["warm"])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "measured": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "what": f"probe() of {len(files)} devkit samples, {args.rounds} rounds each way, alternating",
        "ffprobe": {**ffprobe, "cpu_ms_per_probe": round(cpu["ffprobe"] / probes * 1000, 1)},
        "warm": {
            **hot_ms,
            "cpu_ms_per_probe": round(cpu["warm"] / probes * 1000, 1),
            "first_probe_with_child_start_ms": round(first * 1000, 1),
            "fell_back_to_ffprobe": fell_back,
        },
        "speed_up_median": round(ffprobe["median_ms"] / max(hot_ms["median_ms"], 0.1), 1),
        f"{args.threads}_threads": {**rate, "children": config.children},
        "per_file_median": per_file,
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
