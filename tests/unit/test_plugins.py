"""Plugins are installed distributions: one that is broken, or that takes a name already taken, is
reported with its distribution's name and never takes the built-ins (or other plugins) down.

Each test installs real distributions: a ``*.dist-info`` folder with ``METADATA`` and
``entry_points.txt``, and the module it names, in a temporary directory put on ``sys.path``, so
``importlib.metadata`` finds them exactly as it finds a pip-installed package.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import cli
from core.spec import Backoff, Catalog, Delivery, PipelineSpec
from gpu_service.app import create_app
from gpu_service.pool import ModelPool
from infra.settings import Settings
from infra.topology import load_topology
from pipelines import registry as reg
from pipelines.registry import ENTRY_POINT_GROUP, catalog, plugin_topology, registry

AUTOMATON_DIST = "gpu-jobs-cellular-automata"

# A plugin module that defines a valid spec named by the entry point it is installed under.
SPEC_MODULE = """
from pydantic import BaseModel
from core.spec import PipelineModel, PipelineSpec

class Inputs(PipelineModel):
    n: int = 1

class Outputs(BaseModel):
    n: int

class Config(BaseModel):
    pass

def spec(name):
    return PipelineSpec(name=name, inputs=Inputs, outputs=Outputs, config=Config, loader="x:y",
                        description=f"{name} from {__name__}")

SPEC = spec("@NAME@")
def hook():
    return [spec("@NAME@_a"), spec("@NAME@_b")]
NOT_A_SPEC = {"name": "@NAME@"}
"""


def spec_module(name: str) -> str:
    return SPEC_MODULE.replace("@NAME@", name)


class Site:
    """A site-packages of its own, on ``sys.path`` for one test."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def install(self, dist: str, module: str, entries: dict[str, str], source: str) -> None:
        (self.root / f"{module}.py").write_text(source)
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.cache_clear()
    yield Site(tmp_path)
    registry.cache_clear()


def builtins_still_work() -> None:
    pipelines = catalog(["transcribe", "inpaint"])
    assert pipelines.names == ["inpaint", "transcribe"]
    spec = pipelines.get("inpaint")
    assert spec is not None and spec.inputs.__module__.startswith("pipelines.inpaint")


def test_the_example_plugin_is_found_through_its_installed_entry_point(site: Site) -> None:
    found = registry()  # no PLUGINS setting: only the installed distribution's entry point
    assert found.origins["automaton"] == AUTOMATON_DIST
    assert found.origins["transcribe"] == "built-in"
    assert "automaton" in found.plugins() and "transcribe" not in found.plugins()
    assert not found.broken


