"""Completion notifications on the local stack: how soon after a job ends its webhook and push
arrive, and how many logical events each job gives.

    python -m bench.notify --jobs 20

One user with a webhook endpoint (answering 500 on its first attempt for every other job, so half
the events arrive on a retry after the first backoff) and one device. For each job: ``finishedAt``
(the commit that ended it) until the receiver got the delivered attempt, and until the FCM
stand-in got the message. Also counts the webhook-ids each job's endpoint saw (must be 1) and
whether every attempt verified with ``standardwebhooks``. The stack ticks the dispatcher every
second (production: every minute, each run delivering for 40 s).

Prints a table and writes ``bench/results/notify.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.app_edge import summary
from devkit.firebase_auth import sign_up
from devkit.flaky import topology_with_flaky
from devkit.receivers import fcm_receiver, webhook_receiver
from infra.localstack.stack import LocalStack, StackConfig, free_port

RESULTS = Path(__file__).with_name("results")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fcm_port = free_port()
    arrivals: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as tmp_name,
        fcm_receiver(fcm_port) as fcm,
        webhook_receiver() as hooks,
    ):
        tmp = Path(tmp_name)
        config = StackConfig(
            state_dir=tmp / "stack",
            enabled_pipelines=["flaky"],
            schedule_interval_seconds=1.0,
            env={
                "PLUGINS": "devkit.flaky:SPEC",
                "PIPELINES__FLAKY__STATE_DIR": str(tmp / "flaky"),
                "QUOTAS": '{"tiers": {}}',
                "NOTIFY_BACKOFF_SECONDS": "[1, 2, 4]",
                "FCM_URL": f"http://127.0.0.1:{fcm_port}/v1/projects/{{project}}/messages:send",
            },
            start_gpu_service=True,
        )
        with LocalStack(config, topology_with_flaky()) as stack:
            user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
            with httpx.Client(base_url=stack.env["API_URL"], timeout=60) as api:
                hook = api.post("/v1/webhooks", headers=user.headers, json={"url": hooks.url("/b")}).json()
                hooks.secrets["/b"] = hook["secret"]
                api.post("/v1/devices", headers=user.headers, json={"token": "bench-device"})
                ids = []
                for i in range(args.jobs):
                    hooks.script["/b"] = ["fail"] if i % 2 else []
                    job = api.post(
                        "/v1/jobs", headers=user.headers, json={"pipeline": "flaky", "inputs": {"steps": 1}}
                    ).json()
                    ids.append(job["id"])
                    end = time.monotonic() + 120
                    while time.monotonic() < end:
                        got = [r for r in hooks.for_path("/b") if r.webhook_id == f"evt_{job['id']}"]
                        if got and got[-1].answered == "ok":
                            arrivals[job["id"]] = time.time()
                            break
                        time.sleep(0.05)
                time.sleep(3)  # late duplicates, if any, would show now
                jobs = {j: api.get(f"/v1/jobs/{j}", headers=user.headers).json() for j in ids}

    first: list[float] = []
    second: list[float] = []
    push_seen, ids_per_job, retried = 0, [], 0
    for i, (job_id, job) in enumerate(jobs.items()):
        finished = datetime.fromisoformat(job["finishedAt"]).timestamp()
        if job_id in arrivals:
            (second if i % 2 else first).append(arrivals[job_id] - finished)
        seen = {r.webhook_id for r in hooks.received if r.body.get("data", {}).get("id") == job_id}
        ids_per_job.append(len(seen))
        retried += job["notifications"]["deliveries"][f"webhook_{hook['id']}"]["attempts"] > 1
        push_seen += any(m["message"]["data"]["jobId"] == job_id for m in fcm.messages)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "jobs": len(jobs),
        "webhook_first_attempt_seconds": summary(first),
        "webhook_after_one_retry_seconds": summary(second),
        "jobs_with_one_logical_event": sum(1 for n in ids_per_job if n == 1),
        "jobs_retried": retried,
        "webhook_attempts_verified": sum(r.verified for r in hooks.received),
        "webhook_attempts": len(hooks.received),
        "jobs_pushed": push_seen,
        "note": "finishedAt until the receiver got the delivered attempt; dispatcher ticks every 1 s, backoff 1 s",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "notify.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
