"""Offline checks of the deployment code: terraform/, the Dockerfiles and cloudbuild.yaml.

The google provider cannot be downloaded here, so `terraform validate` runs in Cloud Build only.
What runs here:

* `terraform fmt -check`;
* ``terraform/modules/topology`` has no provider, so it is planned for real against
  infra/topology.yaml (its derived names must match what this file derives) and against broken
  copies (which its validations must reject);
* a small HCL scanner checks module interfaces (inputs, outputs, ``var.`` references) the way
  ``terraform validate`` would, and that no topology name is hard-coded in any ``*.tf``;
* the per-pipeline subscription settings are checked against Pub/Sub limits in pure Python.

Terraform-backed tests skip, with the reason, when ``terraform`` is not on PATH.
"""

from __future__ import annotations

import atexit
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from core.routes import DEAD_LETTER_TOPIC, TOPIC_PREFIX, route
from tools import tfcheck

# Most of these run terraform itself (init, plan, apply on mirrors): they run in `make test`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
TOPOLOGY_PATH = ROOT / "infra" / "topology.yaml"
TOPOLOGY_MODULE = TF / "modules" / "topology"
YAMLDECODE = 'yamldecode(file("${path.module}/../infra/topology.yaml"))'

# Route names come from the one function the Python side uses (core/routes.py); Terraform's
# module.topology must derive the same ones.

TERRAFORM = shutil.which("terraform")
NO_TERRAFORM = "terraform is not on PATH"
# Cloud Build sets this: there a missing tool is a broken build, not a reason to skip.
REQUIRE_TOOLS = os.environ.get("GPU_JOBS_REQUIRE_TOOLS") == "1"
needs_terraform = pytest.mark.skipif(TERRAFORM is None and not REQUIRE_TOOLS, reason=NO_TERRAFORM)


def skip_without_terraform() -> None:
    if TERRAFORM is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"{NO_TERRAFORM}, and GPU_JOBS_REQUIRE_TOOLS=1 says it must be")
        pytest.skip(NO_TERRAFORM)


def test_terraform_is_installed_where_required() -> None:
    if REQUIRE_TOOLS:
        assert TERRAFORM, f"{NO_TERRAFORM}, and GPU_JOBS_REQUIRE_TOOLS=1 says it must be"


def load_topology() -> dict[str, Any]:
    data = yaml.safe_load(TOPOLOGY_PATH.read_text())
    assert isinstance(data, dict)
    return data


# --------------------------------------------------------------------------------------------
# Pub/Sub limits on a pipeline's merged settings: checked by infra/topology.py's Subscription, whose
# bounds are core.pubsub's (test_pubsub_limits.py holds modules/topology's validations to them).
# --------------------------------------------------------------------------------------------


