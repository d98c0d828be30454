"""``make fuzz``: a longer schemathesis run against the local stack's own API process (under its
Cloud Run memory), with a real Auth emulator token; the figures go to bench/results/fuzz.json.

The stack runs without the GPU service (fuzzed jobs stay queued), with text to speech over quota
(no fuzzed request waits for a synthesis) and waits of at most 2 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from devkit.firebase_auth import sign_up
from devkit.flaky import topology_with_flaky
from devkit.fuzz import fuzz
from infra.localstack.stack import LocalStack, StackConfig

RESULTS = Path(__file__).parent / "results" / "fuzz.json"
STACK_ENV = {
    "QUOTAS": json.dumps({"max_unfinished": 50, "max_daily": None, "pipelines": {"tts": {"max_daily": 0}}}),
    "API_MAX_WAIT_SECONDS": "2",
    "PLUGINS": "devkit.flaky:SPEC",
    "LOG_LEVEL": "WARNING",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-examples", type=int, default=200, help="cases per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        config = StackConfig(
            state_dir=Path(tmp),
            env=STACK_ENV,
            enabled_pipelines=["transcribe", "tts", "flaky"],
            start_gpu_service=False,
        )
        with LocalStack(config, topology_with_flaky()) as stack:
            user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
            pid = stack.pid("api")
            started = time.perf_counter()
            figures = fuzz(
                stack.env["API_URL"],
                user.token,
                Path(tmp) / "fuzz",
                max_examples=args.max_examples,
                seed=args.seed,
            )
            figures["seconds"] = round(time.perf_counter() - started, 1)
            limit = stack.memory.get("api")
            figures["api"] = {
                "same_process": stack.pid("api") == pid,
                "memory_limit_mib": limit.limit // 2**20 if limit else None,
                "memory_mechanism": limit.mechanism if limit else None,
                "peak_memory_mib": round((limit.peak() or 0) / 2**20) if limit else None,
                "oom_kills": limit.oom_kills() if limit else None,
            }
            log_tail = (Path(tmp) / "fuzz" / "fuzz.log").read_text()[-3000:]
    figures["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    figures["machine"] = f"{platform.machine()}, {platform.python_version()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(log_tail)
    print(
        f"fuzz: {figures['cases']} cases on {figures['routes']} routes in {figures['seconds']} s, "
        f"statuses {figures['status_counts']}, 5xx={figures['server_errors']}, "
        f"schemathesis exit {figures['schemathesis_exit']}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
