"""tools/tfcheck.py: terraform/ checked offline against the Google provider's schema.

The schemas come from the npm packages pinned in tools/tfschema (scripts/setup.sh installs them).
Without them these tests skip, except where GPU_JOBS_REQUIRE_TOOLS=1 (Cloud Build): there they fail.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tools import tfcheck

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
REQUIRE_TOOLS = os.environ.get("GPU_JOBS_REQUIRE_TOOLS") == "1"


@pytest.fixture(scope="module", autouse=True)
def schemas_installed() -> None:
    missing = [str(p) for p in tfcheck.installed_schemas().values() if not p.is_file()]
    if missing:
        message = f"schema packages not installed ({missing[0]}): run scripts/setup.sh"
        if REQUIRE_TOOLS:
            pytest.fail(f"{message}, and GPU_JOBS_REQUIRE_TOOLS=1 says they must be")
        pytest.skip(message)


def planted(tmp_path: Path, module: str, old: str, new: str) -> Path:
    """A copy of terraform/ with one edit in modules/<module>/main.tf."""
    copy = tmp_path / "terraform"
    shutil.copytree(TF, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    main = copy / "modules" / module / "main.tf"
    text = main.read_text()
    assert old in text, f"{old!r} is no longer in {module}/main.tf: update this test"
    main.write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.slow
def test_terraform_matches_the_provider_schema_at_the_floors_and_the_newest() -> None:
    report = tfcheck.check()
    assert report.findings == []
    floors = tfcheck.version_floors(TF)
    labels = set(report.checked)
    for provider in tfcheck.PROVIDERS:
        assert f"{provider} {floors[provider]}" in labels
        assert f"{provider} {tfcheck.newest(provider)}" in labels
    assert report.names > 300


def test_a_misspelled_argument_is_reported(tmp_path: Path) -> None:
    copy = planted(tmp_path, "storage", "uniform_bucket_level_access", "uniform_bucket_access")
    report = tfcheck.check(copy)
    assert any(
        "google_storage_bucket.default: unknown argument uniform_bucket_access" in f for f in report.findings
    ), report.findings
    # ... and the required argument it replaced is not missed (it is optional: only the typo).
    assert all("storage/main.tf" in f for f in report.findings)
    assert tfcheck.main([str(copy)]) == 1


def test_a_block_written_as_an_argument_is_reported(tmp_path: Path) -> None:
    copy = planted(tmp_path, "storage", "versioning {", "versioning = {")
    findings = tfcheck.check(copy).findings
    assert any("versioning is a block, written as an argument" in f for f in findings), findings


def test_an_argument_written_as_a_block_is_reported(tmp_path: Path) -> None:
    copy = planted(tmp_path, "api", "limits = {", "limits {")
    findings = tfcheck.check(copy).findings
    assert any(
        "template.containers.resources: limits is an argument, written as a block" in f for f in findings
    )


def test_a_missing_required_argument_is_reported(tmp_path: Path) -> None:
    copy = planted(tmp_path, "storage", "  location                    = var.config.location\n", "")
    findings = tfcheck.check(copy).findings
    assert any("google_storage_bucket.default: required location is not set" in f for f in findings), findings


def test_a_misspelled_argument_in_a_dynamic_block_is_reported(tmp_path: Path) -> None:
    copy = planted(tmp_path, "gpu-service", "mount_path = volume_mounts.value.mount_path", "path = 1")
    findings = tfcheck.check(copy).findings
    assert any("volume_mounts: unknown argument path" in f for f in findings), findings
    assert any("volume_mounts: required mount_path is not set" in f for f in findings), findings


def test_an_argument_newer_than_the_floor_is_reported_for_the_floor_only(tmp_path: Path) -> None:
    """scaling.manual_instance_count on a Cloud Run service is newer than google 6.28.0: the newest
    schema accepts it, the floor that versions.tf still allows must not."""
    copy = planted(
        tmp_path,
        "api",
        "\n  template {\n",
        "\n  scaling {\n    manual_instance_count = 1\n  }\n  template {\n",
    )
    findings = tfcheck.check(copy).findings
    assert findings, "an argument the floor lacks must be caught"
    assert all("(google 6.28.0)" in f for f in findings), findings
    assert any("default.scaling: unknown argument manual_instance_count" in f for f in findings), findings


def test_a_floor_without_a_pinned_schema_is_an_error(tmp_path: Path) -> None:
    copy = planted(tmp_path, "api", "", "")
    versions = copy / "modules" / "api" / "versions.tf"
    versions.write_text(versions.read_text().replace(">= 6.28.0", ">= 6.30.0"))
    with pytest.raises(tfcheck.SchemaError, match=r"no schema for google 6\.30\.0"):
        tfcheck.check(copy)


def test_every_pinned_schema_is_the_provider_version_its_name_says() -> None:
    for (provider, version), path in tfcheck.installed_schemas().items():
        schema = tfcheck.load_schema(provider, version)
        assert (schema.provider, schema.version) == (provider, version), path
        assert "google_storage_bucket" in schema.resources


def test_the_hcl_reader_keeps_arguments_and_blocks_apart() -> None:
    body = tfcheck.parse_hcl(
        'resource "t" "n" {\n  a = { k = "}" }\n  b { k = 1 }\n'
        '  dynamic "c" {\n    for_each = var.x\n    content {\n      d = "x${f("}")}"\n    }\n  }\n}\n'
    )
    ((kind, labels, resource),) = body.blocks
    assert (kind, labels) == ("resource", ["t", "n"])
    assert resource.attributes == {"a": '{ k = "}" }'}
    assert [(t, labels) for t, labels, _ in resource.blocks] == [("b", []), ("dynamic", ["c"])]
    content = resource.blocks[1][2].blocks[0][2]
    assert content.attributes == {"d": '"x${f("}")}"'}


def test_make_lint_and_cloud_build_run_the_check() -> None:
    makefile = (ROOT / "Makefile").read_text()
    lint = re.search(r"^lint:.*?(?=^\S)", makefile + "\nend:", re.S | re.M)
    assert lint and "tools.tfcheck" in lint.group(0)
    steps = {s["id"]: s for s in yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())["steps"]}
    assert "python -m tools.tfcheck" in steps["terraform-schema"]["args"][-1]
    # Nothing is applied (the registry step is the first apply) before the check passes.
    assert "terraform-schema" in steps["registry"]["waitFor"]
    assert "tools/tfschema" in (ROOT / "scripts" / "setup.sh").read_text()
