"""Terraform for usage and retention: the log sink selects exactly the usage line the worker
prints, and result objects expire by their custom time."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from core.contract import JobDoc, JobStatus, Usage
from core.usage import USAGE_LOG_KIND, log_line, log_record
from tools import tfcheck

TF = tfcheck.TERRAFORM


def _resource(path: str, kind: str) -> tfcheck.Body:
    text = (TF / path).read_text()
    for block_type, labels, body in tfcheck.parse_hcl(text).blocks:
        if block_type == "resource" and labels[0] == kind:
            return body
    raise AssertionError(f"{path} has no {kind}")


def test_the_sinks_filter_selects_the_usage_line_the_worker_prints() -> None:
    variables = (TF / "modules/usage-export/variables.tf").read_text()
    default = re.search(r'variable "log_kind".*?default\s*=\s*"([^"]+)"', variables, re.S)
    assert default is not None and default.group(1) == USAGE_LOG_KIND
    main = (TF / "modules/usage-export/main.tf").read_text()
    assert 'filter                 = "jsonPayload.kind=\\"${var.log_kind}\\""' in main
    # and the line carries it where Cloud Logging puts a JSON payload's fields
    job = JobDoc(uid="u", pipeline="tts")
    line = json.loads(
        log_line(log_record("j", job, JobStatus.SUCCEEDED, Usage(), day="2026-12-06"), datetime.now(UTC))
    )
    assert line["kind"] == USAGE_LOG_KIND


def test_the_dataset_and_sink_exist_and_the_sink_may_write_the_dataset() -> None:
    _resource("modules/usage-export/main.tf", "google_bigquery_dataset")
    sink = _resource("modules/usage-export/main.tf", "google_logging_project_sink")
    assert "unique_writer_identity" in sink.attributes
    _resource("modules/usage-export/main.tf", "google_bigquery_dataset_iam_member")
    root = (TF / "main.tf").read_text()
    assert 'module "usage_export"' in root and "bigquery.googleapis.com" in root


def test_result_objects_expire_by_their_custom_time() -> None:
    main = (TF / "modules/storage/main.tf").read_text()
    rule = re.search(
        r"days_since_custom_time\s*=\s*lifecycle_rule\.value\s+matches_prefix\s*=\s*\[\"results/\"\]", main
    )
    assert rule is not None
    assert re.search(r"for_each = var\.config\.custom_time_expiry \? \[0\] : \[\]", main)
