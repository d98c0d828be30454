"""The benchmarks' CPU profile charges the functions that used the CPU, not the ones that waited."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from infra.sampling import Sampler


def _spin(seconds: float) -> int:
    end, n = time.thread_time() + seconds, 0
    while time.thread_time() < end:
        n += 1
    return n


def _sleep(stop: threading.Event) -> None:
    stop.wait()


def test_cpu_is_charged_to_the_busy_function_and_not_to_the_waiting_one(tmp_path: Path) -> None:
    sampler = Sampler(tmp_path / "profile.json", interval=0.005)
    stop = threading.Event()
    waiting = threading.Thread(target=_sleep, args=(stop,))
    busy = threading.Thread(target=_spin, args=(0.6,))
    waiting.start()
    sampler.sample()  # the first look at each thread: where the CPU count starts
    busy.start()
    while busy.is_alive():
        sampler.sample()
        time.sleep(0.005)
    stop.set()
    waiting.join()
    sampler.write()
    report = json.loads((tmp_path / "profile.json").read_text())
    charged = report["inclusive_seconds"]
    assert any(key.endswith(":_spin") for key in charged), charged
    assert not any(key.endswith(":_sleep") for key in charged), charged
    assert report["cpu_seconds_sampled"] > 0
