"""Import direction and cold-start cost: the rules that keep the layers apart."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(REPO)), node.module))
                found.update((str(path.relative_to(REPO)), f"{node.module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.Import):
                found.update((str(path.relative_to(REPO)), a.name) for a in node.names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # Pipelines may call inference services (Cloud Vision), never the job plumbing.
        (
            "pipelines",
            {
                "infra",
                "functions",
                "gpu_service",
                "google.cloud.firestore",
                "google.cloud.pubsub_v1",
                "google.cloud.storage",
            },
        ),
        ("functions", {"gpu_service", "torch", "faster_whisper", "diffusers"}),
        ("infra", {"gpu_service", "functions"}),
    ],
)
def test_import_direction(package: str, forbidden: set[str]) -> None:
    bad = sorted(
        (f, m) for f, m in _imports(package) if any(m == x or m.startswith(x + ".") for x in forbidden)
    )
    # The local stack launches the other deployables as processes; it does not import them.
    assert bad == [], f"{package} must not import {forbidden}: {bad}"


def test_functions_import_no_model_code() -> None:
    code = (
        "import sys, functions.main, pipelines.registry as r; r.all_specs(); "
        "heavy = {'torch', 'faster_whisper', 'ctranslate2', 'diffusers', 'transformers', 'cv2', 'yt_dlp'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
