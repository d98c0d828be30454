"""CPU time per component of the local stack, read from ``/proc``: the project's own processes
(the functions, the GPU service, the API) apart from the emulators and the local stand-ins for
Google's services, and apart from the benchmark's own client.

Each component is a process group the stack started; its CPU is the user and system time of
every process of its tree (``/proc/<pid>/stat`` fields 14-17: a process's own time and the time
of its children it has reaped, such as an ``ffprobe`` run), sampled before and after a run.
Emulator CPU is what the project's calls cost a local stack; in production those calls are
billed operations on Google's side, so the project's share is the figure to cut.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from infra.localstack.stack import LocalStack

_TICK = os.sysconf("SC_CLK_TCK")
#: the components that run this project's code in production
PROJECT = ("gpu_service", "api")
#: the emulators, and what stands in for a Google service here (the Eventarc relay, the signed-URL
#: gate, the web host)
STAND_INS = ("pubsub", "firestore", "gcs", "auth", "eventarc", "gate", "web")


def _stat(pid: int) -> tuple[int, float] | None:
    """``(ppid, cpu seconds)`` of one process: its own time and its reaped children's."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # ended meanwhile
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return int(fields[1]), ticks / _TICK


def _processes() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            out[int(entry)] = stat
    return out


def sample(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of each component of ``stack`` (its whole process tree), and of this
    process (``client``)."""
    procs = _processes()
    children: dict[int, list[int]] = defaultdict(list)
    for pid, (ppid, _) in procs.items():
        children[ppid].append(pid)
    names = [*stack.topology.functions, *PROJECT, *STAND_INS]
    out: dict[str, float] = {}
    for name in names:
        root = stack.pid(name)
        if root is None or root not in procs:
            continue
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += procs[pid][1] if pid in procs else 0.0
            todo.extend(children.get(pid, ()))
        out[name] = total
    me = _stat(os.getpid())
    out["client"] = me[1] if me else 0.0
    return out


def per_job(
    before: dict[str, float], after: dict[str, float], jobs: int, functions: list[str]
) -> dict[str, object]:
    """Milliseconds of CPU per job between two samples: per component, the project's processes
    together (the functions, the GPU service, the API), the stand-ins together, and the client."""
    ms = {k: round(1000 * (after.get(k, 0.0) - before.get(k, 0.0)) / max(jobs, 1), 2) for k in after}
    project = [*functions, *PROJECT]
    return {
        "project_ms_per_job": round(sum(v for k, v in ms.items() if k in project), 1),
        "emulators_ms_per_job": round(sum(v for k, v in ms.items() if k in STAND_INS), 1),
        "client_ms_per_job": ms.get("client", 0.0),
        "per_process_ms_per_job": {k: v for k, v in sorted(ms.items()) if v},
    }
