"""Import direction and cold-start cost: the rules that keep the layers apart.

The packages and the only arrows between them::

    core  <──  pipelines  <──┐
      ^                       ├── functions, gpu_service, cli   (the entry points)
      └──────  infra      <──┘         ^
                                       └── api   (creates jobs through the functions' own handler)

``core`` imports nothing of ours; ``pipelines`` (pure inference) and ``infra`` (the Google edge)
stand on it and not on each other; the entry points resolve the enabled pipelines once and pass
them down. Every arrow not listed in ``ALLOWED`` fails a test of its own, and no module anywhere
in the repository imports itself back through others (an import circle), lazily or not.

Around them, what is never deployed::

    production (the packages above, plugins)  <──  devkit  <──  bench, scripts, tests

``devkit`` (tiny models, sample media, auth helpers, the flaky stand-in pipelines) stands on the
production packages and none of them stands on it, by import or by a module path in a string
(``PLUGINS``, a spec's ``loader``); ``bench`` and ``scripts`` take what they share with the tests
from ``devkit``, never from ``tests``.
"""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PACKAGES = ("core", "pipelines", "infra", "functions", "gpu_service", "cli", "api")
ALLOWED = {
    ("pipelines", "core"),
    ("infra", "core"),
    ("functions", "core"),
    ("functions", "infra"),
    ("functions", "pipelines"),
    ("gpu_service", "core"),
    ("gpu_service", "infra"),
    ("gpu_service", "pipelines"),
    ("cli", "core"),
    ("cli", "infra"),
    ("cli", "pipelines"),
    ("api", "core"),
    ("api", "infra"),
    ("api", "functions"),
    ("api", "pipelines"),
}
FORBIDDEN = sorted(
    (src, dst) for src, dst in itertools.permutations(PACKAGES, 2) if (src, dst) not in ALLOWED
)


@cache
def _tree(path: Path) -> ast.Module:
    """A file's syntax tree, parsed once for all the scans of this module."""
    return ast.parse(path.read_text())