def merge_pipeline(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A pipeline's effective settings, merged shallowly as in modules/topology and infra/topology.py:
    an override's retry_policy or dead_letter replaces the default one whole."""
    merged = {**defaults, **{k: v for k, v in override.items() if v is not None}}
    merged.setdefault("mode", "push")
    merged.setdefault("message_retention_seconds", 86400)  # the defaults of infra/topology.py
    merged.setdefault("parts", [])
    return merged


def subscription_limit_errors(settings: dict[str, Any]) -> list[str]:
    """Every way a pipeline's merged subscription settings break a Pub/Sub limit (empty if none)."""
    from infra.topology import Subscription

    fields = {k: v for k, v in settings.items() if k in Subscription.model_fields}
    try:
        Subscription.model_validate(fields)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def effective_pipelines(topology: dict[str, Any]) -> dict[str, dict[str, Any]]:
    defaults = topology["pipeline_defaults"]
    return {name: merge_pipeline(defaults, p or {}) for name, p in (topology.get("pipelines") or {}).items()}


def routes(topology: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every route by name (a pipeline's own, and one per part of a multi-part pipeline): its
    pipeline, part (None for the pipeline's own), topic, subscription, push path and settings."""
    found = {}
    for name, settings in effective_pipelines(topology).items():
        found[name] = {
            "pipeline": name,
            "part": None,
            "topic": route(name).topic,
            "subscription": route(name).subscription,
            "push_path": route(name).push_path,
            "settings": settings,
        }
        for part in settings["parts"]:
            names = route(name, part)
            found[names.key] = {
                "pipeline": name,
                "part": part,
                "topic": names.topic,
                "subscription": names.subscription,
                "push_path": names.push_path,
                "settings": settings,
            }
    return found


def multipart_pipeline(topology: dict[str, Any]) -> str:
    """The first pipeline of topology.yaml with parts (the part tests need one)."""
    name = next((n for n, s in effective_pipelines(topology).items() if s["parts"]), None)
    assert name, "topology.yaml declares no pipeline with parts"
    return name


def test_routes_match_infra_topology() -> None:
    from infra.topology import load_topology as load_model

    model = load_model(TOPOLOGY_PATH)
    assert set(routes(load_topology())) == {route(p, part).key for p, part in model.routes()}
    assert {(r["pipeline"], r["part"]) for r in routes(load_topology()).values()} == set(model.routes())


def test_every_pipeline_subscription_is_within_pubsub_limits() -> None:
    topology = load_topology()
    pipelines = effective_pipelines(topology)
    assert pipelines, "topology.yaml declares no pipelines"
    problems = {name: subscription_limit_errors(s) for name, s in pipelines.items()}
    assert not any(problems.values()), problems
    declared = set(topology.get("topics") or {})
    for name, s in pipelines.items():
        if s.get("dead_letter"):
            assert s["dead_letter"]["topic"] in declared, f"{name}: dead-letter topic is not under topics"


GOOD = {
    "mode": "push",
    "ack_deadline_seconds": 600,
    "message_retention_seconds": 86400,
    "retry_policy": {"minimum_backoff_seconds": 10, "maximum_backoff_seconds": 300},
    "dead_letter": {"topic": "dlq", "max_delivery_attempts": 5},
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ack_deadline_seconds": 9}, "ack_deadline_seconds"),
        ({"ack_deadline_seconds": 601}, "ack_deadline_seconds"),
        ({"mode": "stream"}, "mode"),
        ({"message_retention_seconds": 599}, "message_retention_seconds"),
        (
            {"retry_policy": {"minimum_backoff_seconds": 400, "maximum_backoff_seconds": 300}},
            "minimum_backoff",
        ),
        (
            {"retry_policy": {"minimum_backoff_seconds": 10, "maximum_backoff_seconds": 601}},
            "maximum_backoff",
        ),
        (
            {"retry_policy": {"minimum_backoff_seconds": -1, "maximum_backoff_seconds": 300}},
            "minimum_backoff",
        ),
        ({"dead_letter": {"topic": "dlq", "max_delivery_attempts": 4}}, "max_delivery_attempts"),
        ({"dead_letter": {"topic": "dlq", "max_delivery_attempts": 101}}, "max_delivery_attempts"),
        ({"dead_letter": {"max_delivery_attempts": 5}}, "dead_letter.topic"),
    ],
)
def test_limit_check_rejects(change: dict[str, Any], expected: str) -> None:
    assert subscription_limit_errors(GOOD) == []
    errors = subscription_limit_errors({**GOOD, **change})
    assert any(expected in e for e in errors), errors


def test_merge_is_shallow_like_infra_topology() -> None:
    from infra.topology import Topology

    defaults = {
        "ack_deadline_seconds": 600,
        "retry_policy": {"minimum_backoff_seconds": 10, "maximum_backoff_seconds": 300},
        "dead_letter": {"topic": "dlq", "max_delivery_attempts": 5},
    }
    override = {"retry_policy": {"minimum_backoff_seconds": 1, "maximum_backoff_seconds": 20}, "mode": "pull"}
    merged = merge_pipeline(defaults, override)
    assert merged["retry_policy"] == override["retry_policy"]
    assert merged["ack_deadline_seconds"] == 600 and merged["mode"] == "pull"
    topology = Topology.model_validate(
        {
            "buckets": {},
            "firestore": {"jobs_collection": "jobs"},
            "topics": {"dlq": {}},
            "functions": {},
            "pipeline_defaults": defaults,
            "pipelines": {"p": override},
        }
    )
    python = topology.subscription("p").model_dump()
    assert {k: merged[k] for k in python if k in merged} == {k: python[k] for k in python if k in merged}


# --------------------------------------------------------------------------------------------
# topology.yaml keys must be ones Terraform reads: its typed variable silently drops the others.
# Keep in step with `variable "topology"` in terraform/modules/topology/variables.tf.
# --------------------------------------------------------------------------------------------

PIPELINE_KEYS = {
    "mode": None,
    "ack_deadline_seconds": None,
    "message_retention_seconds": None,
    "parts": None,
    "retry_policy": {"minimum_backoff_seconds": None, "maximum_backoff_seconds": None},
    "dead_letter": {"topic": None, "max_delivery_attempts": None},
}
SCHEMA: dict[str, Any] = {
    "buckets": {"*": {"notification": {"topic": None, "event_types": None, "object_prefix": None}}},
    "firestore": {"database": None, "jobs_collection": None},
    "topics": {"*": {"message_retention_seconds": None}},
    "functions": {
        "*": {
            "target": None,
            "trigger": {"pubsub_topic": None, "firestore": {"event_type": None, "document": None}},
        }
    },
    "pipeline_defaults": PIPELINE_KEYS,
    "pipelines": {"*": PIPELINE_KEYS},
    "schedules": {"*": {"schedule": None, "topic": None}},
}


def test_schema_covers_every_field_of_infra_topology() -> None:
    """What the Python model accepts, Terraform must read (and the other way round)."""
    from infra import topology as t

    pairs = [
        (t.Notification, SCHEMA["buckets"]["*"]["notification"]),
        (t.Bucket, SCHEMA["buckets"]["*"]),
        (t.Function, SCHEMA["functions"]["*"]),
        (t.Trigger, SCHEMA["functions"]["*"]["trigger"]),
        (t.FirestoreTrigger, SCHEMA["functions"]["*"]["trigger"]["firestore"]),
        (t.Subscription, PIPELINE_KEYS),
        (t.Backoff, PIPELINE_KEYS["retry_policy"]),
        (t.DeadLetter, PIPELINE_KEYS["dead_letter"]),
        (t.Schedule, SCHEMA["schedules"]["*"]),
    ]
    for model, keys in pairs:
        assert set(model.model_fields) == set(keys), model.__name__
    assert set(t.Topology.model_fields) == set(SCHEMA)


def unknown_keys(value: Any, schema: Any, path: str = "") -> Iterator[str]:
    if schema is None or not isinstance(value, dict):
        return
    for key, sub in value.items():
        if "*" in schema:
            yield from unknown_keys(sub, schema["*"], f"{path}.{key}")
        elif key not in schema:
            yield f"{path}.{key}".lstrip(".")
        else:
            yield from unknown_keys(sub, schema[key], f"{path}.{key}")


def test_topology_uses_only_keys_terraform_reads() -> None:
    unknown = list(unknown_keys(load_topology(), SCHEMA))
    assert not unknown, f"Terraform would silently ignore {unknown}: add them to modules/topology"


def test_unknown_key_detection_works() -> None:
    bad = {"pipelines": {"x": {"ack_deadline_second": 60}}, "extra": 1}
    assert sorted(unknown_keys(bad, SCHEMA)) == ["extra", "pipelines.x.ack_deadline_second"]


# --------------------------------------------------------------------------------------------
# HCL, read with python-hcl2's grammar (tools/tfcheck.py): bodies keep arguments (with their
# expressions' source) apart from blocks; comments and string literals come from its lexer.
# --------------------------------------------------------------------------------------------

tf_files = tfcheck.tf_files
strip_comments = tfcheck.strip_comments
string_literals = tfcheck.string_literals


def blocks(text: str, kind: str) -> Iterator[tuple[list[str], tfcheck.Body]]:
    """(labels, body) of each top-level block of one kind, e.g. ("module", ...)."""
    for block_type, labels, body in tfcheck.parse_hcl(text).blocks:
        if block_type == kind:
            yield labels, body


def declared_variables(module_dir: Path) -> dict[str, tfcheck.Body]:
    """Variable name -> body, for one module directory."""
    return {
        labels[0]: body for f in module_dir.glob("*.tf") for labels, body in blocks(f.read_text(), "variable")
    }


def declared_outputs(module_dir: Path) -> set[str]:
    return {labels[0] for f in module_dir.glob("*.tf") for labels, _ in blocks(f.read_text(), "output")}


def module_calls() -> dict[str, tuple[Path, list[str]]]:
    calls = {}
    for f in TF.glob("*.tf"):
        for labels, body in blocks(f.read_text(), "module"):
            source = re.fullmatch(r'"([^"$]+)"', body.attributes.get("source", ""))
            assert source, f"module {labels[0]} has no literal source"
            calls[labels[0]] = ((TF / source.group(1)).resolve(), list(body.attributes))
    return calls


MODULE_DIRS = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())


def test_hcl_reader_reads_blocks_strings_and_heredocs() -> None:
    text = 'variable "a" {\n  description = <<-EOT\n    x "q" y\n  EOT\n  type = map(object({ b = string }))\n}\n# c "d"\n'
    ((labels, body),) = list(blocks(text, "variable"))
    assert labels == ["a"]
    assert list(body.attributes) == ["description", "type"]
    assert body.attributes["type"] == "map(object({ b = string }))"
    assert 'x "q" y' in string_literals(text)[1]
    assert "d" not in string_literals(text)
    assert strip_comments('a = "#x" # y\n/* z */ b = 1 // w\n') == 'a = "#x" \n b = 1 \n'


# --------------------------------------------------------------------------------------------
# Terraform layout and wiring
# --------------------------------------------------------------------------------------------


@needs_terraform
def test_terraform_is_formatted() -> None:
    result = subprocess.run(
        [str(TERRAFORM), "fmt", "-check", "-recursive", "-diff", "-no-color", str(TF)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"run `terraform fmt -recursive terraform`:\n{result.stdout}{result.stderr}"
    )


def test_root_reads_topology_with_yamldecode() -> None:
    main = strip_comments((TF / "main.tf").read_text())
    assert YAMLDECODE in main
    calls = module_calls()
    assert calls["topology"][0] == TOPOLOGY_MODULE


@pytest.mark.parametrize(
    "reference",
    [
        "module.topology.buckets",
        "module.topology.topics",
        "module.topology.subscriptions",
        "module.topology.functions",
        "module.topology.notifications",
        "module.topology.schedules",
        "module.topology.firestore",
        "module.topology.pipelines",
    ],
)
def test_root_builds_resources_from_the_topology(reference: str) -> None:
    assert reference in strip_comments((TF / "main.tf").read_text())


def topology_names(topology: dict[str, Any]) -> set[str]:
    """Every name or value that topology.yaml owns and Terraform must therefore not repeat."""
    pipelines = effective_pipelines(topology)
    functions = topology.get("functions") or {}
    names = {*(topology.get("topics") or {}), *(topology.get("buckets") or {}), *functions, *pipelines}
    all_routes = routes(topology)
    names |= set(all_routes) | {r["part"] for r in all_routes.values() if r["part"]}
    names |= {r["topic"] for r in all_routes.values()} | {r["subscription"] for r in all_routes.values()}
    names |= {r["push_path"] for r in all_routes.values()}
    names |= {f["target"] for f in functions.values()}
    names |= {
        f["trigger"]["firestore"]["document"] for f in functions.values() if "firestore" in f["trigger"]
    }
    names |= {
        b["notification"]["object_prefix"]
        for b in (topology.get("buckets") or {}).values()
        if b.get("notification")
    }
    names |= {s["dead_letter"]["topic"] for s in pipelines.values() if s.get("dead_letter")}
    names.add(topology["firestore"]["jobs_collection"])
    return {n for n in names if n}


def hard_coded(names: set[str], text: str) -> list[str]:
    """Topology names written as HCL string literals in `text`.

    Compound ids (jobs-dead-letter, on_job_created, jobs/{jobId}) may not appear inside any
    literal; short words (media, jobs, transcribe) only count as a whole literal.
    """
    compound = {n for n in names if re.search(r"[-_/{]", n)}
    hits = []
    for literal in string_literals(text):
        hits += [f"{n!r} in {literal!r}" for n in sorted(names) if literal == n]
        hits += [f"{n!r} in {literal!r}" for n in sorted(compound) if n in literal and literal != n]
    return hits


def test_no_topology_name_is_hard_coded_in_terraform() -> None:
    names = topology_names(load_topology())
    found = [f"{f.relative_to(ROOT)}: {hit}" for f in tf_files() for hit in hard_coded(names, f.read_text())]
    assert not found, "read these from module.topology instead:\n" + "\n".join(found)


def test_hard_coded_name_detection_works() -> None:
    names = {"jobs-dead-letter", "media", "jobs/{jobId}"}
    assert hard_coded(names, 'a = "jobs-dead-letter"') == ["'jobs-dead-letter' in 'jobs-dead-letter'"]
    assert hard_coded(names, 'a = "projects/p/topics/jobs-dead-letter"')
    assert hard_coded(names, "a = <<-EOT\n  match jobs/{jobId}\n  EOT\n")
    assert hard_coded(names, 'b = "media"')
    assert hard_coded(names, 'b = "${var.project}-media"') == []
    assert hard_coded(names, '# "jobs-dead-letter"\nc = 1 // "media"\n') == []
    assert hard_coded(names, 'd = local.t.topics["x"] /* "media" */') == []


@pytest.mark.parametrize("module_dir", MODULE_DIRS, ids=lambda p: p.name)
def test_module_has_fabric_layout(module_dir: Path) -> None:
    for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
        assert (module_dir / name).is_file(), f"{module_dir.name} lacks {name}"
    names = [labels[0] for labels, _ in blocks((module_dir / "variables.tf").read_text(), "variable")]
    assert names == sorted(names), f"{module_dir.name}: variables are not alphabetical"
    for name, body in declared_variables(module_dir).items():
        assert {"description", "type"} <= set(body.attributes), (
            f"{module_dir.name}: variable {name} needs description and type"
        )


@pytest.mark.parametrize("module_dir", [TF, *MODULE_DIRS], ids=lambda p: p.name)
def test_variables_are_declared_where_used(module_dir: Path) -> None:
    declared = declared_variables(module_dir)
    used = {
        ref
        for f in module_dir.glob("*.tf")
        for ref in re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", strip_comments(f.read_text()))
    }
    assert used <= set(declared), f"undeclared: {sorted(used - set(declared))}"


def test_root_variables_are_alphabetical_and_typed() -> None:
    names = [labels[0] for labels, _ in blocks((TF / "variables.tf").read_text(), "variable")]
    assert names == sorted(names)
    for name, body in declared_variables(TF).items():
        assert {"description", "type"} <= set(body.attributes), name


def test_module_calls_match_module_interfaces() -> None:
    problems = []
    calls = module_calls()
    for name, (module_dir, attributes) in calls.items():
        variables = declared_variables(module_dir)
        meta = {"source", "version", "providers", "depends_on", "count", "for_each"}
        problems += [
            f"module.{name}: no variable {a!r}" for a in attributes if a not in meta | set(variables)
        ]
        problems += [
            f"module.{name}: required variable {v!r} not passed"
            for v, body in variables.items()
            if "default" not in body.attributes and v not in attributes
        ]
    for f in TF.glob("*.tf"):
        for module, output in re.findall(
            r"\bmodule\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)", strip_comments(f.read_text())
        ):
            if module not in calls:
                problems.append(f"{f.name}: no module {module!r}")
            elif output not in declared_outputs(calls[module][0]):
                problems.append(f"{f.name}: module.{module} has no output {output!r}")
    assert not problems, "\n".join(problems)


def test_providers_are_pinned() -> None:
    for f in [TF / "versions.tf", *(d / "versions.tf" for d in MODULE_DIRS)]:
        text = f.read_text()
        assert "required_version" in text, f
        for version in re.findall(r'^\s*version\s*=\s*"([^"]+)"', text, re.M):
            assert re.search(r">=\s*6\.\d+", version) and "< 8" in version, f"{f}: {version}"


def test_gpu_service_settings() -> None:
    text = strip_comments((TF / "modules" / "gpu-service" / "main.tf").read_text())
    for pattern in (
        r'"nvidia\.com/gpu"\s*=\s*"1"',
        r"node_selector\s*\{\s*accelerator\s*=\s*var\.config\.accelerator",
        r"gpu_zonal_redundancy_disabled\s*=",
        r"max_instance_request_concurrency\s*=\s*var\.config\.concurrency",
        r"startup_probe\s*\{",
        r"cpu_idle\s*=\s*false",
        r'timeout\s*=\s*"\$\{var\.config\.timeout_seconds\}s"',
    ):
        assert re.search(pattern, text), pattern
    variables = (TF / "modules" / "gpu-service" / "variables.tf").read_text()
    assert re.search(r"concurrency\s*=\s*optional\(number, 1\)", variables)
    assert re.search(r'accelerator\s*=\s*optional\(string, "nvidia-l4"\)', variables)
    assert re.search(r'path\s*=\s*optional\(string, "/healthz"\)', variables)


# --------------------------------------------------------------------------------------------
# modules/topology planned for real (no provider needed)
# --------------------------------------------------------------------------------------------

HARNESS = """
variable "path" {
  type = string
}

module "topology" {
  source   = "%s"
  topology = yamldecode(file(var.path))
}

output "t" {
  value = module.topology
}
"""


def _terraform(workdir: Path, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", "TF_INPUT": "0"}
    return subprocess.run(
        [str(TERRAFORM), f"-chdir={workdir}", command, "-no-color", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    skip_without_terraform()
    workdir = tmp_path_factory.mktemp("tf-topology")
    (workdir / "main.tf").write_text(HARNESS % TOPOLOGY_MODULE.as_posix())
    result = _terraform(workdir, "init", "-backend=false")
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


@pytest.fixture(scope="module")
def derived(harness: Path) -> dict[str, Any]:
    result = _terraform(harness, "apply", "-auto-approve", f"-var=path={TOPOLOGY_PATH}")
    assert result.returncode == 0, result.stdout + result.stderr
    out = _terraform(harness, "output", "-json", "t")
    assert out.returncode == 0, out.stderr
    value = json.loads(out.stdout)
    assert isinstance(value, dict)
    return value


def test_terraform_derives_every_topic(derived: dict[str, Any]) -> None:
    topology = load_topology()
    expected = set(topology.get("topics") or {}) | {r["topic"] for r in routes(topology).values()}
    assert set(derived["topics"]) == expected
    video = multipart_pipeline(topology)
    for part in effective_pipelines(topology)[video]["parts"]:
        assert route(video, part).topic in derived["topics"]


def test_terraform_names_routes_exactly_as_core_routes_does(derived: dict[str, Any]) -> None:
    assert derived["pipeline_topic_prefix"] == TOPIC_PREFIX
    assert derived["dead_letter_topics"] == [DEAD_LETTER_TOPIC]
    for name, sub in derived["subscriptions"].items():
        names = route(sub["pipeline"], sub["part"])
        assert (name, sub["topic"], sub["push_path"]) == (names.subscription, names.topic, names.push_path)


def test_terraform_derives_every_subscription_with_merged_settings(derived: dict[str, Any]) -> None:
    expected = {r["subscription"]: r for r in routes(load_topology()).values()}
    assert set(derived["subscriptions"]) == set(expected)
    for name, sub in derived["subscriptions"].items():
        expected_route = expected[name]
        want = expected_route["settings"]
        assert sub["ack_deadline_seconds"] == want["ack_deadline_seconds"], name
        assert sub["mode"] == want["mode"], name
        assert sub["message_retention_seconds"] == want["message_retention_seconds"], name
        assert sub["retry_policy"] == want.get("retry_policy"), name
        assert sub["dead_letter"] == want.get("dead_letter"), name
        assert sub["pipeline"] == expected_route["pipeline"] and sub["part"] == expected_route["part"], name
        assert sub["topic"] == expected_route["topic"], name
        assert sub["push_path"] == expected_route["push_path"], name
        assert subscription_limit_errors(sub) == [], name


def test_terraform_derives_part_routes_with_the_pipeline_settings(derived: dict[str, Any]) -> None:
    topology = load_topology()
    video = multipart_pipeline(topology)
    parts = effective_pipelines(topology)[video]["parts"]
    assert derived["pipelines"][video]["parts"] == parts
    assert set(derived["pipelines"]) == set(topology["pipelines"])  # parts are not pipelines
    own = derived["subscriptions"][route(video).subscription]
    policies = ("ack_deadline_seconds", "mode", "message_retention_seconds", "retry_policy", "dead_letter")
    paths = set()
    for part in parts:
        sub = derived["subscriptions"][route(video, part).subscription]
        assert sub["topic"] == route(video, part).topic
        assert {k: sub[k] for k in policies} == {k: own[k] for k in policies}
        assert sub["dead_letter"] is not None  # the Pub/Sub agent's DLQ grants follow dead_letter
        paths.add(sub["push_path"])
    assert paths == {route(video, part).push_path for part in parts}
    if video == "video":  # the real topology.yaml, spelled out
        assert paths == {"/push/video/speech", "/push/video/screen"}


def test_terraform_derives_every_function_and_trigger(derived: dict[str, Any]) -> None:
    functions = load_topology().get("functions") or {}
    assert set(derived["functions"]) == set(functions)
    for name, f in functions.items():
        got = derived["functions"][name]
        assert got["target"] == f["target"]
        trigger = f["trigger"]
        if "pubsub_topic" in trigger:
            assert got["trigger"]["kind"] == "pubsub"
            assert got["trigger"]["topic"] == trigger["pubsub_topic"]
            assert got["trigger"]["topic"] in derived["topics"]
        else:
            assert got["trigger"]["kind"] == "firestore"
            assert got["trigger"]["event_type"] == trigger["firestore"]["event_type"]
            assert got["trigger"]["document"] == trigger["firestore"]["document"]
            assert got["trigger"]["database"] == load_topology()["firestore"].get("database", "(default)")


def test_terraform_derives_every_bucket_notification(derived: dict[str, Any]) -> None:
    buckets = load_topology().get("buckets") or {}
    assert set(derived["buckets"]) == set(buckets)
    expected = {k: b["notification"] for k, b in buckets.items() if b.get("notification")}
    assert set(derived["notifications"]) == set(expected)
    for key, n in expected.items():
        got = derived["notifications"][key]
        assert got["topic"] == n["topic"] and got["topic"] in derived["topics"]
        assert got["event_types"] == n["event_types"]
        assert got["object_prefix"] == n.get("object_prefix")


def test_terraform_lists_every_topic_and_subscription_as_plain_data(derived: dict[str, Any]) -> None:
    """`pubsub_inventory`: what the local stack must create on the emulators, in one JSON value."""
    topology = load_topology()
    inventory = derived["pubsub_inventory"]
    assert set(inventory) == {"topics", "subscriptions"}
    assert set(inventory["topics"]) == set(topology.get("topics") or {}) | {
        r["topic"] for r in routes(topology).values()
    }
    for name, topic in inventory["topics"].items():
        assert topic == {
            "name": name,
            "message_retention_seconds": (topology["topics"].get(name) or {}).get(
                "message_retention_seconds"
            ),
        }
    expected = {r["subscription"]: r for r in routes(topology).values()}
    assert set(inventory["subscriptions"]) == set(expected)
    for name, sub in inventory["subscriptions"].items():
        want_route, settings = expected[name], expected[name]["settings"]
        assert sub == {
            "name": name,
            "topic": want_route["topic"],
            "push_path": want_route["push_path"] if settings["mode"] == "push" else None,
            "ack_deadline_seconds": settings["ack_deadline_seconds"],
            "retry_policy": settings["retry_policy"],
            "dead_letter": settings["dead_letter"],
            "message_retention_seconds": settings["message_retention_seconds"],
        }, name
    json.dumps(inventory)  # plain data


def _broken(mutate: Any) -> dict[str, Any]:
    topology = copy.deepcopy(load_topology())
    mutate(topology)
    return topology


def _first_pipeline(t: dict[str, Any]) -> dict[str, Any]:
    name = next(iter(t["pipelines"]))
    t["pipelines"][name] = t["pipelines"][name] or {}
    result: dict[str, Any] = t["pipelines"][name]
    return result


def _multipart(t: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = t["pipelines"][multipart_pipeline(t)]
    return result


BROKEN = {
    "part_name_uppercase": (lambda t: _multipart(t).update(parts=["Speech"]), "part names must be"),
    "part_name_leading_digit": (lambda t: _multipart(t).update(parts=["1st"]), "part names must be"),
    "part_name_too_long": (lambda t: _multipart(t).update(parts=["p" * 41]), "part names must be"),
    "part_name_with_a_hyphen": (lambda t: _multipart(t).update(parts=["speech-2"]), "part names must be"),
    "part_name_slash": (lambda t: _first_pipeline(t).update(parts=["a/b"]), "part names must be"),
    "part_name_in_defaults": (lambda t: t["pipeline_defaults"].update(parts=["X"]), "part names must be"),
    "duplicate_parts": (
        lambda t: _multipart(t).update(parts=[*_multipart(t)["parts"], _multipart(t)["parts"][0]]),
        "parts must be unique",
    ),
    "parts_not_a_list": (lambda t: _multipart(t).update(parts={"a": 1}), "list of string required"),
    "ack_over_600": (lambda t: _first_pipeline(t).update(ack_deadline_seconds=601), "ack_deadline_seconds"),
    "ack_under_10": (lambda t: t["pipeline_defaults"].update(ack_deadline_seconds=5), "ack_deadline_seconds"),
    "attempts_under_5": (
        lambda t: _first_pipeline(t).update(
            dead_letter={"topic": "jobs-dead-letter", "max_delivery_attempts": 4}
        ),
        "max_delivery_attempts",
    ),
    "backoff_min_over_max": (
        lambda t: _first_pipeline(t).update(
            retry_policy={"minimum_backoff_seconds": 599, "maximum_backoff_seconds": 20}
        ),
        "minimum_backoff_seconds must not exceed",
    ),
    "backoff_over_600": (
        lambda t: _first_pipeline(t).update(
            retry_policy={"minimum_backoff_seconds": 10, "maximum_backoff_seconds": 700}
        ),
        "backoffs must be between",
    ),
    "unknown_mode": (lambda t: _first_pipeline(t).update(mode="stream"), "mode must be"),
    "partial_nested_override": (
        lambda t: _first_pipeline(t).update(retry_policy={"maximum_backoff_seconds": 20}),
        'attribute "minimum_backoff_seconds" is required',
    ),
    "undeclared_schedule_topic": (
        lambda t: t.setdefault("schedules", {}).update(x={"topic": "no-such-topic", "schedule": "* * * * *"}),
        "schedules.*.topic must be declared",
    ),
    "undeclared_dead_letter_topic": (
        lambda t: _first_pipeline(t).update(
            dead_letter={"topic": "no-such-topic", "max_delivery_attempts": 5}
        ),
        "dead_letter.topic must be declared",
    ),
    "undeclared_trigger_topic": (
        lambda t: next(f for f in t["functions"].values() if "pubsub_topic" in f["trigger"])[
            "trigger"
        ].update(pubsub_topic="no-such-topic"),
        "pubsub_topic must be declared",
    ),
    # The rules infra/topology.py applies too (Python and Terraform must refuse the same files).
    "subscription_retention_over_7_days": (
        lambda t: _first_pipeline(t).update(message_retention_seconds=604801),
        "between 600 (10 minutes) and 604800 (7 days)",
    ),
    "topic_retention_over_31_days": (
        lambda t: t["topics"][next(iter(t["topics"]))].update(message_retention_seconds=2678401),
        "2678400 (31 days)",
    ),
    "no_retry_policy": (
        lambda t: t["pipeline_defaults"].pop("retry_policy"),
        "needs a retry_policy",
    ),
    "no_dead_letter": (
        lambda t: t["pipeline_defaults"].pop("dead_letter"),
        "needs a dead_letter",
    ),
    "notification_without_event_types": (
        lambda t: next(b for b in t["buckets"].values() if b.get("notification"))["notification"].pop(
            "event_types"
        ),
        'attribute "event_types" is required',
    ),
    "two_triggers": (
        lambda t: next(iter(t["functions"].values()))["trigger"].update(
            pubsub_topic=next(iter(t["topics"])), firestore={"event_type": "x", "document": "y/{z}"}
        ),
        "exactly one of pubsub_topic or firestore",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_terraform_rejects_broken_topology(harness: Path, tmp_path: Path, case: str) -> None:
    mutate, message = BROKEN[case]
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(_broken(mutate)))
    result = _terraform(harness, "plan", f"-var=path={path}")
    assert result.returncode != 0, f"{case}: plan succeeded"
    assert message in " ".join((result.stdout + result.stderr).split()), result.stdout + result.stderr


# --------------------------------------------------------------------------------------------
# The root module planned offline. Each provider-backed module is replaced by a mirror of itself
# generated from its own HCL: its real variables.tf (inputs, type conversions and validations run
# on the real values), its locals and outputs, and every resource and data source turned into a
# `terraform_data` (built into Terraform, no provider) with the same for_each or count and every
# argument and nested block evaluated. Attributes that the real provider computes (ids, URIs,
# service agent e-mails...) are read from `terraform_data.output`, which is unknown until apply,
# exactly like the real ones: a for_each or count that depends on one fails the plan with
# "Invalid for_each argument", as `terraform plan` would on the real project. After apply they
# take the plausible values of COMPUTED, so the wiring can be asserted.
# --------------------------------------------------------------------------------------------

STUB_URI = "https://gpu-service-stub.a.run.app"
STUB_PROJECT_NUMBER = "123456789012"

# Per resource type (data sources as "data.TYPE"): the attributes the provider computes that this
# configuration reads, as HCL expressions over the resource's own arguments (`self.ARG`). Every
# resource also gets a computed `id`. Reading an attribute that is neither an argument nor listed
# here fails the plan with "Unsupported attribute": add it here, computed as in the provider.
_AGENT_DOMAINS = (
    '{ "eventarc.googleapis.com" = "gcp-sa-eventarc", "pubsub.googleapis.com" = "gcp-sa-pubsub" }'
)
COMPUTED: dict[str, dict[str, str]] = {
    "google_artifact_registry_repository": {
        "id": '"projects/${self.project}/locations/${self.location}/repositories/${self.repository_id}"',
        "name": "self.repository_id",
    },
    "google_bigquery_dataset": {},
    "google_bigquery_dataset_iam_member": {},
    "google_cloud_run_v2_service": {"uri": '"https://${self.name}-stub.a.run.app"'},
    "google_cloud_run_v2_service_iam_member": {},
    "google_cloud_run_v2_worker_pool": {},
    "google_cloud_scheduler_job": {
        "id": '"projects/${self.project}/locations/${self.region}/jobs/${self.name}"'
    },
    "google_eventarc_trigger": {
        "id": '"projects/${self.project}/locations/${self.location}/triggers/${self.name}"'
    },
    "google_firebase_project": {},
    "google_firebase_storage_bucket": {},
    "google_firebase_web_app": {"app_id": '"1:123456789012:web:stub"'},
    "data.google_firebase_web_app_config": {
        "api_key": '"stub-api-key"',
        "auth_domain": '"${self.project}.firebaseapp.com"',
        "messaging_sender_id": f'"{STUB_PROJECT_NUMBER}"',
    },
    "google_identity_platform_config": {},
    "google_firebaserules_release": {},
    "google_firebaserules_ruleset": {"name": '"stub-ruleset"'},
    "google_firestore_database": {},
    "google_firestore_index": {
        "name": '"projects/${self.project}/databases/${self.database}/collectionGroups/${self.collection}/indexes/stub"'
    },
    "google_logging_project_sink": {
        "writer_identity": '"serviceAccount:service-stub@gcp-sa-logging.iam.gserviceaccount.com"'
    },
    "google_project_iam_member": {},
    "google_project_service": {},
    "google_project_service_identity": {
        "email": f'"service-{STUB_PROJECT_NUMBER}@${{lookup({_AGENT_DOMAINS}, self.service, "gcp-sa-x")}}.iam.gserviceaccount.com"',
    },
    "google_pubsub_subscription": {"id": '"projects/${self.project}/subscriptions/${self.name}"'},
    "google_pubsub_subscription_iam_member": {},
    "google_pubsub_topic": {"id": '"projects/${self.project}/topics/${self.name}"'},
    "google_pubsub_topic_iam_member": {},
    "google_service_account": {
        "email": '"${self.account_id}@${self.project}.iam.gserviceaccount.com"',
        "name": '"projects/${self.project}/serviceAccounts/${self.account_id}@${self.project}.iam.gserviceaccount.com"',
    },
    "google_service_account_iam_member": {},
    "google_storage_bucket": {"url": '"gs://${self.name}"'},
    "google_storage_bucket_iam_member": {},
    "google_storage_notification": {},
    "data.google_storage_project_service_account": {
        "email_address": f'"service-{STUB_PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"',
        "member": f'"serviceAccount:service-{STUB_PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com"',
    },
}

_META_ARGUMENTS = {"for_each", "count", "provider", "depends_on"}
_META_BLOCKS = {"lifecycle", "provisioner", "connection"}
_REFERENCE = re.compile(r"(?<![\w.])(data\.)?(google_[a-z0-9_]+)\.([a-z_][a-z0-9_]*)")


def _stub_name(data: str | None, rtype: str, name: str) -> str:
    return f"stub_{'data_' if data else ''}{rtype}__{name}"


def _rewrite(expression: str, address: bool = False) -> str:
    """Point references to provider resources at their mirrors: the local (values) or, in
    depends_on, the terraform_data resource (address)."""

    def repl(m: re.Match[str]) -> str:
        stub = _stub_name(m.group(1), m.group(2), m.group(3))
        return f"terraform_data.{stub}" if address else f"local.{stub}"

    return _REFERENCE.sub(repl, expression)


def _object(body: tfcheck.Body) -> tuple[str, dict[str, str]]:
    """An HCL object expression with a block body's arguments and nested blocks (as lists), and
    the body's arguments by name."""
    arguments = {name: _rewrite(expr) for name, expr in body.attributes.items()}
    fields = [f"{name} = {expr}" for name, expr in arguments.items() if name not in _META_ARGUMENTS]
    nested: dict[str, list[str]] = {}
    for name, labels, sub in body.blocks:
        if name in _META_BLOCKS:
            continue
        if name == "dynamic":
            iterator = sub.attributes.get("iterator", labels[0])
            content = next(b for n, _, b in sub.blocks if n == "content")
            inner, _ = _object(content)
            pairs = f"[for k, v in {_rewrite(sub.attributes['for_each'])} : {{ key = k, value = v }}]"
            nested.setdefault(labels[0], []).append(f"[for {iterator} in {pairs} : {inner}]")
        else:
            nested.setdefault(name, []).append(f"[{_object(sub)[0]}]")
    fields += [f"{name} = concat({', '.join(parts)})" for name, parts in nested.items()]
    return "{\n" + "\n".join(fields) + "\n}", arguments


def _mirror_resource(data: str | None, rtype: str, name: str, body: tfcheck.Body) -> str:
    """A resource or data block as a terraform_data plus a local shaped like the real resource."""
    key = f"{'data.' if data else ''}{rtype}"
    assert key in COMPUTED, f"{key}: list the attributes the provider computes in COMPUTED"
    config, arguments = _object(body)
    computed = {"id": '"stub-id"', **COMPUTED[key]}

    def own(expression: str) -> str:
        def argument(m: re.Match[str]) -> str:
            assert m.group(1) in arguments, f"{key}: COMPUTED uses self.{m.group(1)}, which is not set"
            return f"({arguments[m.group(1)]})"

        return re.sub(r"\bself\.(\w+)", argument, expression)

    stub = _stub_name(data, rtype, name)
    computed_hcl = "{\n" + "\n".join(f"{a} = {own(e)}" for a, e in computed.items()) + "\n}"
    meta = "\n".join(f"{a} = {arguments[a]}" for a in ("for_each", "count") if a in arguments)
    depends = (
        f"depends_on = {_rewrite(body.attributes['depends_on'], address=True)}"
        if "depends_on" in arguments
        else ""
    )
    # A data source is read at plan time (its values are known) unless depends_on defers it.
    deferred = not data or "depends_on" in arguments
    source = "output" if deferred else "input"
    fields = [a for a in arguments if a not in _META_ARGUMENTS]
    fields += [n if n != "dynamic" else labels[0] for n, labels, _ in body.blocks if n not in _META_BLOCKS]
    shape = ", ".join(
        [f"{f} = r.input.config.{f}" for f in dict.fromkeys(fields) if f not in computed]
        + [f"{a} = r.{source}.computed.{a}" for a in computed]
    )
    if "for_each" in arguments:
        value = f"{{ for k, r in terraform_data.{stub} : k => {{ {shape} }} }}"
    elif "count" in arguments:
        value = f"[for r in terraform_data.{stub} : {{ {shape} }}]"
    else:
        value = f"{{ for r in [terraform_data.{stub}] : 0 => {{ {shape} }} }}[0]"
    return (
        f'resource "terraform_data" "{stub}" {{\n{meta}\n{depends}\n'
        f"input = {{\nconfig = {config}\ncomputed = {computed_hcl}\n}}\n}}\n"
        f"locals {{\n{stub} = {value}\n}}\n"
    )


def mirror_module(module_dir: Path) -> str:
    """The provider-free mirror of a module (everything but variables.tf and versions.tf), plus an
    `inputs` output echoing every variable so that the tests can assert the wiring."""
    out: list[str] = []
    for f in sorted(module_dir.glob("*.tf")):
        if f.name in ("variables.tf", "versions.tf"):
            continue
        # Comments go first: an expression's source may end with one.
        top = tfcheck.parse_hcl(strip_comments(f.read_text()))
        assert not top.attributes, f"{f}: top-level attributes {sorted(top.attributes)}"
        for name, labels, body in top.blocks:
            if name in ("resource", "data"):
                out.append(_mirror_resource("data" if name == "data" else None, labels[0], labels[1], body))
            elif name == "locals":
                values = "\n".join(f"{k} = {_rewrite(v)}" for k, v in body.attributes.items())
                out.append(f"locals {{\n{values}\n}}\n")
            elif name == "output":
                fields = [
                    f"{a} = {_rewrite(e, address=a == 'depends_on')}" for a, e in body.attributes.items()
                ]
                out.append(f'output "{labels[0]}" {{\n' + "\n".join(fields) + "\n}\n")
            else:
                raise AssertionError(f"{f}: no mirror for a top-level {name} block")
    inputs = ", ".join(f"{v} = var.{v}" for v in declared_variables(module_dir))
    out.append(f'output "inputs" {{ value = {{ {inputs} }} }}\n')
    return "\n".join(out)


def resource_types(directory: Path = TF) -> set[str]:
    found = set()
    for f in tf_files(directory):
        for kind in ("resource", "data"):
            for labels, _ in blocks(f.read_text(), kind):
                found.add(labels[0] if kind == "resource" else f"data.{labels[0]}")
    return found - {"terraform_data"}


def test_every_provider_resource_type_lists_its_computed_attributes() -> None:
    assert resource_types() <= set(COMPUTED), sorted(resource_types() - set(COMPUTED))


def test_hcl_reader_keeps_expressions_whole_and_blocks_nested() -> None:
    body = tfcheck.parse_hcl(
        'a = "x${lookup(m, "k", "}")}y"\nb = {\n  c = [1,\n 2]\n}\nd = <<-EOT\n  }\n  EOT\n'
        'blk "l1" {\n  e = 1\n}\ndynamic "env" {\n  for_each = var.x\n  content {\n    n = env.key\n  }\n}\n'
    )
    assert list(body.attributes) == ["a", "b", "d"]
    assert [(n, labels) for n, labels, _ in body.blocks] == [("blk", ["l1"]), ("dynamic", ["env"])]
    assert body.attributes["a"] == '"x${lookup(m, "k", "}")}y"'
    assert body.attributes["b"] == "{\n  c = [1,\n 2]\n}"
    content = body.blocks[1][2].blocks[0]
    assert content[0] == "content" and content[2].attributes == {"n": "env.key"}


def _mirror_plan(tmp_path: Path, main_tf: str) -> subprocess.CompletedProcess[str]:
    module = tmp_path / "module"
    module.mkdir()
    (module / "main.tf").write_text(main_tf)
    (module / "variables.tf").write_text('variable "names" {\n  type = set(string)\n}\n')
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (root / "m" / "main.tf").write_text(mirror_module(module))
    shutil.copy(module / "variables.tf", root / "m" / "variables.tf")
    (root / "main.tf").write_text('module "m" {\n  source = "./m"\n  names  = ["a", "b"]\n}\n')
    result = _terraform(root, "init", "-backend=false")
    assert result.returncode == 0, result.stdout + result.stderr
    return _terraform(root, "plan")


TOPICS_TF = """
resource "google_pubsub_topic" "t" {
  for_each = var.names
  project  = "p"
  name     = each.key
}

resource "google_pubsub_topic_iam_member" "publisher" {
  for_each = { for t in google_pubsub_topic.t : t.%s => t.id }
  topic    = each.value
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:x@p.iam.gserviceaccount.com"
}
"""


@needs_terraform
def test_mirror_rejects_for_each_keyed_by_a_computed_attribute(tmp_path: Path) -> None:
    """The class of bug that broke the first plan: keys that are only known after apply."""
    result = _mirror_plan(tmp_path, TOPICS_TF % "id")
    assert result.returncode != 0
    assert "Invalid for_each argument" in result.stdout + result.stderr


@needs_terraform
def test_mirror_accepts_for_each_keyed_by_a_configured_attribute(tmp_path: Path) -> None:
    result = _mirror_plan(tmp_path, TOPICS_TF % "name")
    assert result.returncode == 0, result.stdout + result.stderr


STUBBED_MODULES = [d for d in MODULE_DIRS if d.name != "topology"]
TFVARS = sorted((TF / "envs").glob("*.tfvars"))
DEV_TFVARS = TF / "envs" / "dev.tfvars"


@functools.cache
def _root_template() -> Path:
    """The mirrored root, initialised: built once per session (generating the mirrors parses every
    module's HCL), then copied for each plan. Its `.terraform` names modules by relative paths only."""
    base = Path(tempfile.mkdtemp(prefix="tf-root-template-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    (base / "infra").mkdir()
    for name in set(re.findall(r"/\.\./infra/([\w.-]+)", (TF / "main.tf").read_text())):
        shutil.copy(ROOT / "infra" / name, base / "infra" / name)  # topology.yaml and the rules files
    root = base / "terraform"
    shutil.copytree(TOPOLOGY_MODULE, root / "modules" / "topology")
    for module_dir in STUBBED_MODULES:
        stub = root / "modules" / module_dir.name
        stub.mkdir(parents=True)
        shutil.copy(module_dir / "variables.tf", stub / "variables.tf")
        (stub / "main.tf").write_text(mirror_module(module_dir))
    for f in ("main.tf", "variables.tf", "outputs.tf"):  # not versions.tf: no provider, no backend
        shutil.copy(TF / f, root / f)
    calls = module_calls()
    echo = []
    for module, (_, arguments) in calls.items():
        if module != "topology":
            value = f"one(module.{module}[*].inputs)" if "count" in arguments else f"module.{module}.inputs"
            echo.append(f'output "inputs_{module}" {{ value = {value} }}')
    (root / "inputs.tf").write_text("\n".join(echo) + "\n")
    result = _terraform(root, "init", "-backend=false")
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def prepare_root(base: Path, topology: dict[str, Any] | None = None) -> Path:
    """The root module with every provider-backed module mirrored, in `base`; returns its dir."""
    skip_without_terraform()
    shutil.copytree(_root_template(), base, dirs_exist_ok=True)
    if topology is not None:
        (base / "infra" / "topology.yaml").write_text(yaml.safe_dump(topology))
    return base / "terraform"


#: plan_root's outputs by everything that decides them: the same plan is applied once per session.
_PLANS: dict[tuple[str | None, tuple[str, ...]], dict[str, Any]] = {}


def plan_root(
    base: Path, topology: dict[str, Any] | None = None, *extra_vars: str, var_file: Path = DEV_TFVARS
) -> dict[str, Any]:
    """Plan, then apply, the root module (resource modules mirrored) in `base`; return its outputs.
    The plan sees every computed attribute as unknown, as on a real first apply."""
    args = (f"-var-file={var_file}", *extra_vars)
    # Var files written by a test are read now: their content, not their path, is part of the key.
    files = tuple(Path(a.split("=", 1)[1]).read_text() for a in args if a.startswith("-var-file="))
    key = (None if topology is None else yaml.safe_dump(topology), args + files)
    if key not in _PLANS:
        root = prepare_root(base, topology)
        result = _terraform(root, "plan", "-out=tfplan", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        result = _terraform(root, "apply", "tfplan")
        assert result.returncode == 0, result.stdout + result.stderr
        # The state's outputs, as `terraform output -json` prints them.
        outputs = json.loads((root / "terraform.tfstate").read_text())["outputs"]
        _PLANS[key] = {k: v["value"] for k, v in outputs.items()}
    return copy.deepcopy(_PLANS[key])


@pytest.fixture(scope="module")
def root_plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return plan_root(tmp_path_factory.mktemp("tf-root"))


def serve_all(topology: dict[str, Any]) -> str:
    """-var making every pipeline servable without a model (the worker pool tests are about routing)."""
    entries = ", ".join(f"{name} = {{ needs_model = false }}" for name in topology["pipelines"])
    return f"-var=pipeline_config={{ {entries} }}"


def test_root_puts_pull_pipelines_on_the_worker_pool(tmp_path: Path) -> None:
    topology = load_topology()
    pull = next(iter(topology["pipelines"]))
    topology["pipelines"][pull] = {**(topology["pipelines"][pull] or {}), "mode": "pull"}
    topology["pipelines"]["other"] = {}
    plan = plan_root(tmp_path, topology, "-var=worker_pool_config={enabled = true}", serve_all(topology))
    subscription = route(pull).subscription
    assert plan["inputs_pubsub"]["subscriptions"][subscription]["push"] is None
    assert subscription not in plan["push_endpoints"]
    assert route("other").subscription in plan["push_endpoints"]
    binding = plan["inputs_pubsub"]["subscription_iam_bindings_additive"][f"gpu-service-subscribe-{pull}"]
    assert binding == {
        "subscription": subscription,
        "role": "roles/pubsub.subscriber",
        "member": f"serviceAccount:{plan['service_accounts']['gpu_service']}",
    }
    gpu = plan["inputs_gpu_service"]
    assert gpu["config"]["env"]["ENABLED_PIPELINES"] == ",".join(sorted(set(topology["pipelines"]) - {pull}))
    assert gpu["worker_pool"]["enabled"] is True
    assert gpu["worker_pool"]["env"] == {"ENABLED_PIPELINES": pull}
    assert gpu["worker_pool"]["subscriptions"] == [plan["subscriptions"][subscription]]


def test_root_puts_a_pull_pipelines_parts_on_the_worker_pool(tmp_path: Path) -> None:
    topology = load_topology()
    video = multipart_pipeline(topology)
    topology["pipelines"][video] = {**topology["pipelines"][video], "mode": "pull"}
    plan = plan_root(tmp_path, topology, "-var=worker_pool_config={enabled = true}", serve_all(topology))
    pubsub, gpu = plan["inputs_pubsub"], plan["inputs_gpu_service"]
    member = f"serviceAccount:{plan['service_accounts']['gpu_service']}"
    part_routes = [r for r in routes(topology).values() if r["pipeline"] == video and r["part"]]
    assert part_routes
    for part_route in part_routes:
        name = part_route["subscription"]
        assert pubsub["subscriptions"][name]["push"] is None, name
        assert name not in plan["push_endpoints"]
        assert plan["subscriptions"][name] in gpu["worker_pool"]["subscriptions"]
        binding = pubsub["subscription_iam_bindings_additive"][
            f"gpu-service-subscribe-{route(video, part_route['part']).key}"
        ]
        assert binding == {"subscription": name, "role": "roles/pubsub.subscriber", "member": member}
    assert len(gpu["worker_pool"]["subscriptions"]) == 1 + len(part_routes)
    # The worker pool runs the pipeline, whose step handler runs the parts: no part is a pipeline.
    assert gpu["worker_pool"]["env"] == {"ENABLED_PIPELINES": video}
    assert gpu["config"]["env"]["ENABLED_PIPELINES"] == ",".join(sorted(set(topology["pipelines"]) - {video}))


def test_root_plans_with_the_example_tfvars(root_plan: dict[str, Any]) -> None:
    topology = load_topology()
    push = [r for r in routes(topology).values() if r["settings"]["mode"] == "push"]
    assert root_plan["push_endpoints"] == {r["subscription"]: STUB_URI + r["push_path"] for r in push}
    video = multipart_pipeline(topology)
    for part in effective_pipelines(topology)[video]["parts"]:
        endpoint = root_plan["push_endpoints"][route(video, part).subscription]
        assert endpoint == f"{STUB_URI}/push/{video}/{part}"
    assert set(root_plan["topics"]) == set(root_plan["inputs_pubsub"]["topics"])


def test_root_wires_push_subscriptions_to_the_gpu_service(root_plan: dict[str, Any]) -> None:
    pubsub = root_plan["inputs_pubsub"]
    push_sa = root_plan["service_accounts"]["push_invoker"]
    gpu_member = f"serviceAccount:{root_plan['service_accounts']['gpu_service']}"
    all_routes = routes(load_topology())
    for name, r in all_routes.items():
        sub = pubsub["subscriptions"][r["subscription"]]
        assert sub["topic"] == r["topic"]
        assert sub["dead_letter"] == r["settings"].get("dead_letter"), name  # drives the DLQ grants
        if r["settings"]["mode"] == "push":
            gpu_config = root_plan["inputs_gpu_service"]["config"]
            assert sub["push"] == {
                "endpoint": STUB_URI + r["push_path"],
                # A fixed audience the service accepts (custom_audiences) and checks (PUSH_AUDIENCE).
                "audience": gpu_config["custom_audiences"][0],
                "service_account_email": push_sa,
            }
            assert gpu_config["env"]["PUSH_AUDIENCE"] == gpu_config["custom_audiences"][0]
        else:
            assert sub["push"] is None
        binding = pubsub["topic_iam_bindings_additive"][f"functions-publish-{name}"]
        assert binding["role"] == "roles/pubsub.publisher" and binding["topic"] == r["topic"]
        # The job's first step, in the GPU service, publishes the parts.
        gpu_publish = pubsub["topic_iam_bindings_additive"].get(f"gpu-service-publish-{name}")
        if r["part"]:
            assert gpu_publish == {
                "topic": r["topic"],
                "role": "roles/pubsub.publisher",
                "member": gpu_member,
            }
        else:
            assert gpu_publish is None
    assert set(pubsub["subscriptions"]) == {r["subscription"] for r in all_routes.values()}
    assert pubsub["pubsub_service_agent"].startswith("serviceAccount:service-")
    gpu = root_plan["inputs_gpu_service"]
    assert gpu["invokers"] == {"push-invoker": f"serviceAccount:{push_sa}"}


def test_root_configures_the_gpu_service(root_plan: dict[str, Any]) -> None:
    topology = load_topology()
    pipelines = effective_pipelines(topology)
    config = root_plan["inputs_gpu_service"]["config"]
    assert config["concurrency"] == 1
    assert config["accelerator"] == "nvidia-l4"
    assert config["timeout_seconds"] == max(
        s["ack_deadline_seconds"] for s in pipelines.values() if s["mode"] == "push"
    )
    env = config["env"]
    project = root_plan["inputs_project"]["project_id"]
    assert env["GOOGLE_CLOUD_PROJECT"] == project
    assert env["JOBS_COLLECTION"] == topology["firestore"]["jobs_collection"]
    assert "TOPIC_PREFIX" not in env and "DEAD_LETTER_TOPIC" not in env  # names, not settings
    for key in topology["buckets"]:
        assert env[f"{key.upper().replace('-', '_')}_BUCKET"] == f"{project}-{key}"
    # No worker pool in dev.tfvars: the service consumes every pipeline that has its model (edit
    # has none there), pull ones by streaming pull; the functions accept jobs for those only.
    assert env["ENABLED_PIPELINES"] == "inpaint,transcribe,tts,video"
    parts = {r["part"] for r in routes(topology).values() if r["part"]}
    part_routes = {name for name, r in routes(topology).items() if r["part"]}
    assert parts and not (parts | part_routes) & set(env["ENABLED_PIPELINES"].split(","))
    functions_env = root_plan["inputs_functions"]["config"]["env"]
    assert functions_env["ENABLED_PIPELINES"] == env["ENABLED_PIPELINES"]
    assert env["MAX_CONCURRENT_JOBS"] == str(config["concurrency"])
    assert env["PIPELINES__TRANSCRIBE__MODEL_DIR"] == "/models/whisper"  # from dev.tfvars
    assert env["PIPELINES__VIDEO__TRANSCRIBE__MODEL_DIR"] == "/models/whisper"
    assert env["PIPELINES__INPAINT__BACKEND"] == "opencv"
    assert env["PIPELINES__TTS__BACKEND"] == "piper"  # the voice is a package in the image
    assert not any(k.startswith("PIPELINES__EDIT__") for k in env)
    assert root_plan["inputs_gpu_service"]["worker_pool"]["enabled"] is False
    # gpu_quota = 2 in dev.tfvars: one GPU serves, one is left for the next revision's rollout.
    assert config["max_instances"] == 1


def test_infra_settings_parse_the_environment_terraform_sets(
    root_plan: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.settings import Settings

    for module in ("gpu_service", "functions", "api"):
        env = root_plan[f"inputs_{module}"]["config"]["env"]
        for key in list(os.environ):
            if key.upper() in {k.upper() for k in Settings.model_fields} or key.upper().startswith(
                "PIPELINES__"
            ):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.enabled_pipelines == env["ENABLED_PIPELINES"].split(","), module
        assert settings.media_bucket == env["MEDIA_BUCKET"]
        assert settings.jobs_collection == env["JOBS_COLLECTION"]
        if module == "gpu_service":
            assert settings.max_concurrent_jobs == root_plan["inputs_gpu_service"]["config"]["concurrency"]
            assert settings.pipelines["transcribe"]["model_dir"] == "/models/whisper"
        # Every setting pipeline_config sets is one the pipeline's config model accepts.
        from pipelines.registry import catalog

        pipelines = catalog(settings.enabled_pipelines, settings.plugins, settings.pipelines)
        assert pipelines.names == sorted(settings.enabled_pipelines), module
        for name in settings.enabled_pipelines:
            spec = pipelines.get(name)
            assert spec is not None, name
            pipelines.config(spec)
        if module == "gpu_service":
            # The service verifies push tokens for the audience and account the subscriptions use.
            assert settings.push_auth_enabled
            assert settings.push_audience == root_plan["inputs_gpu_service"]["config"]["custom_audiences"][0]
            assert settings.push_service_account == root_plan["service_accounts"]["push_invoker"]
        if module == "api":
            from api.auth import check_environment

            check_environment(settings)  # production: no emulator tokens, no key file
            assert settings.environment == "production"
            assert settings.signing_service_account == root_plan["service_accounts"]["api"]


def test_root_configures_functions_and_storage(root_plan: dict[str, Any]) -> None:
    topology = load_topology()
    functions = root_plan["inputs_functions"]
    assert set(functions["functions"]) == set(topology["functions"])
    assert functions["config"]["image"].endswith("/functions:abc1234")
    assert functions["firestore_location"] == root_plan["inputs_firestore"]["database"]["location_id"]
    storage = root_plan["inputs_storage"]
    for key, bucket in topology["buckets"].items():
        if bucket.get("notification"):
            n = storage["notifications"][key]
            project = root_plan["inputs_project"]["project_id"]
            assert n["topic_id"] == f"projects/{project}/topics/{bucket['notification']['topic']}"
            assert n["object_prefix"] == bucket["notification"].get("object_prefix")
    roles = {
        (b["bucket"], b["role"], b["member"].split("@")[0]) for b in storage["iam_bindings_additive"].values()
    }
    for key in topology["buckets"]:
        assert (key, "roles/storage.objectViewer", "serviceAccount:fn-runtime") in roles
        assert (key, "roles/storage.objectAdmin", "serviceAccount:gpu-runtime") in roles
    schedules = root_plan["inputs_scheduler"]["schedules"]
    assert set(schedules) == set(topology.get("schedules") or {})
    for name, schedule in (topology.get("schedules") or {}).items():
        assert (
            schedules[name]["topic"] == schedule["topic"]
            and schedules[name]["schedule"] == schedule["schedule"]
        )
    source = root_plan["inputs_functions"]["config"]["source_file"]
    assert source is None or (ROOT / source).is_file(), (
        f"functions-framework --source={source} is not in the repo"
    )


def test_root_configures_the_api(root_plan: dict[str, Any]) -> None:
    api = root_plan["inputs_api"]
    config = api["config"]
    assert config["image"] == root_plan["inputs_functions"]["config"]["image"]  # the functions image
    assert (
        config["env"]["ENABLED_PIPELINES"]
        == root_plan["inputs_functions"]["config"]["env"]["ENABLED_PIPELINES"]
    )
    assert api["service_account"] == root_plan["service_accounts"]["api"]
    member = f"serviceAccount:{root_plan['service_accounts']['api']}"
    assert root_plan["inputs_firestore"]["iam_datastore_users"]["api"] == member
    # The API publishes the jobs it queues, to the pipelines' own topics (never their parts').
    published = {
        b["topic"]
        for b in root_plan["inputs_pubsub"]["topic_iam_bindings_additive"].values()
        if b["member"] == member
    }
    assert published == {r["topic"] for r in routes(load_topology()).values() if r["part"] is None}
    # It signs upload and result URLs as itself: it must be able to create and read objects.
    roles = {
        (b["bucket"], b["role"])
        for b in root_plan["inputs_storage"]["iam_bindings_additive"].values()
        if b["member"] == member
    }
    assert roles == {
        (k, r)
        for k in load_topology()["buckets"]
        for r in ("roles/storage.objectViewer", "roles/storage.objectCreator")
    }
    index = root_plan["inputs_firestore"]["indexes"]["jobs-by-user"]
    assert [f["field_path"] for f in index["fields"]] == ["uid", "createdAt"]
    assert index["fields"][1]["order"] == "DESCENDING"
    text = strip_comments((TF / "modules" / "api" / "main.tf").read_text())
    assert 'args    = ["-m", "api"]' in text and "iam.serviceAccountTokenCreator" in text
    # Public without an allUsers binding, which Domain Restricted Sharing refuses.
    assert "allUsers" not in text and "invoker_iam_disabled = var.config.public" in text
    assert api["config"]["public"] is True


def test_quotas_reach_every_service_that_admits_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.settings import Settings

    plan = plan_root(
        tmp_path, None, "-var=quotas={ max_unfinished = 5, pipelines = { video = { max_unfinished = 1 } } }"
    )
    for module in ("functions", "api"):
        monkeypatch.setenv("QUOTAS", plan[f"inputs_{module}"]["config"]["env"]["QUOTAS"])
        quotas = Settings().quotas
        assert quotas.max_unfinished == 5 and quotas.pipelines["video"].max_unfinished == 1, module
    assert "QUOTAS" not in plan["inputs_gpu_service"]["config"]["env"]


def test_plan_fails_when_the_api_is_given_emulator_auth(tmp_path: Path) -> None:
    error = _plan_error(
        tmp_path, '-var=api_config={ env = { FIREBASE_AUTH_EMULATOR_HOST = "127.0.0.1:9099" } }'
    )
    assert "for the local stack only" in error


@pytest.mark.parametrize("var_file", TFVARS, ids=lambda p: p.name)
def test_every_committed_environment_plans(tmp_path: Path, var_file: Path) -> None:
    outputs = plan_root(tmp_path, None, var_file=var_file)
    assert outputs["inputs_gpu_service"]["config"]["env"]["ENABLED_PIPELINES"]


def test_committed_environments_exist_and_are_not_ignored() -> None:
    assert {p.name for p in TFVARS} >= {"dev.tfvars", "prod.tfvars"}
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *map(str, TFVARS)], cwd=ROOT, capture_output=True, text=True
    )
    assert ignored.stdout == "", f"git ignores {ignored.stdout.split()}: Cloud Build would never see them"


def test_only_pipelines_with_a_model_are_enabled(tmp_path: Path) -> None:
    plan = plan_root(
        tmp_path,
        None,
        '-var=pipeline_config={ transcribe = { models = { MODEL_DIR = "/m/whisper" } }, '
        "inpaint = { needs_model = false }, video = { enabled = false, models = { TRANSCRIBE__MODEL_DIR = "
        '"/m/whisper" } }, edit = { settings = { DEVICE = "cuda" } } }',
    )
    gpu_env = plan["inputs_gpu_service"]["config"]["env"]
    assert gpu_env["ENABLED_PIPELINES"] == "inpaint,transcribe"
    assert plan["inputs_functions"]["config"]["env"]["ENABLED_PIPELINES"] == "inpaint,transcribe"
    assert gpu_env["PIPELINES__TRANSCRIBE__MODEL_DIR"] == "/m/whisper"
    # A pipeline that does not serve gets none of its settings.
    assert not any(k.startswith(("PIPELINES__VIDEO__", "PIPELINES__EDIT__")) for k in gpu_env)
    # Nothing here uses Cloud Vision, so its API stays off.
    assert "vision.googleapis.com" not in plan["inputs_project"]["services"]


def plugin_tfvars(tmp_path: Path, entries: dict[str, Any] | None = None) -> str:
    """-var-file of plugin_pipelines: by default what `gpujobs pipelines --tfvars` prints for the
    plugins installed here (the example plugin, through its entry point)."""
    from pipelines.registry import registry

    path = tmp_path / "plugins.auto.tfvars.json"
    path.write_text(json.dumps({"plugin_pipelines": registry().tfvars() if entries is None else entries}))
    return f"-var-file={path}"


def test_a_plugin_gets_its_route_from_plugin_pipelines_and_serves_without_a_topology_edit(
    tmp_path: Path,
) -> None:
    from pipelines.registry import registry

    spec = registry().specs["automaton"]
    (tmp_path / "vars").mkdir()
    plan = plan_root(tmp_path, None, plugin_tfvars(tmp_path / "vars"))
    sub = plan["inputs_pubsub"]["subscriptions"][route("automaton").subscription]
    entry = spec.topology_entry()
    assert sub["topic"] == route("automaton").topic
    assert sub["ack_deadline_seconds"] == entry["ack_deadline_seconds"] == 300
    assert sub["retry_policy"] == entry["retry_policy"]
    # What the plugin does not say comes from pipeline_defaults, as for a built-in.
    defaults = load_topology()["pipeline_defaults"]
    assert sub["dead_letter"] == defaults["dead_letter"]
    assert plan["push_endpoints"][route("automaton").subscription] == STUB_URI + route("automaton").push_path
    # It needs no model (its spec says so), so it is enabled with nothing in pipeline_config.
    gpu_env = plan["inputs_gpu_service"]["config"]["env"]
    assert gpu_env["ENABLED_PIPELINES"] == "automaton,inpaint,transcribe,tts,video"
    assert plan["inputs_functions"]["config"]["env"]["ENABLED_PIPELINES"] == gpu_env["ENABLED_PIPELINES"]


def test_a_plugin_that_needs_a_model_serves_once_pipeline_config_gives_it_one(tmp_path: Path) -> None:
    (tmp_path / "vars").mkdir()
    entries = {"upscale": {"ack_deadline_seconds": 120, "parts": ["tiles"]}}
    config = '-var=pipeline_config={ transcribe = { models = { MODEL_DIR = "/m/w" } } }'
    plan = plan_root(tmp_path / "vars", None, plugin_tfvars(tmp_path / "vars", entries), config)
    assert plan["inputs_gpu_service"]["config"]["env"]["ENABLED_PIPELINES"] == "transcribe"
    assert route("upscale", "tiles").subscription in plan["inputs_pubsub"]["subscriptions"]
    served = '-var=pipeline_config={ upscale = { models = { MODEL_DIR = "/m/up" } } }'
    (tmp_path / "again").mkdir()
    plan = plan_root(tmp_path / "again", None, plugin_tfvars(tmp_path / "vars", entries), served)
    env = plan["inputs_gpu_service"]["config"]["env"]
    assert env["ENABLED_PIPELINES"] == "upscale" and env["PIPELINES__UPSCALE__MODEL_DIR"] == "/m/up"


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ({"automaton": {"ack_deadline_seconds": 5}}, "ack_deadline_seconds must be between 10 and 600"),
        ({"automaton": {"mode": "stream"}}, 'pipeline mode must be "push"'),
        ({"Bad-Name": {}}, "Pipeline names must be 1-40 lowercase letters"),
        ({"automaton": {"parts": ["a", "a"]}}, "A pipeline's parts must be unique"),
        (
            {"automaton": {"retry_policy": {"minimum_backoff_seconds": 9, "maximum_backoff_seconds": 1}}},
            "minimum_backoff_seconds must not exceed maximum_backoff_seconds",
        ),
    ],
    ids=["ack-deadline", "mode", "name", "parts", "backoff"],
)
def test_plugin_pipelines_pass_the_topology_checks(
    tmp_path: Path, entries: dict[str, Any], expected: str
) -> None:
    (tmp_path / "vars").mkdir()
    assert expected in _plan_error(tmp_path, plugin_tfvars(tmp_path / "vars", entries))


def _plan_error(tmp_path: Path, *extra_vars: str, topology: dict[str, Any] | None = None) -> str:
    root = prepare_root(tmp_path, topology)
    result = _terraform(root, "plan", f"-var-file={DEV_TFVARS}", *extra_vars)
    assert result.returncode != 0, "the plan should have failed"
    return " ".join((result.stdout + result.stderr).split())


def test_plan_fails_when_no_pipeline_has_a_model(tmp_path: Path) -> None:
    assert "No pipeline can serve" in _plan_error(tmp_path, "-var=pipeline_config={}")


def test_plan_fails_for_an_unknown_pipeline_in_pipeline_config(tmp_path: Path) -> None:
    error = _plan_error(tmp_path, "-var=pipeline_config={ transcrib = { needs_model = false } }")
    assert "pipeline_config keys must be pipelines declared in infra/topology.yaml" in error


def test_plan_fails_when_nothing_pulls_a_pull_pipeline(tmp_path: Path) -> None:
    topology = load_topology()
    topology["pipelines"]["transcribe"] = {**(topology["pipelines"]["transcribe"] or {}), "mode": "pull"}
    assert "nothing pulls them" in _plan_error(tmp_path, topology=topology)


def test_plan_fails_when_instances_exceed_the_gpu_quota(tmp_path: Path) -> None:
    error = _plan_error(tmp_path, "-var=gpu_quota=1", "-var=gpu_service_config={ max_instances = 2 }")
    assert "exceed gpu_quota" in error


def test_max_instances_leaves_a_gpu_for_the_redeploy(tmp_path: Path) -> None:
    plan = plan_root(tmp_path, None, "-var=gpu_quota=4")
    assert plan["inputs_gpu_service"]["config"]["max_instances"] == 3


def test_large_models_can_come_from_a_mounted_bucket(tmp_path: Path) -> None:
    plan = plan_root(tmp_path, None, '-var=gpu_service_config={ models_bucket = "my-models" }')
    assert plan["inputs_gpu_service"]["config"]["models_bucket"] == "my-models"
    assert_buckets_mounted_on_service_and_worker_pool()
    text = strip_comments((TF / "modules" / "gpu-service" / "main.tf").read_text())
    assert re.search(
        r"models\s*=\s*\{\s*bucket\s*=\s*var\.config\.models_bucket,\s*mount_path\s*=\s*var\.config\.models_mount_path",
        text,
    )
    assert '"EXECUTION_ENVIRONMENT_GEN2"' in text and '"roles/storage.objectViewer"' in text


def assert_buckets_mounted_on_service_and_worker_pool() -> None:
    """The service and the worker pool run the same pipelines: each mounts every configured bucket
    (``local.bucket_volumes``) read-only at its mount path, or a pull pipeline would look for its
    models or adapters in a directory that is not there."""
    text = (TF / "modules" / "gpu-service" / "main.tf").read_text()
    resources = {labels[0]: body for labels, body in blocks(text, "resource")}

    def dynamic(body: tfcheck.Body, name: str) -> tfcheck.Body:
        (found,) = [b for n, labels, b in body.blocks if n == "dynamic" and labels == [name]]
        assert found.attributes["for_each"] == "local.bucket_volumes"
        return next(b for n, _, b in found.blocks if n == "content")

    def block(body: tfcheck.Body, name: str) -> tfcheck.Body:
        return next(b for n, _, b in body.blocks if n == name)

    for kind in ("google_cloud_run_v2_service", "google_cloud_run_v2_worker_pool"):
        template = block(resources[kind], "template")
        volumes = dynamic(template, "volumes")
        assert volumes.attributes == {"name": "volumes.key"}, kind
        assert block(volumes, "gcs").attributes == {"bucket": "volumes.value.bucket", "read_only": "true"}, (
            kind
        )
        mounts = dynamic(block(template, "containers"), "volume_mounts")
        assert mounts.attributes == {
            "name": "volume_mounts.key",
            "mount_path": "volume_mounts.value.mount_path",
        }
    (locals_body,) = [body for _, body in blocks(text, "locals")]
    assert re.search(r"if\s+volume\.bucket\s*!=\s*null", locals_body.attributes["bucket_volumes"]), (
        "only configured buckets are mounted"
    )


ADAPTER_PIPELINES = (
    '-var=pipeline_config={ transcribe = { models = { MODEL_DIR = "/models/whisper" } }, '
    "inpaint = { needs_model = false }, "
    't2v = { models = { MODEL_DIR = "/models/wan" }, settings = { LORA_MODE = "fused", '
    'FUSED_LORAS = "[{\\"path\\": \\"ink.safetensors\\", \\"weight\\": 0.8}]", MAX_FRAMES = "121" } } }'
)


def test_adapters_come_from_a_mounted_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_root(
        tmp_path,
        None,
        '-var=gpu_service_config={ adapters = { bucket = "my-adapters", pipelines = ["edit", "inpaint", "t2v"] } }',
        ADAPTER_PIPELINES,
    )
    config = plan["inputs_gpu_service"]["config"]
    assert (config["adapters_bucket"], config["adapters_mount_path"]) == ("my-adapters", "/adapters")
    env = config["env"]
    # The mount is the adapter directory of the servable pipelines that take adapters; edit is not
    # servable here (no model) and transcribe takes none.
    lora_dirs = {k: v for k, v in env.items() if k.endswith("__LORA_DIR")}
    assert lora_dirs == {"PIPELINES__INPAINT__LORA_DIR": "/adapters", "PIPELINES__T2V__LORA_DIR": "/adapters"}
    # The functions and the API see what the prechecks read (the LoRA mode, to reject what fused mode
    # cannot run; the clip limits, the same as the service's), not the models.
    for deployable in ("functions", "api"):
        seen = plan[f"inputs_{deployable}"]["config"]["env"]
        assert seen["PIPELINES__T2V__LORA_MODE"] == "fused", deployable
        assert seen["PIPELINES__T2V__MAX_FRAMES"] == "121", deployable
        assert "PIPELINES__T2V__MODEL_DIR" not in seen and "PIPELINES__T2V__LORA_DIR" not in seen
    from infra.settings import Settings
    from pipelines.t2v import T2VConfig

    for key, value in plan["inputs_functions"]["config"]["env"].items():
        monkeypatch.setenv(key, value)
    t2v = T2VConfig.model_validate(Settings().pipelines["t2v"])
    assert t2v.lora_mode == "fused" and [(a.path, a.weight) for a in t2v.fused_loras] == [
        ("ink.safetensors", 0.8)
    ]
    assert t2v.max_frames == 121

    assert_buckets_mounted_on_service_and_worker_pool()
    text = strip_comments((TF / "modules" / "gpu-service" / "main.tf").read_text())
    assert re.search(
        r"adapters\s*=\s*\{\s*bucket\s*=\s*var\.config\.adapters_bucket,\s*mount_path\s*=\s*var\.config\.adapters_mount_path",
        text,
    )
    assert re.search(
        r'resource "google_storage_bucket_iam_member" "adapters"[^}]*adapters_bucket[^}]*"roles/storage\.objectViewer"',
        text,
    )
    assert 'length(local.bucket_volumes) == 0 ? null : "EXECUTION_ENVIRONMENT_GEN2"' in text


def test_model_concurrency_reaches_the_service_within_its_slots(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    plan = plan_root(
        tmp_path / "ok", None, "-var=gpu_service_config={ concurrency = 6, model_concurrency = 2 }"
    )
    env = plan["inputs_gpu_service"]["config"]["env"]
    assert (env["MAX_CONCURRENT_JOBS"], env["MODEL_CONCURRENCY"]) == ("6", "2")
    error = _plan_error(
        tmp_path / "bad", "-var=gpu_service_config={ concurrency = 2, model_concurrency = 3 }"
    )
    assert "model_concurrency must be a whole number from 1 to gpu_service_config.concurrency" in error


def test_without_model_concurrency_every_slot_may_use_the_model(root_plan: dict[str, Any]) -> None:
    assert "MODEL_CONCURRENCY" not in root_plan["inputs_gpu_service"]["config"]["env"]


def test_without_an_adapter_bucket_nothing_is_mounted(root_plan: dict[str, Any]) -> None:
    config = root_plan["inputs_gpu_service"]["config"]
    assert config["adapters_bucket"] is None
    assert not any(k.endswith("__LORA_DIR") for k in config["env"])


def test_plan_fails_for_an_adapter_mount_over_the_models(tmp_path: Path) -> None:
    error = _plan_error(
        tmp_path,
        '-var=gpu_service_config={ adapters = { bucket = "b", mount_path = "/models", pipelines = [] } }',
    )
    assert "adapters.mount_path must be an absolute directory other than / and /models" in error


def test_service_agents_are_created_before_they_are_granted_roles(root_plan: dict[str, Any]) -> None:
    project = root_plan["inputs_project"]
    assert set(project["service_identities"]) == {"eventarc.googleapis.com", "pubsub.googleapis.com"}
    assert set(project["service_identities"]) <= set(project["services"])
    # Grants name the agents through module.project (google_project_service_identity and the
    # Storage agent data source), never through a formatted e-mail.
    text = strip_comments((TF / "main.tf").read_text())
    assert "gcp-sa-" not in text and "gs-project-accounts" not in text
    assert "module.project.service_agents.storage" in text
    assert root_plan["inputs_storage"]["storage_service_agent"].startswith("serviceAccount:service-")
    creators = root_plan["inputs_service_accounts"]["token_creators"]
    assert {c["member"] for c in creators.values()} == {root_plan["inputs_pubsub"]["pubsub_service_agent"]}
    outputs = strip_comments((TF / "modules" / "project" / "outputs.tf").read_text())
    assert "google_project_service_identity.default" in outputs.split('output "project_id"')[1]


def test_apis_follow_the_configuration(root_plan: dict[str, Any]) -> None:
    services = root_plan["inputs_project"]["services"]
    assert "vision.googleapis.com" in services  # dev.tfvars: video OCR with Cloud Vision
    assert "artifactregistry.googleapis.com" in services
    assert "cloudscheduler.googleapis.com" in services  # topology.yaml has schedules


def test_buckets_expire_uploads_and_results(root_plan: dict[str, Any]) -> None:
    assert root_plan["inputs_storage"]["config"]["ttl_days"] == {"uploads": 2, "results": 7}
    text = strip_comments((TF / "modules" / "storage" / "main.tf").read_text())
    assert 'dynamic "lifecycle_rule"' in text and 'type = "Delete"' in text


def test_artifact_registry_has_a_cleanup_policy(root_plan: dict[str, Any]) -> None:
    registry = root_plan["inputs_artifact_registry"]
    assert registry["config"]["name"] == "gpu-jobs"
    assert registry["config"]["keep_count"] >= 2
    text = strip_comments((TF / "modules" / "artifact-registry" / "main.tf").read_text())
    assert 'action = "KEEP"' in text and 'action = "DELETE"' in text
    assert "cleanup_policy_dry_run = false" in text
    # Cloud Build pushes to the repository Terraform manages.
    subs = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())["substitutions"]
    assert subs["_REPO"] == registry["config"]["name"]


# --------------------------------------------------------------------------------------------
# The first deploy on an empty project (issue: first `gcloud builds submit` and `terraform apply`)
# --------------------------------------------------------------------------------------------


def resource_body(module: str, rtype: str, name: str = "default") -> tfcheck.Body:
    """The parsed body of one resource (or `data.TYPE`) block of a module's main.tf."""
    kind, rtype = ("data", rtype[5:]) if rtype.startswith("data.") else ("resource", rtype)
    top = tfcheck.parse_hcl((TF / "modules" / module / "main.tf").read_text())
    found = [body for k, labels, body in top.blocks if k == kind and labels == [rtype, name]]
    assert found, f"{module}: no {kind} {rtype}.{name}"
    return found[0]


WEB_CONFIG = ROOT / "web" / "src" / "main.ts"


def test_first_apply_provisions_firebase_auth_and_the_web_app(root_plan: dict[str, Any]) -> None:
    firebase = root_plan["inputs_firebase"]
    project = root_plan["inputs_project"]["services"]
    assert {"firebase.googleapis.com", "identitytoolkit.googleapis.com", "apikeys.googleapis.com"} <= set(
        project
    )
    # The sign-in providers the web client offers, and the domains it may sign in from.
    assert firebase["auth"]["anonymous"] is True and firebase["auth"]["email_password"] is True
    project_id = root_plan["inputs_storage"]["project_id"]
    assert {"localhost", f"{project_id}.web.app", f"{project_id}.firebaseapp.com"} <= set(
        firebase["auth"]["authorized_domains"]
    )
    # The Storage link and the rules wait for the Firebase project (module.firebase.project_id).
    main = tfcheck.parse_hcl((TF / "main.tf").read_text())
    modules = {labels[0]: body for kind, labels, body in main.blocks if kind == "module"}
    for name in ("storage", "firestore"):
        assert "module.firebase[*].project_id" in modules[name].attributes["project_id"], name
    sign_in = resource_body("firebase", "google_identity_platform_config").blocks
    assert [t for t, _, _ in sign_in] == ["sign_in"]


def test_web_client_config_is_an_output_the_web_build_reads(root_plan: dict[str, Any]) -> None:
    config = root_plan["web_client_config"]
    # Every field of the client's Config interface that a deployment sets (the emulator ones aside).
    interface = re.search(r"interface Config \{(.*?)\}", WEB_CONFIG.read_text(), re.S)
    assert interface
    fields = {m.group(1) for m in re.finditer(r"^\s*(\w+)\??:", interface.group(1), re.M)}
    assert fields - {"authEmulatorUrl", "firestoreEmulator"} <= set(config), sorted(fields - set(config))
    assert config["apiUrl"] == root_plan["api_url"]
    assert config["apiKey"] and config["authDomain"].endswith(".firebaseapp.com")
    assert config["bucket"] in root_plan["bucket_names"].values()
    assert config["pipelines"] == root_plan["enabled_pipelines"]
    # The page's origin may call the API and PUT to the bucket (dev.tfvars: localhost:5173).
    api_origins = set(root_plan["inputs_api"]["config"]["env"]["API_CORS_ORIGINS"].split(","))
    bucket_origins = set(root_plan["inputs_storage"]["config"]["cors_origins"])
    assert "http://localhost:5173" in bucket_origins and bucket_origins <= api_origins
    scripts = json.loads((ROOT / "web" / "package.json").read_text())["scripts"]
    assert "output -json web_client_config" in scripts["build:deploy"]


def test_sign_in_providers_are_variables(tmp_path: Path) -> None:
    plan = plan_root(
        tmp_path,
        None,
        '-var=firebase_config={ sign_in = { anonymous = false }, authorized_domains = ["app.example.com"] }',
    )
    auth = plan["inputs_firebase"]["auth"]
    assert auth["anonymous"] is False and auth["email_password"] is True
    assert "app.example.com" in auth["authorized_domains"]


def test_plan_fails_with_no_sign_in_provider(tmp_path: Path) -> None:
    error = _plan_error(
        tmp_path, "-var=firebase_config={ sign_in = { anonymous = false, email_password = false } }"
    )
    assert "Enable at least one sign-in provider" in error


def test_signed_urls_can_be_signed_in_a_new_project(root_plan: dict[str, Any]) -> None:
    """The API signs through IAM signBlob: the IAM Credentials API must be on."""
    assert "iamcredentials.googleapis.com" in root_plan["inputs_project"]["services"]


def test_browser_uploads_pass_the_cors_preflight() -> None:
    """The signed PUT carries x-goog-content-length-range (api/ signs it, web/ sends it)."""
    bucket = resource_body("storage", "google_storage_bucket")
    (cors,) = [body for kind, labels, body in bucket.blocks if kind == "dynamic" and labels == ["cors"]]
    headers = cors.blocks[0][2].attributes["response_header"]
    signed = {
        h.lower() for f in (ROOT / "api").glob("*.py") for h in re.findall(r"x-goog-[a-z-]+", f.read_text())
    }
    assert "x-goog-content-length-range" in signed
    for header in signed:
        assert f'"{header}"' in headers, header


def test_the_api_is_public_without_an_allusers_binding() -> None:
    service = resource_body("api", "google_cloud_run_v2_service")
    assert service.attributes["invoker_iam_disabled"] == "var.config.public"
    members = [
        body.attributes.get("member", "")
        for f in tf_files()
        for kind, _, body in tfcheck.parse_hcl(f.read_text()).blocks
        if kind == "resource"
    ]
    assert not [m for m in members if "allUsers" in m or "allAuthenticatedUsers" in m]


def test_destroy_then_apply_recreates_an_unprotected_firestore_database() -> None:
    database = resource_body("firestore", "google_firestore_database")
    assert database.attributes["deletion_policy"] == 'var.database.delete_protection ? "ABANDON" : "DELETE"'
    assert "DELETE_PROTECTION_DISABLED" in database.attributes["delete_protection_state"]


def test_the_worker_pool_plans_without_a_permanent_diff() -> None:
    pool = resource_body("gpu-service", "google_cloud_run_v2_worker_pool")
    assert "launch_stage" not in pool.attributes
    text = (TF / "modules" / "gpu-service" / "variables.tf").read_text()
    assert "beta-only" not in text


def test_plan_fails_for_a_worker_pool_of_zero_instances(tmp_path: Path) -> None:
    error = _plan_error(tmp_path, "-var=worker_pool_config={ enabled = true, instance_count = 0 }")
    assert "instance_count must be 1 or more" in error


def test_plan_fails_for_an_rtx_pro_6000_below_its_minimums(tmp_path: Path) -> None:
    error = _plan_error(tmp_path, '-var=gpu_service_config={ accelerator = "nvidia-rtx-pro-6000" }')
    assert "20 CPU and 80Gi for nvidia-rtx-pro-6000" in error


def test_enabling_an_api_does_not_replace_the_storage_agents_grant() -> None:
    """No data source waits on the APIs except the Storage agent's (its read creates the agent):
    a data source deferred by depends_on is read again at every apply that changes an API,
    and whatever uses it is replaced."""
    top = tfcheck.parse_hcl((TF / "modules" / "project" / "main.tf").read_text())
    data = {labels[0]: body for kind, labels, body in top.blocks if kind == "data"}
    assert list(data) == ["google_storage_project_service_account"]
    depends = data["google_storage_project_service_account"].attributes["depends_on"]
    assert depends.replace(" ", "") == "[google_project_service.storage]"
    services = resource_body("project", "google_project_service")
    assert '"storage.googleapis.com"' in services.attributes["for_each"]  # left out of the set


BOOTSTRAP = TF / "bootstrap"


@needs_terraform
def test_bootstrap_gives_cloud_build_its_own_account_with_the_roles_the_deploy_needs(tmp_path: Path) -> None:
    """terraform/bootstrap (applied once by an owner) plans, mirrored like the modules, and its
    deployer holds logging.logWriter (CLOUD_LOGGING_ONLY) and an admin role for every kind of
    resource the deployment creates."""
    (tmp_path / "main.tf").write_text(mirror_module(BOOTSTRAP))
    shutil.copy(BOOTSTRAP / "variables.tf", tmp_path / "variables.tf")
    assert _terraform(tmp_path, "init", "-backend=false").returncode == 0
    result = _terraform(tmp_path, "apply", "-auto-approve", "-var=project_id=p", "-var=region=europe-west1")
    assert result.returncode == 0, result.stdout + result.stderr
    top = tfcheck.parse_hcl((BOOTSTRAP / "main.tf").read_text())
    members = {
        body.attributes["member"]
        for kind, labels, body in top.blocks
        if kind == "resource" and labels[0] == "google_project_iam_member"
    }
    assert members == {'"serviceAccount:${google_service_account.deployer.email}"'}
    locals_ = next(b for k, _, b in top.blocks if k == "locals")
    granted = set(re.findall(r'"(roles/[\w.]+)"', locals_.attributes["deployer_roles"]))
    assert "roles/logging.logWriter" in granted
    prefixes = {
        "google_artifact_registry": "artifactregistry",
        "google_bigquery": "bigquery",
        "google_cloud_run": "run",
        "google_cloud_scheduler": "cloudscheduler",
        "google_eventarc": "eventarc",
        "google_firebase": "firebase",
        "google_firebaserules": "firebase",  # firebase.admin covers the rules
        "google_firestore": "datastore",
        "google_identity_platform": "identityplatform",
        "google_logging": "logging",
        "google_project_iam": "resourcemanager",
        "google_project_service": "serviceusage",
        "google_pubsub": "pubsub",
        "google_service_account": "iam",
        "google_storage": "storage",
    }
    for rtype in {t for t in resource_types() if not t.startswith("data.")}:
        service = next(
            v for k, v in sorted(prefixes.items(), key=lambda kv: -len(kv[0])) if rtype.startswith(k)
        )
        assert any(r.startswith(f"roles/{service}.") for r in granted), f"{rtype}: no roles/{service}.*"


def test_plan_fails_on_a_topology_error_python_also_rejects(tmp_path: Path) -> None:
    topology = load_topology()
    topology["pipeline_defaults"]["message_retention_seconds"] = 604801
    assert "604800 (7 days)" in _plan_error(tmp_path, topology=topology)


# --------------------------------------------------------------------------------------------
# Images and Cloud Build
# --------------------------------------------------------------------------------------------

GPU_DOCKERFILE = ROOT / "gpu_service" / "Dockerfile"
FUNCTIONS_DOCKERFILE = ROOT / "functions" / "Dockerfile"


def _instructions(dockerfile: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_gpu_dockerfile_installs_cuda_torch_first_and_runs_as_non_root() -> None:
    lines = _instructions(GPU_DOCKERFILE)
    torch = next(
        i
        for i, line in enumerate(lines)
        if "pip install" in line and "torch==" in line and "--index-url" in line
    )
    service = next(
        i
        for i, line in enumerate(lines)
        if re.search(r'pip install (-c constraints.txt )?".\[service\]"', line)
    )
    assert torch < service
    assert any("ffmpeg" in line and "tesseract-ocr" in line for line in lines)
    assert any(re.match(r"COPY (--link )?\S*MODELS_DIR\S* /models/?$", line) for line in lines)
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")
    assert lines[-1] == 'CMD ["python", "-m", "gpu_service"]'


def test_functions_dockerfile_has_no_torch() -> None:
    lines = _instructions(FUNCTIONS_DOCKERFILE)
    assert lines[0].startswith("FROM python:3.11-slim")
    assert not any(re.search(r"pip install[^&;|]*torch", line) for line in lines)
    assert not any("[service]" in line for line in lines)
    assert 'ENTRYPOINT ["functions-framework", "--signature-type=cloudevent"]' in lines
    users = [line for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("USER root", "USER 0")


def test_terraform_runs_functions_framework_with_the_topology_target() -> None:
    text = strip_comments((TF / "modules" / "functions" / "main.tf").read_text())
    assert 'command = ["functions-framework"]' in text
    assert '"--target=${each.value.target}"' in text and '"--signature-type=cloudevent"' in text
    assert 'operator  = "match-path-pattern"' in text
    assert '"application/protobuf"' in text


@pytest.fixture(scope="module")
def cloudbuild() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert isinstance(data, dict)
    return data


def _steps(cloudbuild: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for s in cloudbuild["steps"]}


def _args(step: dict[str, Any]) -> str:
    return " ".join(str(a) for a in step.get("args", []))


def test_cloudbuild_builds_both_dockerfiles_in_parallel_after_tests(cloudbuild: dict[str, Any]) -> None:
    steps = _steps(cloudbuild)
    builds = {
        dockerfile: step_id
        for step_id, step in steps.items()
        for dockerfile in ("functions/Dockerfile", "gpu_service/Dockerfile")
        if re.search(rf"(^|\s)-f {re.escape(dockerfile)}(\s|$)", _args(step))
        and "build" in step.get("args", [])
    }
    assert set(builds) == {"functions/Dockerfile", "gpu_service/Dockerfile"}
    for step_id in builds.values():
        wait_for = steps[step_id].get("waitFor", [])
        assert "test" in wait_for, f"{step_id} must wait for the tests"
        assert not set(wait_for) & set(builds.values()), f"{step_id} must not wait for the other image"
    assert "bash .ci/run" in _args(steps["test"])
    assert all(Path(ROOT, d).is_file() for d in builds)


def test_cloudbuild_deploys_the_pushed_tags(cloudbuild: dict[str, Any]) -> None:
    subs = cloudbuild["substitutions"]
    assert {"_REGION", "_REPO", "_TF_STATE_BUCKET"} <= set(subs)
    for image in ("_FUNCTIONS_IMAGE", "_GPU_SERVICE_IMAGE"):
        assert subs[image].startswith("${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPO}/")
        assert subs[image].endswith(":${SHORT_SHA}")
    steps = _steps(cloudbuild)
    pushes = [sid for sid, s in steps.items() if "docker push" in _args(s)]
    assert len(pushes) == 2
    deploy = steps["deploy"]
    assert set(pushes) <= set(deploy["waitFor"])
    script = _args(deploy)
    assert "bucket=${_TF_STATE_BUCKET}" in steps["registry"]["args"][-1]
    assert "bucket=${_TF_STATE_BUCKET}" in script
    assert (
        "functions_image=${_FUNCTIONS_IMAGE}" in script
        and "gpu_service_image=${_GPU_SERVICE_IMAGE}" in script
    )
    # Cloud Build substitutes $NAME itself: anything else must be escaped as $$NAME or $$(...).
    known = set(subs) | {"PROJECT_ID", "PROJECT_NUMBER", "SHORT_SHA", "COMMIT_SHA", "BUILD_ID", "LOCATION"}
    for step in cloudbuild["steps"]:
        script = _args(step)
        unknown = set(re.findall(r"(?<!\$)\$\{?([A-Za-z_][A-Za-z0-9_]*)", script)) - known
        assert not unknown, f"{step['id']}: escape shell variables {sorted(unknown)} as $$NAME"
        assert not re.search(r"(?<!\$)\$\(", script), f"{step['id']}: escape $( as $$("


def test_cloudbuild_fails_without_the_vars_file_and_applies_the_saved_plan(
    cloudbuild: dict[str, Any],
) -> None:
    steps = _steps(cloudbuild)
    vars_file = cloudbuild["substitutions"]["_TF_VARS_FILE"]
    assert (TF / vars_file).is_file(), f"terraform/{vars_file} must be committed"
    for step_id in ("registry", "deploy"):
        script = _args(steps[step_id])
        assert 'test -f "${_TF_VARS_FILE}" ||' in script, step_id
        assert '-var-file="${_TF_VARS_FILE}"' in script, step_id
    deploy = _args(steps["deploy"])
    assert "terraform plan -input=false -out=tfplan" in deploy
    assert "terraform apply -input=false tfplan" in deploy
    assert "-auto-approve" not in deploy
    assert deploy.index("plan -input=false") < deploy.index("apply -input=false tfplan")


def test_cloudbuild_runs_the_terraform_tests(cloudbuild: dict[str, Any]) -> None:
    steps = _steps(cloudbuild)
    test = steps["test"]
    assert "terraform-bin" in test["waitFor"]
    assert "GPU_JOBS_REQUIRE_TOOLS=1" in test["env"]
    assert 'export PATH="/workspace/.ci-bin:$$PATH"' in _args(test)
    assert steps["terraform-bin"]["name"] == steps["deploy"]["name"], "tests and deploy: one Terraform"
    assert ".ci-bin/terraform" in _args(steps["terraform-bin"])


def test_cloudbuild_locks_the_providers(cloudbuild: dict[str, Any]) -> None:
    steps = _steps(cloudbuild)
    validate = _args(steps["terraform-validate"])
    assert "terraform providers lock" in validate and "-platform=linux_amd64" in validate
    # Only the init that creates the missing lock file may write it; every other one reads it.
    creating = re.search(r"if \[ ! -f \.terraform\.lock\.hcl \]; then(.*?)\n\s*fi\n", validate, re.S)
    assert creating and "terraform init" in creating.group(1)
    for step in cloudbuild["steps"]:
        text = (
            _args(step).replace(creating.group(1), "") if step["id"] == "terraform-validate" else _args(step)
        )
        for init in re.findall(r"terraform init[^\n]*", text):
            assert "-lockfile=readonly" in init, f"{step['id']}: {init}"


CLOUDBUILD_TERRAFORM_STEPS = ["terraform-validate", "registry", "deploy"]


def cloudbuild_script(cloudbuild: dict[str, Any], step_id: str, values: dict[str, str]) -> str:
    """A step's shell script after Cloud Build's substitutions ($$ is a literal $)."""
    subs = {**cloudbuild["substitutions"], **values}

    def expand(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: subs.get(m.group(1), m.group(0)), text)

    for _ in range(5):  # dynamic substitutions may refer to others
        subs = {k: expand(v) for k, v in subs.items()}
    script = _steps(cloudbuild)[step_id]["args"][-1].replace("$$", "\0")
    script = re.sub(r"\$\{(\w+)\}", lambda m: subs[m.group(1)], script)
    return script.replace("\0", "$")


def fresh_checkout(base: Path) -> Path:
    """The mirrored root as a fresh checkout sees it: formatted, no .terraform, no lock file,
    the committed tfvars; and a `terraform` that keeps its state locally (drops -backend-config)."""
    root = prepare_root(base)
    shutil.rmtree(root / ".terraform")
    (root / ".terraform.lock.hcl").unlink(missing_ok=True)
    shutil.copytree(TF / "envs", root / "envs")
    subprocess.run([str(TERRAFORM), "fmt", "-recursive", str(root)], capture_output=True, check=True)
    shim = base / "bin" / "terraform"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do shift; case "$a" in -backend-config=*) ;; *) set -- "$@" "$a" ;; esac; done\n'
        f'exec {TERRAFORM} "$@"\n'
    )
    shim.chmod(0o755)
    return root


def run_step(base: Path, script: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{base / 'bin'}:{os.environ['PATH']}",
        "CHECKPOINT_DISABLE": "1",
        "TF_IN_AUTOMATION": "1",
    }
    return subprocess.run(
        ["sh", "-euc", script], cwd=base, capture_output=True, text=True, env=env, timeout=300, check=False
    )


@needs_terraform
def test_cloudbuild_terraform_steps_run_in_order_on_a_fresh_checkout(
    tmp_path: Path, cloudbuild: dict[str, Any]
) -> None:
    """The build's own shell, step by step in its waitFor order, against the mirrored root: an
    init-order mistake (e.g. `providers lock` before any `init`) fails here as in Cloud Build."""
    steps = _steps(cloudbuild)
    assert "terraform-validate" in steps["registry"]["waitFor"]
    assert "registry" in " ".join(steps["push-functions"]["waitFor"] + steps["push-gpu-service"]["waitFor"])
    fresh_checkout(tmp_path)
    values = {"PROJECT_ID": "my-gpu-jobs-dev", "SHORT_SHA": "abc1234", "_TF_STATE_BUCKET": "state"}
    for step_id in CLOUDBUILD_TERRAFORM_STEPS:
        result = run_step(tmp_path, cloudbuild_script(cloudbuild, step_id, values))
        assert result.returncode == 0, f"step {step_id}:\n{result.stdout}{result.stderr}"
    root = tmp_path / "terraform"
    assert (root / ".terraform.lock.hcl").is_file()  # the validate step made it
    assert "module.api" in (root / "tfplan.txt").read_text()


@needs_terraform
def test_locking_the_providers_before_init_fails_on_a_fresh_checkout(tmp_path: Path) -> None:
    """What the step-order test guards against: the first build's old order."""
    fresh_checkout(tmp_path)
    result = run_step(tmp_path, "cd terraform\nterraform providers lock -platform=linux_amd64")
    assert result.returncode != 0
    assert "Module not installed" in result.stdout + result.stderr


def test_cloudbuild_creates_the_registry_before_pushing_and_reuses_layers(cloudbuild: dict[str, Any]) -> None:
    steps = _steps(cloudbuild)
    assert "-target=module.artifact_registry" in _args(steps["registry"])
    for step_id in ("push-functions", "push-gpu-service"):
        assert "registry" in steps[step_id]["waitFor"]
    for step_id, cache in (
        ("build-functions", "_FUNCTIONS_CACHE"),
        ("build-gpu-service", "_GPU_SERVICE_CACHE"),
    ):
        args = steps[step_id]["args"]
        assert args[args.index("--cache-from") + 1] == "${" + cache + "}"
        assert "BUILDKIT_INLINE_CACHE=1" in args


def test_gcloudignore_uploads_what_the_build_needs() -> None:
    """Without .gcloudignore, gcloud applies .gitignore, and terraform/envs/*.tfvars never reached
    Cloud Build: the defaults were applied instead of the documented settings."""
    ignore = ROOT / ".gcloudignore"
    assert ignore.is_file()
    excluded = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", f"--exclude-from={ignore}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    needed = [
        "cloudbuild.yaml",
        "constraints.txt",
        "pyproject.toml",
        "functions/Dockerfile",
        "gpu_service/Dockerfile",
        "infra/topology.yaml",
        *(str(p.relative_to(ROOT)) for p in TFVARS),
    ]
    assert not set(needed) & set(excluded), sorted(set(needed) & set(excluded))
    patterns = ignore.read_text().split()
    assert "/models/" in patterns and ".venv/" in patterns and ".git/" in patterns


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_python_rejects_every_topology_terraform_rejects(case: str) -> None:
    # One set of rules: the local stack and the services refuse what `terraform plan` refuses.
    from pydantic import ValidationError

    from infra.topology import Topology

    mutate, _ = BROKEN[case]
    with pytest.raises((ValidationError, ValueError)):
        Topology.model_validate(_broken(mutate))


def test_cloudbuild_gives_terraform_the_plugins_of_the_built_image(cloudbuild: dict[str, Any]) -> None:
    steps = _steps(cloudbuild)
    step = steps["plugin-vars"]
    script = _args(step)
    # Run in the GPU image that is deployed, so the variable lists exactly what it has installed;
    # terraform/ loads *.auto.tfvars.json without a -var-file.
    assert "docker run --rm --entrypoint python ${_GPU_SERVICE_IMAGE} -m pipelines.registry" in script
    assert script.endswith("> terraform/plugins.auto.tfvars.json") and "pipefail" in script
    assert step["waitFor"] == ["build-gpu-service"] and "plugin-vars" in steps["deploy"]["waitFor"]


def test_the_apis_connection_limits_reach_it_within_cloud_runs(
    root_plan: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.settings import Settings

    config = root_plan["inputs_api"]["config"]
    env = config["env"]
    monkeypatch.setenv("API_HEAD_SECONDS", env["API_HEAD_SECONDS"])
    monkeypatch.setenv("API_BODY_SECONDS", env["API_BODY_SECONDS"])
    monkeypatch.setenv("API_MAX_CONNECTIONS", env["API_MAX_CONNECTIONS"])
    settings = Settings()
    # Cloud Run sends an instance up to `concurrency` requests: the API must not refuse them, and
    # it must answer a slow request 408 before Cloud Run's own request timeout cuts it.
    assert settings.api_max_connections >= config["concurrency"]
    assert settings.api_head_seconds + settings.api_body_seconds < config["timeout_seconds"]
    (tmp_path / "few").mkdir()
    (tmp_path / "slow").mkdir()
    error = _plan_error(tmp_path / "few", "-var=api_config={ concurrency = 80, max_connections = 40 }")
    assert "max_connections must be at least api_config.concurrency" in error
    error = _plan_error(tmp_path / "slow", "-var=api_config={ timeout_seconds = 30, body_seconds = 30 }")
    assert "below api_config.timeout_seconds" in error
