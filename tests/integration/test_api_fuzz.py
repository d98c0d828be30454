"""The API fuzzed from its own OpenAPI document (schemathesis: examples, coverage, fuzzing and
stateful phases) with a real Auth emulator token, on the stack's emulators: no server error, every
answer as the document declares it, and 401 on every route without a token.

A bounded run (``make fuzz`` runs a longer one and writes its figures to bench/results/fuzz.json).
The API is served in the test process on a jobs collection that nothing runs, with text to speech
over quota and a short wait, so that fuzzed jobs cost no GPU service time and no fuzzed request
waits long.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.quota import QuotaLimits, QuotaPolicy
from devkit.apiserver import api_server
from devkit.firebase_auth import sign_up
from devkit.fuzz import fuzz
from infra.localstack.stack import LocalStack
from infra.settings import Settings


def fuzz_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "jobs_collection": "fuzz-jobs",
            "quotas_collection": "fuzz-quotas",
            "quotas": QuotaPolicy(
                max_unfinished=50, max_daily=None, pipelines={"tts": QuotaLimits(max_daily=0)}
            ),
            "api_max_wait_seconds": 1.0,
        }
    )


def test_the_api_survives_a_bounded_fuzz_run(stack: LocalStack, settings: Settings, tmp_path: Path) -> None:
    user = sign_up(stack.env["FIREBASE_AUTH_EMULATOR_HOST"])
    with api_server(fuzz_settings(settings)) as (url, _api):
        figures = fuzz(url, user.token, tmp_path, max_examples=25, seed=18)
    print(json.dumps({k: figures[k] for k in ("cases", "routes", "status_counts", "server_errors")}))
    assert figures["cases"] >= 200, figures
    assert figures["server_errors"] == 0, figures["per_route"]
    assert figures["schemathesis_exit"] == 0, (tmp_path / "fuzz.log").read_text()[-6000:]
    assert figures["unauthenticated"] and set(figures["unauthenticated"].values()) == {401}, figures
