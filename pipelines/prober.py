"""Warm, isolated media probing: long-lived child processes with PyAV imported, under limits.

One ``ffprobe`` run per media input costs a process start and ffmpeg's initialisation (about 90 ms
on a small machine) for a few milliseconds of header reading. A :class:`WarmProber` keeps a few
child processes (``pipelines/probe_child.py``) that have paid that once and answer one request at
a time each: the local file's ``file:`` URL and the policy's format whitelist go in, plain JSON in
ffprobe's shape comes out (:func:`pipelines.media.probe` reads both alike).

Hostile media stay out of the caller's process, as with ffprobe: the child is a fresh interpreter
(``python -I``, an empty environment, no descriptors but its pipes; nothing of the caller is
inherited), limited in address space and CPU time, and each request has a deadline. A child that
misses it, crashes or dies is killed and replaced (lazily, by the next request); the request is
then answered ``None``, and the caller probes that file with ffprobe, so an odd file gets exactly
the outcome it had before. Requests from several threads are safe: each child serves one thread
at a time, and a thread that finds none idle soon (``wait_seconds``) also gets ``None``.

Cheap to import: the standard library only.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("probe_child.py")
#: the most an answer may weigh (a file declaring thousands of streams is not worth more)
MAX_ANSWER_BYTES = 4 * 2**20
#: how long a child that failed to start keeps the prober off (each probe then runs ffprobe)
START_BACKOFF_SECONDS = 60.0


@dataclass(frozen=True)
class ProberConfig:
    """How many warm children a process keeps and their limits (``children=0``: ffprobe only)."""

    children: int = 2
    #: address space one probe may add to a warm child (PyAV's own mappings not counted)
    memory_mb: int = 512
    #: CPU time one probe may take before the kernel ends the child (SIGXCPU)
    cpu_seconds: float = 10.0
    #: wall-clock limit of one request (never longer than the caller's own timeout)
    timeout_seconds: float = 10.0
    #: CPU time a child may use in all before it is retired and replaced
    lifetime_cpu_seconds: float = 600.0
    #: how long a child may take to start (an interpreter and PyAV's import)
    start_seconds: float = 30.0
    #: how long a request waits for a free child (all busy longer: that file goes to ffprobe, so a
    #: child stuck on one file does not hold up the others' requests)
    wait_seconds: float = 1.0


class ProberSettings(Protocol):
    """The deployment's settings of the prober (``infra.settings.Settings`` has them)."""

    @property
    def media_probers(self) -> int: ...
    @property
    def media_prober_memory_mb(self) -> int: ...
    @property
    def media_prober_cpu_seconds(self) -> float: ...
    @property
    def media_prober_timeout_seconds(self) -> float: ...


def config_from(settings: ProberSettings) -> ProberConfig:
    return ProberConfig(
        children=settings.media_probers,
        memory_mb=settings.media_prober_memory_mb,
        cpu_seconds=settings.media_prober_cpu_seconds,
        timeout_seconds=settings.media_prober_timeout_seconds,
    )


class ChildLost(Exception):
    """A child missed its deadline, died, or answered something that is not an answer."""


