"""``gpujobs``: submit jobs, follow them with a progress bar, list them.

Against the local stack it reads ``.local/stack.env`` (written by ``make up``); against a real
project, set ``GOOGLE_CLOUD_PROJECT`` and ``MEDIA_BUCKET`` and use Application Default Credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from core.contract import JobDoc, JobStatus
from core.spec import PipelineSpec
from infra.settings import Settings
from pipelines.registry import BUILTIN_ORIGIN, Registry, plugin_topology, registry

DEFAULT_ENV_FILE = Path(".local/stack.env")


def load_env_file(path: Path) -> None:
    """Put ``KEY=value`` lines into the environment (without overriding what is set)."""
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            os.environ.setdefault(key, value)


class ProgressBar:
    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.last = ""

    def __call__(self, job: JobDoc) -> None:
        status = job.status.value if job.status else "pending"
        fraction = job.progress.fraction if job.progress else 0.0
        stage = job.progress.stage if job.progress else ""
        filled = int(fraction * self.width)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {fraction:4.0%} {status:<9} {stage:<20}"
        if line != self.last:
            self.stream.write(line)
            self.stream.flush()
            self.last = line
        if job.status and job.status.is_final:
            self.stream.write("\n")


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--input takes key=value, got {pair!r}")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def print_job(job_id: str, job: JobDoc, as_json: bool) -> None:
    data = job.to_firestore()
    if as_json:
        print(json.dumps({"id": job_id, **data}, default=str, indent=2))
        return
    print(f"job {job_id}: {job.status.value if job.status else 'pending'}")
    if job.error:
        print(f"  error: [{job.error.code}] {job.error.message} (retryable: {job.error.retryable})")
    if job.outputs:
        for key, value in job.outputs.items():
            if key == "segments":
                print(f"  segments: {len(value or [])}")
            elif isinstance(value, dict):
                for k, v in value.items():
                    print(f"  {key}.{k}: {v}")
            else:
                print(f"  {key}: {value}")
    if job.timings:
        print("  timings (s): " + ", ".join(f"{k} {v}" for k, v in job.timings.to_firestore().items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpujobs", description=__doc__)
    parser.add_argument(
        "--env-file", type=Path, help="KEY=value settings (default: .local/stack.env if present)"
    )
    parser.add_argument("--json", action="store_true", help="print jobs as JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("submit", help="upload inputs, create a job, follow it")
    s.add_argument("pipeline")
    s.add_argument("--uid", default="cli-user")
    s.add_argument("--file", type=Path, help="input file to upload")
    s.add_argument("--field", help="the input field the file fills (default: the pipeline's drop field)")
    s.add_argument("--input", action="append", default=[], metavar="KEY=VALUE", help="an input (JSON value)")
    s.add_argument("--drop", action="store_true", help="start the job by the upload alone")
    s.add_argument("--no-wait", action="store_true")
    s.add_argument("--timeout", type=float, default=600)

    w = sub.add_parser("watch", help="follow a job until it ends")
    w.add_argument("job_id")
    w.add_argument("--timeout", type=float, default=600)

    ls = sub.add_parser("list", help="a user's jobs, newest first")
    ls.add_argument("--uid", default="cli-user")
    ls.add_argument("--limit", type=int, default=20)

    c = sub.add_parser("cancel", help="ask a job to stop")
    c.add_argument("job_id")

    p = sub.add_parser("pipelines", help="the pipelines this deployment knows, and broken plugins")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "--topology",
        action="store_true",
        help="print the enabled plugins' topology entries as JSON (what the local stack adds)",
    )
    shown.add_argument(
        "--tfvars",
        action="store_true",
        help="print Terraform's plugin_pipelines for every installed plugin (a *.auto.tfvars.json)",
    )

    args = parser.parse_args(argv)
    env_file = args.env_file or (DEFAULT_ENV_FILE if DEFAULT_ENV_FILE.exists() else None)
    if env_file:
        load_env_file(env_file)
    settings = Settings()

    found = registry(tuple(settings.plugins))
    known = found.specs
    if args.command == "pipelines":
        if args.topology:
            print(json.dumps(plugin_topology(settings.enabled_pipelines, settings.plugins), indent=2))
        elif args.tfvars:
            print(json.dumps({"plugin_pipelines": found.tfvars()}, indent=2))
        else:
            print_pipelines(found, settings.enabled_pipelines)
        return 1 if found.broken and not (args.topology or args.tfvars) else 0

    from google.auth.exceptions import DefaultCredentialsError

    from infra.client import Client

    try:
        client = Client.from_settings(settings)
    except DefaultCredentialsError:
        print(
            "no local stack settings (.local/stack.env: start it with 'make up') and no Google "
            "credentials for a real project (gcloud auth application-default login)",
            file=sys.stderr,
        )
        return 2
    if args.command == "submit":
        return _submit(client, args, known.get(args.pipeline))
    if args.command == "watch":
        job = client.follow(args.job_id, ProgressBar(), timeout=args.timeout)
        print_job(args.job_id, job, args.json)
        return 0 if job.status is JobStatus.SUCCEEDED else 1
    if args.command == "list":
        for job_id, job in client.list(args.uid, args.limit):
            stage = f" ({job.progress.stage} {job.progress.fraction:.0%})" if job.progress else ""
            print(f"{job_id}  {job.pipeline:<11} {(job.status or 'pending'):<9}{stage}  {job.created_at}")
        return 0
    if args.command == "cancel":
        client.cancel(args.job_id)
        print(f"cancel requested for {args.job_id}")
        return 0
    return 2


def print_pipelines(found: Registry, enabled: list[str]) -> None:
    for name, spec in sorted(found.specs.items()):
        state = "enabled" if name in enabled else "disabled"
        origin = "" if found.origins[name] == BUILTIN_ORIGIN else f" [plugin: {found.origins[name]}]"
        print(f"{name:<12} {state:<9} {spec.description}{origin}")
    for broken in found.broken:
        print(f"BROKEN plugin {broken.describe()}")


def _submit(client: Any, args: argparse.Namespace, spec: PipelineSpec | None) -> int:
    inputs = parse_inputs(args.input)
    if args.drop:
        if not args.file:
            raise SystemExit("--drop needs --file")
        import uuid

        job_id = uuid.uuid4().hex
        metadata = {"jobId": job_id}
        if inputs:
            metadata["inputs"] = json.dumps(inputs)
        client.upload(args.file, args.uid, pipeline=args.pipeline, metadata=metadata)
    else:
        if args.file:
            field = args.field or (spec.drop_field if spec else None)
            if not field:
                raise SystemExit(f"say which input the file is with --field (pipeline {args.pipeline!r})")
            inputs[field] = client.upload(args.file, args.uid)
        job_id = client.create_job(args.uid, args.pipeline, inputs)
    print(f"job {job_id} submitted", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    job = client.follow(job_id, ProgressBar(), timeout=args.timeout)
    print_job(job_id, job, args.json)
    return 0 if job.status is JobStatus.SUCCEEDED else 1
