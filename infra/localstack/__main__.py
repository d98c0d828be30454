"""``python -m infra.localstack up|down|wait``: the local stack in the foreground or background.

``up`` runs in the foreground until Ctrl-C (or SIGTERM), then stops every component.
``make up`` runs it in the background; ``down`` stops it; ``wait`` blocks until it is ready.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time

from infra.localstack.stack import REPO, LocalStack, StackConfig, StackError

STATE = REPO / ".local"
PID_FILE = STATE / "stack.pid"
ENV_FILE = STATE / "stack.env"


def up(pipelines: list[str]) -> int:
    STATE.mkdir(exist_ok=True)
    PID_FILE.write_text(str(os.getpid()))
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = LocalStack(StackConfig(state_dir=STATE, enabled_pipelines=pipelines))
    try:
        stack.start()
        print(
            f"local stack ready in {stack.timings['total']}s: settings in {ENV_FILE}, logs in {STATE / 'logs'}"
        )
        print("".join(f"  {k}={v}\n" for k, v in sorted(stack.env.items())), end="", flush=True)
        if "WEB_URL" in stack.env:
            print(f"web client: {stack.env['WEB_URL']}  API: {stack.env['API_URL']}/docs", flush=True)
        while not stop["now"]:
            time.sleep(0.2)
    except StackError as exc:
        print(f"local stack failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping the local stack...", flush=True)
        stack.stop()
        with contextlib.suppress(FileNotFoundError):
            PID_FILE.unlink()
    return 0


def down(timeout: float = 30) -> int:
    try:
        pid = int(PID_FILE.read_text())
    except (FileNotFoundError, ValueError):
        print("no local stack is running")
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("local stack stopped")
            return 0
        time.sleep(0.2)
    print(f"local stack (pid {pid}) did not stop in {timeout:.0f}s", file=sys.stderr)
    return 1


def wait(timeout: float) -> int:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if ENV_FILE.exists():
            text = ENV_FILE.read_text()
            print(text, end="")
            urls = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            if "WEB_URL" in urls:
                print(f"web client: {urls['WEB_URL']}  API: {urls['API_URL']}/docs")
            return 0
        # The background process needs a moment to write its pid file; after that, a missing
        # pid file means it exited.
        if not PID_FILE.exists() and time.monotonic() - started > 15:
            print(f"the local stack is not running; see {STATE / 'logs'}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"the local stack was not ready in {timeout:.0f}s; see {STATE / 'logs'}", file=sys.stderr)
    return 1


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(prog="python -m infra.localstack")
    sub = parser.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up")
    u.add_argument("--pipelines", default=os.environ.get("ENABLED_PIPELINES", "transcribe,inpaint,video,tts"))
    sub.add_parser("down")
    w = sub.add_parser("wait")
    w.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    if args.command == "up":
        return up([p for p in args.pipelines.split(",") if p])
    if args.command == "down":
        return down()
    return wait(args.timeout)


if __name__ == "__main__":
    sys.exit(main())
