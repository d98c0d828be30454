"""Fuzzing the HTTP API from its own OpenAPI document with schemathesis (its CLI, run as a child
process), with a real Auth emulator token, and the figures of the run.

Checks: no server error, status codes, content types, headers and bodies as the document
declares them, and that requests without the token are refused (``ignored_auth``); phases:
examples, coverage, fuzzing and stateful. Afterwards every route is called once more without a
token, which must be a 401. The event stream is left out: on a job that never ends it streams
until the client gives up, which a fuzzer reads as a failure.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_headers_conformance,response_schema_conformance,ignored_auth"
)
PHASES = "examples,coverage,fuzzing,stateful"
LEFT_OUT = r"/events$"
PUBLIC = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def fuzz(
    api_url: str,
    token: str,
    out_dir: Path,
    *,
    max_examples: int,
    seed: int | None = None,
    workers: int = 1,
    request_timeout: float = 30,
) -> dict[str, Any]:
    """Run schemathesis against ``api_url``; the figures: cases, routes, status counts, 5xx,
    the failures schemathesis reported and the unauthenticated answers per route."""
    out_dir.mkdir(parents=True, exist_ok=True)
    har = out_dir / "fuzz.har"
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{api_url}/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--phases",
        PHASES,
        "--max-examples",
        str(max_examples),
        "--workers",
        str(workers),
        "--request-timeout",
        str(request_timeout),
        "--exclude-path-regex",
        LEFT_OUT,
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--continue-on-failure",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    if seed is not None:
        argv += ["--seed", str(seed)]
    # Run where its cache (.schemathesis/) lands in out_dir, not in the repository.
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=_env(), cwd=out_dir)
    (out_dir / "fuzz.log").write_text(done.stdout + done.stderr)
    schema = httpx.get(f"{api_url}/openapi.json", timeout=30).json()
    routes = _routes(schema)
    statuses: Counter[int] = Counter()
    per_route: dict[str, Counter[int]] = {}
    for entry in json.loads(har.read_text())["log"]["entries"] if har.exists() else []:
        method = entry["request"]["method"].upper()
        status = int(entry["response"]["status"])
        route = _route_of(routes, method, urlsplit(entry["request"]["url"]).path)
        statuses[status] += 1
        per_route.setdefault(route, Counter())[status] += 1
    unauthenticated = {
        f"{method} {path}": httpx.request(method, api_url + _example(path), timeout=30).status_code
        for method, path, _pattern in routes
        if path not in PUBLIC
    }
    return {
        "cases": sum(statuses.values()),
        "routes": len([r for r in per_route if not r.endswith("(other)")]),
        "undeclared_methods_probed": sorted(r.split()[0] for r in per_route if r.endswith("(other)")),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "per_route": {r: {str(k): v for k, v in sorted(c.items())} for r, c in sorted(per_route.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "schemathesis_exit": done.returncode,
        "failures": _failures(done.stdout),
        "unauthenticated": unauthenticated,
        "max_examples": max_examples,
        "phases": PHASES,
        "checks": CHECKS,
    }


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["SCHEMATHESIS_HOOKS"] = ""
    env.setdefault("NO_COLOR", "1")
    return env


def _routes(schema: dict[str, Any]) -> list[tuple[str, str, re.Pattern[str]]]:
    found = []
    for path, item in schema.get("paths", {}).items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        for method in item:
            if method.lower() in ("get", "post", "put", "patch", "delete"):
                found.append((method.upper(), path, pattern))
    return found


def _route_of(routes: list[tuple[str, str, re.Pattern[str]]], method: str, path: str) -> str:
    for known, template, pattern in routes:
        if known == method and pattern.match(path):
            return f"{method} {template}"
    return f"{method} (other)"


def _example(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-job", path)


def _failures(output: str) -> list[str]:
    """The failure headlines of schemathesis's summary (empty when it found none)."""
    lines = [line.strip() for line in output.splitlines()]
    return [line for line in lines if line.startswith(("- ", "_")) and "fail" in line.lower()][:50]
