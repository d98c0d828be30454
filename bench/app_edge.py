"""The app edge's latencies on the local stack: API create -> queued, SSE first event, and the
browser round trip.

    make bench            # or: python -m bench.app_edge --runs 20 --browser-runs 5

* create -> queued: ``POST /v1/jobs`` (token check, the job document written, validated,
  admitted against the quota, queued and published) until its answer, which says ``queued``;
* SSE first event: ``GET /v1/jobs/{id}/events`` opened until its first ``event: job`` arrives;
* SSE status change: a job's ``succeeded`` written by the GPU service until the stream shows it
  (measured against the job's own ``finishedAt``);
* browser round trip: in headless chromium, Run pressed (the job document created with the
  SDK) until the page shows ``succeeded`` for a one-step job, and sign-in to a rendered inpainted
  image for a whole user session.

Prints a table and writes ``bench/results/app_edge.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from devkit.firebase_auth import AuthUser, new_email, sign_up
from devkit.flaky import topology_with_flaky
from devkit.webapp import WebApp, browser
from infra.localstack.stack import LocalStack, StackConfig

RESULTS = Path(__file__).with_name("results")


def create_to_queued(api: httpx.Client, user: AuthUser) -> tuple[float, str]:
    t0 = time.perf_counter()
    resp = api.post("/v1/jobs", headers=user.headers, json={"pipeline": "flaky", "inputs": {"steps": 1}})
    seconds = time.perf_counter() - t0
    job = resp.json()
    assert resp.status_code == 201 and job["status"] == "queued", resp.text
    return seconds, job["id"]


def sse_first_event(api: httpx.Client, user: AuthUser) -> tuple[float, float]:
    """(open -> first event, finishedAt -> the stream shows succeeded) for a short job."""
    job = api.post(
        "/v1/jobs",
        headers=user.headers,
        json={"pipeline": "flaky", "inputs": {"steps": 5, "step_seconds": 0.1}},
    ).json()
    t0 = time.perf_counter()
    first = None
    with api.stream("GET", f"/v1/jobs/{job['id']}/events", headers=user.headers) as resp:
        for line in resp.iter_lines():
            if line == "event: job" and first is None:
                first = time.perf_counter() - t0
            if line.startswith("data: ") and '"succeeded"' in line:
                seen = datetime.now(UTC)
                data = json.loads(line.removeprefix("data: "))
                finished = datetime.fromisoformat(data["finishedAt"].replace("Z", "+00:00"))
                change = (seen - finished).total_seconds()
                break
    assert first is not None
    return first, change


def browser_runs(stack: LocalStack, runs: int, image: Path, mask: Path) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"run_to_succeeded": [], "sign_in_to_rendered_image": []}
    with browser() as chromium:
        for _ in range(runs + 1):  # the first page load warms the SDK's caches: not counted
            context = chromium.new_context()
            app = WebApp(context.new_page(), stack.env["WEB_URL"]).open()
            t0 = time.perf_counter()
            app.sign_up(new_email())
            app.run("inpaint", image, mask=mask)
            assert app.wait_final(timeout=60) == "succeeded", app.error
            app.wait_result_image()
            session = time.perf_counter() - t0
            t1 = time.perf_counter()
            app.run("flaky", inputs={"steps": 1})
            assert app.wait_final(timeout=60) == "succeeded", app.error
            found["run_to_succeeded"].append(time.perf_counter() - t1)
            found["sign_in_to_rendered_image"].append(session)
            context.close()
    return {k: v[1:] for k, v in found.items()}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--browser-runs", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from devkit.sample_images import write_sample

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        image, mask = write_sample(tmp / "img")
        config = StackConfig(
            state_dir=tmp / "stack",
            enabled_pipelines=["inpaint", "flaky"],
            env={
                "PLUGINS": "devkit.flaky:SPEC",
                "PIPELINES__FLAKY__STATE_DIR": str(tmp / "flaky"),
                # latency, not quotas: the bench's anonymous user gets the top-level caps
                "QUOTAS": '{"tiers": {}}',
            },
        )
        with LocalStack(config, topology_with_flaky()) as stack:
            user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
            with httpx.Client(base_url=stack.env["API_URL"], timeout=60) as api:
                create_to_queued(api, user)  # warm-up: the first request opens the gRPC channels
                creates = [create_to_queued(api, user)[0] for _ in range(args.runs)]
                sse_first_event(api, user)
                sse = [sse_first_event(api, user) for _ in range(max(3, args.runs // 4))]
            web = browser_runs(stack, args.browser_runs, image, mask)

    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "api_create_to_queued_seconds": summary(creates),
        "sse_first_event_seconds": summary([s[0] for s in sse]),
        "sse_status_change_seconds": summary([s[1] for s in sse]),
        "browser_run_to_succeeded_seconds": summary(web["run_to_succeeded"]),
        "browser_sign_in_to_rendered_image_seconds": summary(web["sign_in_to_rendered_image"]),
        "runs": {"api": len(creates), "sse": len(sse), "browser": args.browser_runs},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "app_edge.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'measure':<44}{'median':>9}{'p90':>9}{'min':>9}{'max':>9}   (seconds)")
    for key, value in report.items():
        if isinstance(value, dict) and "median" in value:
            print(f"{key:<44}" + "".join(f"{value[k]:>9.3f}" for k in ("median", "p90", "min", "max")))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
