"""Policy and lint checks of the deployment: checkov on terraform/ and both Dockerfiles, hadolint
on both Dockerfiles. Every finding is either fixed or skipped inline, next to the code, with a
one-line reason (`#checkov:skip=ID:reason`, `# hadolint ignore=ID` under a comment): there is no
config file of skips.

Both tools come with the `dev` extra. Without them these tests skip, except where
GPU_JOBS_REQUIRE_TOOLS=1 (Cloud Build), where they fail. Nothing here uses the network: checkov
runs with --skip-download (no policy download, no upload).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "gpu_service" / "Dockerfile", ROOT / "functions" / "Dockerfile"]
REQUIRE_TOOLS = os.environ.get("GPU_JOBS_REQUIRE_TOOLS") == "1"


def tool(name: str) -> str:
    """Path of a console script of this interpreter's environment (or PATH); skip if absent."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if found is None:
        message = f"{name} is not installed (pip install -e '.[dev]')"
        if REQUIRE_TOOLS:
            pytest.fail(f"{message}, and GPU_JOBS_REQUIRE_TOOLS=1 says it must be")
        pytest.skip(message)
    return found


def checkov(*args: str) -> list[dict[str, Any]]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(
        [tool("checkov"), "--skip-download", "--output", "json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.stdout.strip(), result.stderr
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failures(reports: list[dict[str, Any]]) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range'][0]}): {c['check_name']}"
        for report in reports
        for c in report["results"]["failed_checks"]
    ]


def skips(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for report in reports for c in report["results"]["skipped_checks"]]


@pytest.fixture(scope="module")
def terraform_reports() -> list[dict[str, Any]]:
    return checkov("--directory", "terraform", "--framework", "terraform")


@pytest.fixture(scope="module")
def dockerfile_reports() -> list[dict[str, Any]]:
    files = [arg for path in DOCKERFILES for arg in ("--file", str(path.relative_to(ROOT)))]
    return checkov(*files, "--framework", "dockerfile")


def test_checkov_finds_nothing_in_terraform(terraform_reports: list[dict[str, Any]]) -> None:
    assert terraform_reports[0]["summary"]["parsing_errors"] == 0
    assert terraform_reports[0]["summary"]["passed"] > 0
    assert not failures(terraform_reports), "\n".join(failures(terraform_reports))


def test_checkov_finds_nothing_in_the_dockerfiles(dockerfile_reports: list[dict[str, Any]]) -> None:
    assert dockerfile_reports[0]["summary"]["passed"] > 0
    assert not failures(dockerfile_reports), "\n".join(failures(dockerfile_reports))


def test_every_checkov_skip_gives_a_reason(
    terraform_reports: list[dict[str, Any]], dockerfile_reports: list[dict[str, Any]]
) -> None:
    skipped = skips(terraform_reports) + skips(dockerfile_reports)
    assert skipped, "the inline skips are no longer seen: is the syntax still #checkov:skip=ID:reason?"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(reason.split()) >= 4, (
            f"{check['check_id']} on {check['resource']}: say why it does not apply"
        )


def test_no_checkov_config_file_hides_findings() -> None:
    for name in (".checkov.yaml", ".checkov.yml", ".bridgecrew.yml", "terraform/.checkov.yaml"):
        assert not (ROOT / name).exists(), f"{name}: skip inline, next to the code, with a reason"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_hadolint_ignore_gives_a_reason(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"#\s*hadolint\s+ignore=", line.strip()):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and len(above.split()) >= 5, (
                f"{dockerfile}:{i + 1}: say why above it"
            )
