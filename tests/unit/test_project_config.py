"""The tool settings in pyproject.toml say only what is true of the tree: every ruff per-file ignore
names files that exist, and no warning of ours is hidden from the test run."""

from __future__ import annotations

import builtins
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OURS = ("core", "pipelines", "infra", "functions", "gpu_service", "cli", "api", "tests", "bench", "scripts")


def test_every_ruff_per_file_ignore_names_files_that_exist() -> None:
    patterns = PYPROJECT["tool"]["ruff"]["lint"]["per-file-ignores"]
    missing = [pattern for pattern in patterns if not any(ROOT.glob(pattern))]
    assert not missing, f"ruff ignores rules for paths that no longer exist: {missing}"


def _filters() -> list[tuple[str, type[Warning], str]]:
    """The test run's filterwarnings as (action, category, module): ``action:message:category:module``."""
    found = []
    for entry in PYPROJECT["tool"]["pytest"]["ini_options"].get("filterwarnings", []):
        action, _message, category, module, *_ = [*entry.split(":"), "", "", "", ""]
        kind = getattr(builtins, category or "Warning")
        assert isinstance(kind, type) and issubclass(kind, Warning), entry
        found.append((action, kind, module))
    return found


def test_deprecation_warnings_are_ignored_only_where_a_third_party_module_raises_them() -> None:
    for action, category, module in _filters():
        if action != "ignore" or not issubclass(DeprecationWarning, category):
            continue
        assert module, f"a blanket ignore of {category.__name__} hides our own deprecations"
        top = module.lstrip("^").split("\\", 1)[0].split(".", 1)[0]
        assert top not in OURS, f"{module}: a warning of ours is hidden"
