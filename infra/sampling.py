"""A CPU profile of this process by function, for the benchmarks (``PROFILE_DIR``; off by default).

Every ``interval`` seconds a thread reads each thread's CPU time (``/proc/self/task/<tid>/stat``)
and its Python stack (``sys._current_frames``); the CPU a thread used since the last look is
charged to every function on its stack once (inclusive time) and to the innermost one (self
time). Threads that waited (a socket, a lock, a queue) used no CPU and are charged nothing, so
the profile shows where the process's CPU goes, not where its threads sleep. The totals are
written as JSON every few seconds (a process may be stopped by a signal at any time).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import FrameType

_TICK = os.sysconf("SC_CLK_TCK")
_NAME = "cpu-sampler"
_started: dict[int, Sampler] = {}
_lock = threading.Lock()


def _thread_cpu(tid: int) -> float | None:
    try:
        raw = Path(f"/proc/self/task/{tid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _where(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path) if os.path.isabs(path) else path
    return f"{path}:{code.co_name}"


def _top(seconds: dict[str, float], n: int) -> dict[str, float]:
    return {k: round(v, 3) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])[:n]}


class Sampler:
    def __init__(self, out: Path, interval: float = 0.01, flush_seconds: float = 2.0) -> None:
        self.out = out
        self.interval = interval
        self.flush_seconds = flush_seconds
        self.inclusive: defaultdict[str, float] = defaultdict(float)
        self.own: defaultdict[str, float] = defaultdict(float)
        self.cpu = 0.0
        self._last: dict[int, float] = {}
        self._thread = threading.Thread(target=self._loop, name=_NAME, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> None:
        frames = sys._current_frames()
        natives = {t.ident: t.native_id for t in threading.enumerate() if t.name != _NAME}
        for ident, frame in frames.items():
            tid = natives.get(ident)
            if tid is None:
                continue  # a sampler: its own cost is the profile's, not the process's
            cpu = _thread_cpu(tid)
            if cpu is None:
                continue
            used = cpu - self._last.get(tid, cpu)
            self._last[tid] = cpu
            if used <= 0:
                continue
            self.cpu += used
            self.own[_where(frame)] += used
            seen: set[str] = set()
            f: FrameType | None = frame
            while f is not None:
                key = _where(f)
                if key not in seen:
                    seen.add(key)
                    self.inclusive[key] += used
                f = f.f_back

    def write(self) -> None:
        report = {
            "pid": os.getpid(),
            "cpu_seconds_sampled": round(self.cpu, 3),
            "inclusive_seconds": _top(self.inclusive, 120),
            "self_seconds": _top(self.own, 40),
        }
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(self.out)

    def _loop(self) -> None:
        flushed = time.monotonic()
        while True:
            time.sleep(self.interval)
            self.sample()
            if time.monotonic() - flushed >= self.flush_seconds:
                self.write()
                flushed = time.monotonic()


def start(folder: Path | None, name: str) -> Sampler | None:
    """Profile this process into ``folder/{name}-{pid}.json`` when ``folder`` is set."""
    if folder is None:
        return None
    with _lock:  # once per process, however many threads build their dependencies at once
        if os.getpid() not in _started:
            _started[os.getpid()] = Sampler(folder / f"{name}-{os.getpid()}.json")
            _started[os.getpid()].start()
        return _started[os.getpid()]