def _walk(root: Path) -> frozenset[tuple[str, str]]:
    """(file, imported module) for every import under ``root``, lazy ones included."""
    found: set[tuple[str, str]] = set()
    for path in root.rglob("*.py"):
        where = str(path.relative_to(root.parent))
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((where, node.module))
                found.update((where, f"{node.module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.Import):
                found.update((where, a.name) for a in node.names)
    return frozenset(found)


@cache
def _imports(package: str) -> frozenset[tuple[str, str]]:
    """(file, imported module) for every import in ``package``, lazy ones included."""
    return _walk(REPO / package)


def _offenders(package: str, targets: set[str]) -> list[tuple[str, str]]:
    return sorted(
        (f, m) for f, m in _imports(package) if any(m == t or m.startswith(t + ".") for t in targets)
    )


@pytest.mark.parametrize(("src", "dst"), FORBIDDEN, ids=[f"{s}->{d}" for s, d in FORBIDDEN])
def test_no_arrow_outside_the_allowed_list(src: str, dst: str) -> None:
    assert _offenders(src, {dst}) == [], f"{src} must not import {dst}"


@pytest.mark.parametrize(("src", "dst"), sorted(ALLOWED), ids=[f"{s}->{d}" for s, d in sorted(ALLOWED)])
def test_every_allowed_arrow_is_one_the_code_uses(src: str, dst: str) -> None:
    # Keeps the list honest: an arrow nothing needs any more is taken off it.
    assert _offenders(src, {dst}), f"nothing in {src} imports {dst}: remove the arrow from ALLOWED"


# -- the development kit, the benchmarks and the scripts ------------------------------------------

PRODUCTION = (*PACKAGES, "plugins")
OUTSIDE = (
    *((src, dst) for src in PRODUCTION for dst in ("devkit", "tests", "bench", "scripts")),
    *(("devkit", dst) for dst in ("tests", "bench", "scripts")),
    ("bench", "tests"),
    ("scripts", "tests"),
)
#: A module path as PLUGINS, a spec's ``loader`` or ``importlib`` take it: ``pkg.mod`` or ``pkg.mod:attr``.
_MODULE_PATH = re.compile(r"(\w+)(\.\w+)+(:\w+)?")


@cache
def _module_paths(root: Path) -> frozenset[tuple[str, str]]:
    """(file, string) for every string constant under ``root`` that reads as a module path."""
    found: set[tuple[str, str]] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.update(
                    (str(path.relative_to(root.parent)), part.strip())
                    for part in node.value.split(",")
                    if _MODULE_PATH.fullmatch(part.strip())
                )
    return frozenset(found)


@pytest.mark.parametrize(("src", "dst"), OUTSIDE, ids=[f"{s}->{d}" for s, d in OUTSIDE])
def test_what_is_never_deployed_stays_outside(src: str, dst: str) -> None:
    assert _offenders(src, {dst}) == [], f"{src} must not import {dst}"
    named = sorted((f, m) for f, m in _module_paths(REPO / src) if m.split(".")[0] == dst)
    assert named == [], f"{src} must not load {dst} by a module path"


@pytest.mark.parametrize("package", ["devkit", "bench", "scripts"])
def test_the_kit_the_benchmarks_and_the_scripts_are_walked(package: str) -> None:
    # Each stands on the production packages: an empty walk would make the arrows above hold vacuously.
    files = {f for f, _ in _imports(package)}
    assert any(f.startswith(f"{package}/") for f in files), f"no import found under {package}/"
    assert _offenders(package, set(PACKAGES)), f"{package} imports none of the production packages"


def test_the_walk_finds_lazy_imports_and_module_paths(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "mod.py").write_text(
        "import os\n\n"
        "def later():\n"
        "    from tests.support.speech import synthesize\n"
        "    import bench.throughput\n\n"
        "PLUGINS = 'devkit.flaky:SPEC,devkit.flaky:SLOW_SPEC'\n"
    )
    assert {m for _, m in _walk(planted)} >= {"tests.support.speech", "bench.throughput", "os"}
    found = {m for _, m in _module_paths(planted)}
    assert found == {"devkit.flaky:SPEC", "devkit.flaky:SLOW_SPEC"}


def test_core_depends_on_pydantic_and_the_standard_library_only() -> None:
    third_party = {
        m.split(".")[0]
        for _, m in _imports("core")
        if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] != "core"
    }
    assert third_party <= {"pydantic"}, third_party


def test_pipelines_never_touch_the_job_plumbing() -> None:
    # Pipelines may call inference services (Cloud Vision), never Firestore, Pub/Sub or Storage.
    plumbing = {"google.cloud.firestore", "google.cloud.pubsub_v1", "google.cloud.storage"}
    assert _offenders("pipelines", plumbing) == []


def test_the_api_imports_no_model_code() -> None:
    # It runs from the functions image, which has no torch.
    code = (
        "import sys, api.app, api.__main__; "
        "heavy = {'torch', 'faster_whisper', 'ctranslate2', 'diffusers', 'transformers', 'cv2', 'yt_dlp'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_functions_import_no_model_code() -> None:
    assert _offenders("functions", {"torch", "faster_whisper", "diffusers"}) == []
    code = (
        "import sys, functions.main, pipelines.registry as r; r.all_specs(); "
        "heavy = {'torch', 'faster_whisper', 'ctranslate2', 'diffusers', 'transformers', 'cv2', 'yt_dlp'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_a_multi_part_join_loads_no_model_code() -> None:
    # Whichever instance ends the last part joins the job, without loading the pipeline's model.
    code = (
        "import sys; from pipelines.registry import get_spec; s = get_spec('video'); "
        "import importlib; importlib.import_module(s.join.partition(':')[0]); "
        "heavy = {'torch', 'faster_whisper', 'ctranslate2', 'yt_dlp', 'av'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


# -- no import circles ------------------------------------------------------------------------------


def _python_roots() -> list[Path]:
    """Every top-level folder of ours that holds Python: the packages, and the development kit,
    scripts, benchmarks, tools and tests that stand on them."""
    skip = {"node_modules", "web", "terraform", "docs"}
    return sorted(
        p
        for p in REPO.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in skip
        if any(p.rglob("*.py"))
    )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (at any depth of the file: lazy and type-checking
    imports too, as they tie the two files together just the same)."""
    paths = {
        _module_name(p): p
        for root in _python_roots()
        for p in root.rglob("*.py")
        if "node_modules" not in p.parts and ".venv" not in p.parts
    }

    def ours(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in paths else ours(base)
                    if target:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                deps.update(t for a in node.names if (t := ours(a.name)))
        deps.discard(module)
        graph[module] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_the_cycle_finder_finds_a_circle_and_only_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_of_ours_imports_itself_back_through_others() -> None:
    graph = _import_graph()
    assert "gpu_service.worker" in graph and "core.lifecycle" in graph  # the scan sees the house
    assert _cycles(graph) == [], "modules that import each other (in a circle)"
