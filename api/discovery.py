"""``GET /v1/pipelines``: what this deployment runs, described well enough for an app to build
its job form (the web client does): each enabled pipeline's input and output JSON Schema from
its spec's pydantic models, the files it takes, the caps on what a job may cost, and whether it
shows partial output while it runs.

File inputs are plain ``gs://`` strings in the models; the schema marks each with ``x-file``
(``{contentTypes, maxBytes}``), on the property itself or, for a ``dict`` of files, on its
``additionalProperties``, so a form can offer an upload there. The answer changes only when the
deployment does: it is built once per process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from typing import Any

from pydantic import BaseModel, Field

from api.models import _Body
from core.spec import Catalog, FileInput, PipelineSpec, _dict_file_fields, file_fields

log = logging.getLogger(__name__)

#: the JSON Schema keyword that marks an input taking an uploaded file
FILE_KEYWORD = "x-file"
#: how long a client may reuse the answer without asking again
MAX_AGE_SECONDS = 300


class FileRule(_Body):
    """What an uploaded file of one input may be."""

    content_types: list[str] = Field(description="MIME type patterns such as audio/* or image/png")
    max_bytes: int = Field(description="the largest object accepted, in bytes")


class CostCap(_Body):
    """A cap on a quantity a job's cost follows, checked before the job is queued."""

    quantity: str = Field(examples=["duration_seconds"])
    field: str | None = Field(None, description="the input it applies to; none: the inputs as a whole")
    max: float = Field(description="the deployment's cap")
    unit: str = ""
    code: str = Field(description="the error code of a job over the cap")
    setting: str = Field(description="the pipeline setting that holds the cap")


class PipelineInfo(_Body):
    """One enabled pipeline, as an app sees it."""

    name: str
    description: str
    streams: bool = Field(description="whether a job shows partial output while it runs")
    drop_field: str | None = Field(
        None, description="the input that an upload to uploads/{uid}/{pipeline}/ fills (a drop upload)"
    )
    input_schema: dict[str, Any] = Field(description="JSON Schema of the job's inputs")
    output_schema: dict[str, Any] = Field(description="JSON Schema of a succeeded job's outputs")
    files: dict[str, FileRule] = Field(description="the inputs that take an uploaded file, by name")
    limits: list[CostCap]


class PipelineList(_Body):
    pipelines: list[PipelineInfo]


def _schema_node(schema: dict[str, Any], name: str) -> dict[str, Any] | None:
    node = schema.get("properties", {}).get(name)
    return node if isinstance(node, dict) else None


def _mark_dict(node: dict[str, Any], mark: dict[str, Any]) -> None:
    """Marks the values of a (possibly optional) object property as files."""
    for member in [node, *node.get("anyOf", [])]:
        if isinstance(member, dict) and member.get("type") == "object":
            values = member.get("additionalProperties")
            member["additionalProperties"] = {
                **(values if isinstance(values, dict) else {}),
                FILE_KEYWORD: mark,
            }


def _file_rule(rule: FileInput, upload_limit: int) -> FileRule:
    return FileRule(content_types=list(rule.content_types), max_bytes=min(rule.max_bytes, upload_limit))


def input_schema(spec: PipelineSpec, upload_limit: int) -> tuple[dict[str, Any], dict[str, FileRule]]:
    """The inputs' JSON Schema with its file inputs marked, and those inputs' rules."""
    schema = copy.deepcopy(spec.inputs.model_json_schema())
    files: dict[str, FileRule] = {}
    for name, rule in file_fields(spec.inputs).items():
        files[name] = _file_rule(rule, upload_limit)
        node = _schema_node(schema, name)
        if node is not None:
            node[FILE_KEYWORD] = files[name].model_dump(by_alias=True)
    for name, rule in _dict_file_fields(spec.inputs).items():
        files[name] = _file_rule(rule, upload_limit)
        node = _schema_node(schema, name)
        if node is not None:
            _mark_dict(node, files[name].model_dump(by_alias=True))
    return schema, files


def output_schema(spec: PipelineSpec) -> dict[str, Any]:
    """The outputs' JSON Schema, with the ``files`` the service adds (file key -> ``gs://`` URI)."""
    schema = copy.deepcopy(spec.outputs.model_json_schema())
    schema.setdefault("properties", {})["files"] = {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "the result files, file name -> gs:// URI (GET /v1/jobs/{id}/results signs them)",
    }
    return schema


def limits(spec: PipelineSpec, config: BaseModel | None) -> list[CostCap]:
    if config is None:
        return []
    return [
        CostCap(
            quantity=limit.quantity,
            field=limit.field,
            max=limit.cap(config),
            unit=limit.unit,
            code=limit.code,
            setting=limit.setting,
        )
        for limit in spec.costs
    ]


def describe(spec: PipelineSpec, catalog: Catalog, upload_limit: int) -> PipelineInfo:
    try:
        config: BaseModel | None = catalog.config(spec)
    except ValueError as exc:  # a bad setting fails the pipeline's jobs, not this list
        log.error("pipeline %s: its settings are not valid, its limits are left out: %s", spec.name, exc)
        config = None
    inputs, files = input_schema(spec, upload_limit)
    return PipelineInfo(
        name=spec.name,
        description=spec.description,
        streams=spec.streams,
        drop_field=spec.drop_field,
        input_schema=inputs,
        output_schema=output_schema(spec),
        files=files,
        limits=limits(spec, config),
    )


class Discovery:
    """The answer of ``GET /v1/pipelines``, built on first use and kept (with its ETag)."""

    def __init__(self, catalog: Catalog, upload_limit: int) -> None:
        self._catalog = catalog
        self._upload_limit = upload_limit
        self._body: bytes | None = None
        self._etag = ""

    def _build(self) -> None:
        found: list[PipelineInfo] = []
        for name in self._catalog.names:
            spec = self._catalog.specs[name]
            try:
                found.append(describe(spec, self._catalog, self._upload_limit))
            except Exception:  # a plugin's models that cannot be described leave only it out
                log.exception("pipeline %s cannot be described; it is left out of /v1/pipelines", name)
        listing = PipelineList(pipelines=found).model_dump(mode="json", by_alias=True)
        self._body = json.dumps(listing, separators=(",", ":")).encode()
        self._etag = '"' + hashlib.sha256(self._body).hexdigest()[:32] + '"'

    def answer(self) -> tuple[bytes, str]:
        """The JSON body and its ETag."""
        if self._body is None:
            self._build()
        assert self._body is not None
        return self._body, self._etag
