"""The GPU and functions images: layer order, pinned dependencies, a usable home directory.

Offline: the Dockerfiles are read as text (building the CUDA image needs a registry and
gigabytes); hadolint and checkov run in test_deploy_checks.py.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
GPU_DOCKERFILE = ROOT / "gpu_service" / "Dockerfile"
FUNCTIONS_DOCKERFILE = ROOT / "functions" / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"


def instructions(dockerfile: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def index(lines: list[str], pattern: str) -> int:
    return next(i for i, line in enumerate(lines) if re.search(pattern, line))


def constraints() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_models_are_copied_before_dependencies_and_code_in_an_independent_layer() -> None:
    lines = instructions(GPU_DOCKERFILE)
    models = index(lines, r"^COPY .*MODELS_DIR")
    assert lines[models].startswith("COPY --link "), "models must not depend on the layers below them"
    assert models < index(lines, r"pip install .*torch==")
    assert models < index(lines, r"^COPY pyproject\.toml")
    for package in ("functions", "gpu_service", "pipelines", "infra"):
        assert models < index(lines, rf"^COPY {package} ")


def test_pip_downloads_are_a_build_cache_not_a_layer() -> None:
    lines = instructions(GPU_DOCKERFILE)
    for i in (index(lines, r"pip install .*torch=="), index(lines, r'pip install .*"\.\[service\]"')):
        assert "--mount=type=cache,target=/root/.cache/pip" in lines[i]


@pytest.mark.parametrize("dockerfile", [GPU_DOCKERFILE, FUNCTIONS_DOCKERFILE], ids=lambda p: p.parent.name)
def test_dependencies_are_installed_with_the_shared_constraints(dockerfile: Path) -> None:
    lines = instructions(dockerfile)
    assert any(line.startswith("COPY ") and "constraints.txt" in line for line in lines)
    install = index(lines, r"pip install -c constraints\.txt ")
    assert install < index(lines, r"^COPY functions ")
    assert "-c constraints.txt" in (ROOT / "scripts" / "setup.sh").read_text()


@pytest.mark.parametrize("dockerfile", [GPU_DOCKERFILE, FUNCTIONS_DOCKERFILE], ids=lambda p: p.parent.name)
def test_the_service_user_has_a_writable_home_and_cache(dockerfile: Path) -> None:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    assert "/nonexistent" not in text
    env = dict(re.findall(r"\b(HOME|XDG_CACHE_HOME)=(\S+)", text))
    assert env.get("HOME") == "/home/app" and env.get("XDG_CACHE_HOME", "").startswith("/home/app/")
    assert "--create-home --home-dir /home/app" in text
    assert "chown -R 10001:10001 /home/app" in text


def test_no_python_version_is_hard_coded_beside_a_base_image_argument() -> None:
    text = GPU_DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE" in text
    assert not re.search(r"python3\.\d+/site-packages", text), "derive paths from the image's own Python"


def test_every_image_dependency_is_pinned_and_torch_agrees_everywhere() -> None:
    pins = constraints()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in [*project["dependencies"], *project["optional-dependencies"]["service"]]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not in constraints.txt: run scripts/constraints.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    torch = re.search(r"ARG TORCH_VERSION=(\S+)", GPU_DOCKERFILE.read_text())
    assert torch and pins["torch"] == torch.group(1)
