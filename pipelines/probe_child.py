"""The warm prober's child: reads media headers with PyAV, one request at a time, under limits.

Run as a script by :mod:`pipelines.prober` (``python -I probe_child.py MEMORY_MB CPU_SECONDS
LIFETIME_CPU_SECONDS``), never imported by the service: it stands on the standard library and
PyAV only, so nothing of the caller's process is in it. It speaks JSON lines on stdin/stdout:

* at start, once PyAV is imported and the limits are set: ``{"ready": true}``;
* a request ``{"url": "file:/...", "formats": "wav,flac,..."}`` is answered with
  ``{"ok": true, "format": {...}, "streams": [...], "estimated": bool, "doubtful": bool,
  "retire": bool}`` in ffprobe's ``-show_format -show_streams`` JSON shape (the fields
  :func:`pipelines.media.probe` reads; ``estimated``: ffmpeg guessed the length from the bit rate;
  ``doubtful``: it took the format on a low probe score), or ``{"ok": false, "detail": "..."}``
  when ffmpeg cannot read it (ffmpeg's error text), or ``{"ok": false, "memory": true}`` when it
  ran out of its address space.

Limits (``resource.setrlimit``): the address space PyAV's import left plus MEMORY_MB; CPU time
CPU_SECONDS per request (a soft limit moved before each one: SIGXCPU ends the child), within a
hard limit of LIFETIME_CPU_SECONDS (the child asks to be retired before it reaches it); no files
written, no core dumps, a few descriptors.
"""

from __future__ import annotations

import errno
import json
import math
import resource
import sys
from typing import Any

#: ffmpeg's warning when it guesses a duration from the bit rate and the file size
ESTIMATED = "Estimating duration from bitrate"
#: ffmpeg's warning when no accepted format matched well and it took the best of poor guesses
LOW_SCORE = "detected only with low score"


def _address_space() -> int:
    """Bytes of address space this process maps now (``VmSize``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rate(value: Any) -> str:
    """A PyAV ``Fraction`` (or ``None``) as ffprobe writes a rate: ``"30000/1001"``, ``"0/0"``."""
    if value is None:
        return "0/0"
    return f"{value.numerator}/{value.denominator}"


def _seconds(ticks: Any, time_base: Any) -> str | None:
    if ticks is None or time_base is None:
        return None
    return f"{float(ticks * time_base):.6f}"


def _stream(stream: Any, attached_pic: int) -> dict[str, Any]:
    ctx = stream.codec_context
    found: dict[str, Any] = {
        "index": stream.index,
        "codec_type": stream.type,
        "disposition": {"attached_pic": 1 if int(stream.disposition) & attached_pic else 0},
        "duration": _seconds(stream.duration, stream.time_base),
        "nb_frames": str(stream.frames) if stream.frames else None,
    }
    if stream.type == "audio":
        found["sample_rate"] = str(ctx.sample_rate)
        found["channels"] = ctx.channels
    elif stream.type == "video":
        found["width"], found["height"] = ctx.width, ctx.height
        found["avg_frame_rate"] = _rate(stream.average_rate)
        found["r_frame_rate"] = _rate(stream.base_rate)
    return found


def _answer(av: Any, request: dict[str, Any]) -> dict[str, Any]:
    options = {"protocol_whitelist": "file", "format_whitelist": str(request["formats"])}
    attached_pic = int(av.stream.Disposition.attached_pic)
    with av.logging.Capture(local=False) as logs:  # every thread of this one-request-at-a-time child
        try:
            with av.open(
                str(request["url"]), mode="r", container_options=options, metadata_errors="ignore"
            ) as container:
                duration = container.duration
                return {
                    "ok": True,
                    "format": {
                        "format_name": container.format.name,
                        "duration": f"{duration / 1_000_000:.6f}" if duration is not None else None,
                    },
                    "streams": [_stream(s, attached_pic) for s in container.streams],
                    "estimated": any(ESTIMATED in message for _, _, message in logs),
                    "doubtful": any(LOW_SCORE in message for _, _, message in logs),
                }
        except MemoryError:
            return {"ok": False, "memory": True}
        except av.FFmpegError as exc:
            if exc.errno == errno.ENOMEM:
                return {"ok": False, "memory": True}
            return {"ok": False, "detail": str(exc.strerror or "Invalid data found when processing input")}
        except Exception as exc:  # anything else PyAV raises on an odd file: ffprobe decides
            return {"ok": False, "detail": type(exc).__name__}


def main(argv: list[str]) -> int:
    memory_mb, cpu_seconds, lifetime = int(argv[1]), float(argv[2]), float(argv[3])
    import av  # the one import this child is for: paid once, then every probe is warm
    import av.logging
    import av.stream

    av.logging.set_level(av.logging.WARNING)  # to the Capture of each request, nowhere else
    av.logging.set_skip_repeated(False)  # else a repeated warning is told in a later request
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    limit = _address_space() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    hard = math.ceil(_cpu_used() + lifetime)
    resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        used = _cpu_used()
        soft = min(hard, math.ceil(used + cpu_seconds))
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        try:
            answer = _answer(av, json.loads(line))
        except (ValueError, KeyError, TypeError):
            answer = {"ok": False, "detail": "bad request"}
        answer["retire"] = _cpu_used() + cpu_seconds >= hard
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