def test_a_plugin_that_fails_to_import_is_reported_and_the_rest_load(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    site.install("acme-broken", "acme_broken", {"broken": "acme_broken:SPEC"}, "import acme_missing_dep\n")
    site.install("acme-good", "acme_good", {"good": "acme_good:SPEC"}, spec_module("good"))
    found = registry()
    assert [(b.distribution, b.entry) for b in found.broken] == [("acme-broken", "broken = acme_broken:SPEC")]
    assert "ModuleNotFoundError" in found.broken[0].error and "acme_missing_dep" in found.broken[0].error
    assert {"good", "automaton", "transcribe"} <= set(found.specs)
    builtins_still_work()

    monkeypatch.setenv("ENABLED_PIPELINES", "transcribe")
    assert cli.main(["--env-file", "/dev/null", "pipelines"]) == 1  # a broken plugin fails the listing
    out = capsys.readouterr().out
    assert "BROKEN plugin acme-broken (broken = acme_broken:SPEC): ModuleNotFoundError" in out
    assert "good " in out and "[plugin: acme-good]" in out and "transcribe   enabled" in out


def test_two_plugins_with_one_name_load_neither_and_name_both(site: Site) -> None:
    site.install("acme-one", "acme_one", {"twin": "acme_one:SPEC"}, spec_module("twin"))
    site.install("acme-two", "acme_two", {"twin": "acme_two:SPEC"}, spec_module("twin"))
    found = registry()
    assert "twin" not in found.specs
    assert sorted(b.distribution for b in found.broken) == ["acme-one", "acme-two"]
    for broken in found.broken:
        assert "'twin' is declared by both acme-one and acme-two; neither is loaded" in broken.error
    builtins_still_work()
    assert catalog(["twin", "transcribe"]).names == ["transcribe"]


def test_a_plugin_cannot_shadow_a_builtin(site: Site) -> None:
    site.install("acme-shadow", "acme_shadow", {"transcribe": "acme_shadow:SPEC"}, spec_module("transcribe"))
    found = registry()
    assert found.specs["transcribe"].loader.startswith("pipelines.transcribe")
    assert [b.distribution for b in found.broken] == ["acme-shadow"]
    assert "'transcribe' is a built-in; a plugin cannot replace it" in found.broken[0].error
    builtins_still_work()


def test_a_hook_registers_several_pipelines(site: Site) -> None:
    site.install("acme-multi", "acme_multi", {"multi": "acme_multi:hook"}, spec_module("multi"))
    found = registry()
    assert found.origins["multi_a"] == found.origins["multi_b"] == "acme-multi"


def test_an_entry_point_that_is_not_a_spec_is_reported(site: Site) -> None:
    site.install("acme-odd", "acme_odd", {"odd": "acme_odd:NOT_A_SPEC"}, spec_module("odd"))
    found = registry()
    assert "odd" not in found.specs
    assert found.broken[0].distribution == "acme-odd"
    assert "gave a dict, not a PipelineSpec" in found.broken[0].error


def test_a_broken_plugin_named_in_the_plugins_setting_is_reported_too(site: Site) -> None:
    found = registry(("acme_nowhere:SPEC",))
    assert [(b.distribution, b.entry) for b in found.broken] == [("PLUGINS", "acme_nowhere:SPEC")]
    builtins_still_work()


def test_the_gpu_service_reports_broken_plugins_in_its_health_and_serves_the_rest(site: Site) -> None:
    site.install("acme-broken", "acme_broken", {"broken": "acme_broken:SPEC"}, "raise RuntimeError('boom')\n")
    settings = Settings(
        enabled_pipelines=["inpaint"],
        pubsub_emulator_host=None,
        firestore_emulator_host=None,
        push_auth="off",
        redrive=False,
    )

    class Worker:  # what create_app reads from a Worker
        def __init__(self, pipelines: Catalog) -> None:
            self.settings = settings
            self.catalog = pipelines
            self.pool = ModelPool(pipelines)
            self.draining = threading.Event()

    worker = Worker(catalog(settings.enabled_pipelines))
    with TestClient(create_app(worker)) as client:  # type: ignore[arg-type]
        for _ in range(100):
            health = client.get("/healthz")
            if health.json()["status"] != "starting":
                break
            threading.Event().wait(0.05)
    body = health.json()
    assert health.status_code == 200 and body["pipelines"] == {"inpaint": "ready"}
    assert body["broken_plugins"] == [
        {"entry": "broken = acme_broken:SPEC", "distribution": "acme-broken", "error": "RuntimeError: boom"}
    ]


# --- what a plugin declares for its route ----------------------------------------------------


def test_a_plugin_declares_its_route_in_its_spec(site: Site) -> None:
    assert plugin_topology(["automaton", "transcribe"]) == {
        "automaton": {
            "mode": "push",
            "ack_deadline_seconds": 300,
            "retry_policy": {"minimum_backoff_seconds": 5, "maximum_backoff_seconds": 60},
        }
    }
    assert plugin_topology(["transcribe"]) == {}  # only enabled plugins join the stack's topology


def test_a_plugin_topology_entry_passes_the_same_checks_as_the_file() -> None:
    topology = load_topology().with_plugins(plugin_topology(["automaton"]))
    sub = topology.subscription("automaton")
    assert (sub.mode, sub.ack_deadline_seconds, sub.retry_policy.maximum_backoff_seconds) == ("push", 300, 60)
    assert sub.dead_letter.topic == "jobs-dead-letter"  # the rest from pipeline_defaults
    assert ("automaton", None) in topology.routes()
    with pytest.raises(ValidationError, match="ack_deadline_seconds"):
        load_topology().with_plugins({"odd": {"ack_deadline_seconds": 5}})
    with pytest.raises(ValidationError, match="part"):
        load_topology().with_plugins({"odd": {"parts": ["Bad-Name"]}})
    # The file's own entry wins over a plugin's (as Terraform's merge does).
    assert load_topology().with_plugins({"video": {}}).subscription("video").parts == ["speech", "screen"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ack_deadline_seconds": 601}, "less than or equal to 600"),
        ({"mode": "stream"}, "'push' or 'pull'"),
        ({"message_retention_seconds": 60}, "greater than or equal to 600"),
        ({"retry_policy": {"minimum_backoff_seconds": 9, "maximum_backoff_seconds": 1}}, "must not exceed"),
        ({"dead_letter": {"topic": "x"}}, "Extra inputs are not permitted"),
    ],
)
def test_a_spec_with_an_impossible_route_fails_when_it_is_imported(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Delivery.model_validate(values)


def test_tfvars_carry_every_installed_plugin_with_whether_it_needs_a_model(site: Site) -> None:
    assert registry().tfvars() == {
        "automaton": {
            "mode": "push",
            "ack_deadline_seconds": 300,
            "retry_policy": {"minimum_backoff_seconds": 5, "maximum_backoff_seconds": 60},
            "needs_model": False,
        }
    }


def test_a_multipart_plugin_declares_its_parts() -> None:
    spec = reg.registry().specs["transcribe"]
    parted = PipelineSpec(
        name="parted",
        inputs=spec.inputs,
        outputs=spec.outputs,
        config=spec.config,
        loader="x:y",
        parts=("one", "two"),
        join="x:z",
        delivery=Delivery(retry_policy=Backoff(minimum_backoff_seconds=1, maximum_backoff_seconds=2)),
    )
    assert parted.topology_entry() == {
        "retry_policy": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 2},
        "parts": ["one", "two"],
    }