class _Child:
    """One child process and its pipes; used by one thread at a time."""

    def __init__(self, config: ProberConfig, python: str) -> None:
        argv = [
            python, "-I", str(CHILD),
            str(config.memory_mb), f"{config.cpu_seconds:g}", f"{config.lifetime_cpu_seconds:g}",
        ]  # fmt: skip
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd="/",
            env={"PATH": os.defpath},
            close_fds=True,
            start_new_session=True,  # a signal to the caller's process group is not the child's
        )
        self.pid = self.popen.pid
        self._buffer = b""
        try:
            ready = self._line(time.monotonic() + config.start_seconds)
            if ready.get("ready") is not True:
                raise ChildLost(f"child {self.pid} did not start: {ready!r:.200}")
        except ChildLost:
            self.kill()
            raise

    def ask(self, request: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps(request).encode() + b"\n")
            self.popen.stdin.flush()
        except OSError as exc:  # BrokenPipeError: it died between requests
            raise ChildLost(f"child {self.pid} is gone ({exc})") from exc
        return self._line(deadline)

    def _line(self, deadline: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        poller = select.poll()  # not select(): a server's descriptors may be past FD_SETSIZE
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildLost(f"child {self.pid} did not answer in time")
            if not poller.poll(max(1, math.ceil(left * 1000))):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.popen.wait()
                raise ChildLost(f"child {self.pid} ended (exit status {code})")
            self._buffer += chunk
            if len(self._buffer) > MAX_ANSWER_BYTES:
                raise ChildLost(f"child {self.pid} answered more than {MAX_ANSWER_BYTES} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            answer = json.loads(line)
        except ValueError as exc:
            raise ChildLost(f"child {self.pid} answered something else than JSON") from exc
        if not isinstance(answer, dict):
            raise ChildLost(f"child {self.pid} answered something else than an object")
        return answer

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.popen.kill()
        for pipe in (self.popen.stdin, self.popen.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


class WarmProber:
    """A pool of up to ``config.children`` warm children, started lazily."""

    def __init__(self, config: ProberConfig | None = None, *, python: str = sys.executable) -> None:
        self.config = config or ProberConfig()
        self._python = python
        self._pid = os.getpid()
        #: idle slots: a child, or ``None`` where one is still to be started
        self._idle: queue.LifoQueue[_Child | None] = queue.LifoQueue()
        for _ in range(self.config.children):
            self._idle.put(None)
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._failed_start = -START_BACKOFF_SECONDS
        self._closed = False
        #: started, asked, answered, lost, retired, over_memory, fell_back (for tests and benchmarks)
        self.stats: Counter[str] = Counter()

    def ask(self, url: str, formats: str, *, timeout: float, what: str = "media") -> dict[str, Any] | None:
        """Read the header of the local file at ``url`` (``file:...``) with only ``formats``.

        Returns the child's answer (``{"ok": True, "format":..., "streams":..., "estimated":...}``
        or ``{"ok": False, "detail": ffmpeg's error}``), or ``None`` where this file must be
        probed the old way: no child could be had, it missed its deadline, died, or ran out of
        its memory on this file.
        """
        deadline = time.monotonic() + min(timeout, self.config.timeout_seconds)
        if self._closed or self.config.children < 1 or os.getpid() != self._pid:
            return None
        try:
            child = self._idle.get(
                timeout=max(0.0, min(self.config.wait_seconds, deadline - time.monotonic()))
            )
        except queue.Empty:
            return self._fell_back("no warm child was free in time")
        try:
            if child is not None and not child.alive():
                self._forget(child, "lost")
                child = None
            if child is None:
                child = self._start()
                if child is None:
                    return self._fell_back("no warm child could be started")
            self._count("asked")
            try:
                answer = child.ask({"url": url, "formats": formats, "policy": what}, deadline)
            except ChildLost as exc:
                log.warning("warm prober: %s while reading %s; killed, ffprobe reads it", exc, what)
                self._forget(child, "lost")
                child = None
                return self._fell_back()
            if answer.get("retire"):
                self._forget(child, "retired")
                child = None
            if answer.get("memory"):
                self._count("over_memory")
                log.warning("warm prober: reading %s took more than %d MB; ffprobe reads it", what,
                            self.config.memory_mb)  # fmt: skip
                return self._fell_back()
            if not isinstance(answer.get("ok"), bool):
                return self._fell_back("the answer had no outcome")
            self._count("answered")
            return answer
        finally:
            self._idle.put(child)

    def _start(self) -> _Child | None:
        if time.monotonic() - self._failed_start < START_BACKOFF_SECONDS:
            return None
        try:
            child = _Child(self.config, self._python)
        except (OSError, ChildLost) as exc:
            self._failed_start = time.monotonic()
            log.warning("warm prober: could not start a child (%s); ffprobe for %g s", exc,
                        START_BACKOFF_SECONDS)  # fmt: skip
            return None
        with self._lock:
            if self._closed:
                child.kill()
                return None
            self._children.add(child)
        self._count("started")
        return child

    def _forget(self, child: _Child, why: str) -> None:
        child.kill()
        with self._lock:
            self._children.discard(child)
        self._count(why)

    def _fell_back(self, why: str = "") -> dict[str, Any] | None:
        if why:
            log.debug("warm prober: %s; ffprobe reads this file", why)
        self._count("fell_back")
        return None

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def pids(self) -> list[int]:
        """The process ids of the children alive now."""
        with self._lock:
            return sorted(child.pid for child in self._children if child.alive())

    def close(self) -> None:
        """End every child (a request under way then falls back to ffprobe); no new ones start."""
        with self._lock:
            self._closed = True
            children = list(self._children)
            self._children.clear()
        if os.getpid() == self._pid:
            for child in children:
                child.kill()


_config = ProberConfig()
_prober: WarmProber | None = None
_global_lock = threading.Lock()


def configure(config: ProberConfig) -> None:
    """Use ``config`` from now on (an entry point calls it with its settings); the children of
    an earlier configuration are ended."""
    global _config, _prober
    with _global_lock:
        old, _config, _prober = _prober, config, None
    if old is not None:
        old.close()


def shared() -> WarmProber | None:
    """This process's prober, made on first use (``None`` when configured with no children)."""
    global _prober
    with _global_lock:
        if _config.children < 1:
            return None
        if _prober is None or _prober._pid != os.getpid():  # a forked process starts its own
            _prober = WarmProber(_config)
        return _prober


@atexit.register
def _close_at_exit() -> None:
    prober = _prober
    if prober is not None:
        prober.close()


__all__ = ["ChildLost", "ProberConfig", "ProberSettings", "WarmProber", "config_from", "configure", "shared"]