def test_the_image_check_prints_plugin_pipelines_and_fails_on_a_broken_plugin(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    assert reg.main() == 0  # what Cloud Build runs in the built image
    assert json.loads(capsys.readouterr().out) == {"plugin_pipelines": registry().tfvars()}
    site.install("acme-broken", "acme_broken", {"broken": "acme_broken:SPEC"}, "import acme_missing_dep\n")
    registry.cache_clear()
    assert reg.main() == 1
    captured = capsys.readouterr()
    assert "broken plugin acme-broken (broken = acme_broken:SPEC): ModuleNotFoundError" in captured.err
    assert "automaton" in json.loads(captured.out)["plugin_pipelines"]


def test_the_documented_example_plugin_installs_and_declares_its_route(site: Site) -> None:
    readme = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    section = readme.split("# Writing a plugin", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    entry = toml.split('[project.entry-points."gpu_jobs.pipelines"]\n', 1)[1].split("#")[0].strip()
    name, _, target = (part.strip() for part in entry.partition("="))
    (site.root / "acme_upscale").mkdir()
    site.install("acme-upscale", "acme_upscale/__init__", {name: target.strip('"')}, source)
    found = registry()
    assert not found.broken and found.origins["upscale"] == "acme-upscale"
    assert found.tfvars()["upscale"] == {
        "ack_deadline_seconds": 300,
        "retry_policy": {"minimum_backoff_seconds": 5, "maximum_backoff_seconds": 60},
        "needs_model": True,
    }


PULL_PLUGIN = """
from pydantic import BaseModel
from core.spec import Delivery, PipelineModel, PipelineSpec

class Inputs(PipelineModel):
    n: int = 1

def specs():
    return PipelineSpec(name="longrun", inputs=Inputs, outputs=BaseModel, config=BaseModel, loader="x:y",
                        parts=("a", "b"), join="x:z", delivery=Delivery(mode="pull"))

def impossible():
    return PipelineSpec(name="nope", inputs=Inputs, outputs=BaseModel, config=BaseModel, loader="x:y",
                        delivery=Delivery(ack_deadline_seconds=5))
"""


def test_the_gpu_service_pulls_what_an_enabled_plugin_declares_as_pull(site: Site) -> None:
    from gpu_service.__main__ import pull_routes

    site.install("acme-long", "acme_long", {"longrun": "acme_long:specs"}, PULL_PLUGIN)
    enabled = Settings(enabled_pipelines=["transcribe", "longrun"], topology_file=None)
    assert pull_routes(enabled) == [("longrun", None), ("longrun", "a"), ("longrun", "b")]
    assert pull_routes(Settings(enabled_pipelines=["transcribe"], topology_file=None)) == []


def test_a_plugin_whose_spec_breaks_a_pubsub_limit_is_reported(site: Site) -> None:
    site.install("acme-nope", "acme_nope", {"nope": "acme_nope:impossible"}, PULL_PLUGIN)
    found = registry()
    assert "nope" not in found.specs and found.broken[0].distribution == "acme-nope"
    assert "ValidationError" in found.broken[0].error and "ack_deadline_seconds" in found.broken[0].error
    builtins_still_work()


UNCHECKED_PLUGIN = """
from pydantic import BaseModel
from core.spec import Delivery, PipelineModel, PipelineSpec

class Inputs(PipelineModel):
    n: int = 1

def spec(name, delivery):
    return PipelineSpec(name=name, inputs=Inputs, outputs=BaseModel, config=BaseModel, loader="x:y",
                        delivery=delivery)

UNCHECKED = spec("unchecked", Delivery.model_construct(ack_deadline_seconds=5))
PLAIN = spec("plain", {"mode": "pull"})
"""


def test_every_built_in_pipeline_keeps_its_spec_in_spec_py_and_its_package_names_it() -> None:
    import importlib

    for name, path in reg.BUILTIN.items():
        package = path.partition(":")[0]
        spec_module = importlib.import_module(f"{package}.spec")
        assert importlib.import_module(package).SPEC is spec_module.SPEC, name
        assert spec_module.SPEC.name == name
        assert spec_module.SPEC.config.__module__ == spec_module.__name__, name


def test_a_plugin_route_built_without_validation_is_still_held_to_pubsub_limits(site: Site) -> None:
    entries = {"unchecked": "acme_raw:UNCHECKED", "plain": "acme_raw:PLAIN"}
    site.install("acme-raw", "acme_raw", entries, UNCHECKED_PLUGIN)
    found = registry()
    assert "unchecked" not in found.specs and "plain" not in found.specs
    errors = {b.entry.split(" = ")[0]: b.error for b in found.broken}
    assert "ValidationError" in errors["unchecked"] and "ack_deadline_seconds" in errors["unchecked"]
    assert "greater than or equal to 10" in errors["unchecked"]
    assert errors["plain"] == "TypeError: pipeline plain: delivery is a dict, not a Delivery"
    assert reg.main() == 1  # the image check fails instead of handing Terraform an impossible route
    builtins_still_work()


def test_one_distribution_declaring_a_name_twice_is_told_which_entries_clash(site: Site) -> None:
    source = spec_module("twin") + "OTHER = spec('twin')\n"
    site.install("acme-twice", "acme_twice", {"one": "acme_twice:SPEC", "two": "acme_twice:OTHER"}, source)
    found = registry()
    assert "twin" not in found.specs and len(found.broken) == 2
    assert (
        "'twin' is declared by both acme-twice (one = acme_twice:SPEC) and acme-twice "
        "(two = acme_twice:OTHER); neither is loaded"
    ) in found.broken[0].error
