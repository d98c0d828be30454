"""The contract between the GPU service and a pipeline.

A pipeline is pure inference: it never touches Pub/Sub, Firestore, HTTP or ``os.environ``.
It is described by a :class:`PipelineSpec` that is cheap to import (pydantic models only, so the
functions can validate jobs without torch), and it is loaded once per process through the spec's
``loader`` import path, which returns an object with ``run(inputs, ctx) -> RunResult``.

Input files appear in a pipeline's ``Inputs`` model as ``gs://bucket/path`` strings annotated with
:class:`FileInput`; the functions check them (existence, owner, size, content type) and the GPU
service downloads them before ``run`` is called, passing local paths in ``RunContext.files``.
A ``dict[str, Annotated[GsUri, FileInput(...)]]`` field names several such files (one per entry,
keyed ``{field}.{entry}`` in ``RunContext.files``; see :func:`file_uris`).
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import types
import typing
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Generic, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict

from core.pubsub import AckDeadline, Mode, SubscriptionRetention
from core.pubsub import Backoff as Backoff  # plugins import it from here, beside Delivery
from core.routes import check_name
from core.work import part_key

_GS_URI = re.compile(r"^gs://(?P<bucket>[a-z0-9][a-z0-9._-]{1,220}[a-z0-9])/(?P<name>[^\r\n]+)\Z")


def parse_gs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/object`` into ``(bucket, object)``.

    Raises:
        ValueError: if ``uri`` is not a well-formed ``gs://`` URI naming an object.
    """
    m = _GS_URI.fullmatch(uri)
    if not m or m["name"].endswith("/"):
        raise ValueError(f"expected a file as gs://BUCKET/PATH, got {uri!r}")
    return m["bucket"], m["name"]


def _check_gs_uri(value: str) -> str:
    parse_gs_uri(value)
    return value


GsUri = Annotated[str, AfterValidator(_check_gs_uri)]


@dataclass(frozen=True)
class FileInput:
    """Marks an ``Inputs`` field as a Storage object and states what it may be.

    ``content_types`` are patterns such as ``"audio/*"``; ``max_bytes`` caps the object size.
    Use as ``media: Annotated[GsUri, FileInput(("audio/*", "video/*"), 500 * 2**20)]``.
    """

    content_types: tuple[str, ...]
    max_bytes: int
    #: optional ``"module:function"``; ``function(head, complete=, what=, config=)`` checks the first
    #: ``header_bytes`` of the object before the job is queued (image format and dimensions, say),
    #: raising ``InvalidInput``. ``complete`` says whether ``head`` is the whole object.
    header_check: str | None = None
    header_bytes: int = 256 * 1024
    #: optional ``"module:function"``; ``function(path, complete=, size=) -> {quantity: value}``
    #: measures a media file's cost-bearing quantities from its header (``duration_seconds``,
    #: ``sample_rate``, ``frames``, ``frame_pixels``...), which the spec's :class:`CostLimit` caps.
    #: It runs in the functions on the object's first and last ``header_bytes``, laid out in a
    #: sparse local file of the object's size (``complete``: the head is all of it; ``size``: the
    #: object's), and in the worker on the downloaded file, before any decoding.
    probe: str | None = None

    def accepts(self, content_type: str | None) -> bool:
        ct = (content_type or "").split(";")[0].strip().lower()
        return any(fnmatch.fnmatchcase(ct, pattern) for pattern in self.content_types)

    def run_header_check(self, head: bytes, *, complete: bool, what: str, config: BaseModel) -> None:
        if self.header_check:
            _import(self.header_check)(head, complete=complete, what=what, config=config)

    def run_probe(self, path: Path, *, complete: bool, size: int) -> dict[str, float]:
        if not self.probe:
            return {}
        measured: dict[str, float] = _import(self.probe)(path, complete=complete, size=size)
        return measured


@dataclass(frozen=True)
class CostLimit:
    """A property of a job's input that its cost (time, memory) follows, and the cap on it.

    A pipeline's spec lists these in ``costs``: the functions check each before the job is queued
    and the worker again before the pipeline decodes anything, so a small file that would take
    hours or gigabytes (a FLAC of hours of silence, a decompression bomb) ends as a clear error on
    its own job instead of taking down an instance.

    Attributes:
        quantity: what is measured: ``duration_seconds``, ``sample_rate``, ``frames``,
            ``frame_pixels``, ``pixels``, ``characters``, ``cells``...
        setting: the field of the pipeline's config that holds the cap (so it is configurable as
            ``PIPELINES__<NAME>__<SETTING>``).
        code: the error code a job over the cap ends with.
        field: the input it applies to. For a file input (its ``FileInput.probe`` measures it),
            the value comes from the file's header; otherwise from ``measure``.
        measure: ``measure(inputs) -> value`` for a quantity of the inputs themselves (the length
            of a text, frames x pixels of a requested video); ``None`` when not applicable.
        checked: where it is checked, for the README's table.
    """

    quantity: str
    setting: str
    code: str
    field: str | None = None
    measure: Callable[[Any], float | None] | None = None
    unit: str = ""
    checked: str = ""

    @property
    def label(self) -> str:
        """The quantity in words: ``duration_seconds`` is "duration" (the unit says seconds)."""
        return self.quantity.removesuffix("_seconds").replace("_", " ")

    def cap(self, config: BaseModel) -> float:
        return float(getattr(config, self.setting))

    def check(self, value: float | None, config: BaseModel, what: str) -> None:
        """Raises ``InvalidInput`` (``code``) naming the cap when ``value`` is over it."""
        from core.errors import InvalidInput

        if value is None:
            return
        cap = self.cap(config)
        if value > cap:
            unit = f" {self.unit}" if self.unit else ""
            raise InvalidInput(
                f"{what}: {self.label} is {_amount(value)}{unit}, over this "
                f"service's cap of {_amount(cap)}{unit} ({self.setting})",
                code=self.code,
            )


def _amount(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.2f}"


def check_input_location(name: str, uri: str, uid: str, bucket: str) -> None:
    """An input object must be in the deployment's bucket, under its owner's ``uploads/{uid}/``.

    Raises:
        InvalidInput: ``wrong_bucket`` or ``forbidden_object``.
    """
    from core.errors import InvalidInput, shown

    found_bucket, object_name = parse_gs_uri(uri)
    if found_bucket != bucket:
        raise InvalidInput(
            f"inputs.{name}: files must be in gs://{bucket}/, not gs://{shown(found_bucket).strip(chr(39))}/",
            code="wrong_bucket",
        )
    if not object_name.startswith(f"uploads/{uid}/"):
        raise InvalidInput(
            f"inputs.{name}: {shown(uri, 200)} does not belong to user {uid} (upload it under uploads/{uid}/)",
            code="forbidden_object",
        )


class PipelineModel(BaseModel):
    """Base for pipeline inputs and outputs: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def _rule_of(annotation: Any) -> FileInput | None:
    """The ``FileInput`` of ``Annotated[GsUri, FileInput(...)]``, also inside ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _rule_of(members[0]) if len(members) == 1 else None
    return next((m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, FileInput)), None)


def _names_a_file(annotation: Any) -> bool:
    """Whether a ``FileInput`` appears anywhere in ``annotation``."""
    if any(isinstance(m, FileInput) for m in getattr(annotation, "__metadata__", ())):
        return True
    return any(_names_a_file(a) for a in typing.get_args(annotation))


def file_fields(model: type[BaseModel]) -> dict[str, FileInput]:
    """The fields of ``model`` that are Storage objects (optional or not), with their limits."""
    found: dict[str, FileInput] = {}
    for name, info in model.model_fields.items():
        rule = next((m for m in info.metadata if isinstance(m, FileInput)), None) or _rule_of(info.annotation)
        if rule is not None:
            found[name] = rule
    return found


def _dict_file_fields(model: type[BaseModel]) -> dict[str, FileInput]:
    """The ``dict[str, Annotated[GsUri, FileInput(...)]]`` fields of ``model`` (also ``| None``):
    several objects under one field (e.g. one reference recording per speaker), same limits."""
    found: dict[str, FileInput] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = members[0] if len(members) == 1 else annotation
        if typing.get_origin(annotation) is not dict:
            continue
        rule = _rule_of(typing.get_args(annotation)[1])
        if rule is not None:
            found[name] = rule
    return found


def check_file_fields(model: type[BaseModel]) -> None:
    """Refuses a ``FileInput`` anywhere but a field, an optional field or a dict of them: the
    ownership, size and content checks, and the download, only see those, so a file hidden in a
    list or a union would reach the pipeline unchecked.

    Raises:
        ValueError: naming the field.
    """
    known = set(file_fields(model)) | set(_dict_file_fields(model))
    for name, info in model.model_fields.items():
        if name not in known and _names_a_file(info.annotation):
            raise ValueError(
                f"{model.__name__}.{name}: a file input must be a field, an optional field or a "
                "dict[str, ...] of them (Annotated[GsUri, FileInput(...)])"
            )


def file_uris(inputs: BaseModel) -> list[tuple[str, str, FileInput]]:
    """Every Storage object a job's inputs name, as ``(key, uri, rule)``.

    A plain file field's key is its name; each entry of a dict of files is ``{field}.{entry}``
    (``references.Speaker 1``). The service downloads each object and passes its local copy in
    ``RunContext.files`` under the same key.
    """
    found: list[tuple[str, str, FileInput]] = []
    for name, rule in file_fields(type(inputs)).items():
        uri = getattr(inputs, name, None)
        if uri is not None:
            found.append((name, uri, rule))
    for name, rule in _dict_file_fields(type(inputs)).items():
        for entry, uri in sorted((getattr(inputs, name, None) or {}).items()):
            found.append((f"{name}.{entry}", uri, rule))
    return found


ProgressFn = Callable[[float, str], None]


@dataclass
class RunContext:
    """What a running pipeline gets besides its inputs.

    Attributes:
        job_id: the job's id (for logs and file names only).
        workdir: an empty private directory, removed after the run.
        files: local copies of the input files, keyed by ``Inputs`` field name.
        progress: ``progress(fraction, stage)`` reports progress in 0..1. It is also the
            cancellation checkpoint: it raises :class:`~core.errors.Cancelled` when the client
            asked to cancel, so call it between units of work.
    """

    job_id: str
    workdir: Path
    files: Mapping[str, Path] = field(default_factory=dict)
    progress: ProgressFn = field(default=lambda fraction, stage: None)
    #: what the service measured of this job's model work: a batched call records the job's share
    #: of it here (``gpu_seconds``, ``batch_size``, ``batch_seconds``, ``work``; see core/usage.py)
    meter: dict[str, float] = field(default_factory=dict)
    #: ``partial(item)`` hands over output made so far (a transcript segment as it is decoded):
    #: the job document's bounded ``partial`` field and the event stream show it while the job runs
    partial: Callable[[dict[str, Any]], None] = field(default=lambda item: None)
    #: ``publish(key, path, item)`` uploads a file made while the job runs (a spoken chunk of a
    #: streamed speech job) under the attempt's results prefix as ``key`` (e.g. ``stream/00000.mp3``)
    #: and hands over ``item`` with the file's ``uri`` as partial output; the first one is written to
    #: the job document at once. Returns the ``gs://`` URI (``None`` where nothing is published).
    publish: Callable[[str, Path, dict[str, Any]], str | None] = field(default=lambda key, path, item: None)


OutT = TypeVar("OutT", bound=BaseModel)


@dataclass
class RunResult(Generic[OutT]):
    """What a pipeline returns: typed outputs plus local files to publish.

    Each file in ``files`` is uploaded to ``results/{uid}/{jobId}/...`` under its key (which must
    be a plain file name such as ``transcript.srt``); its ``gs://`` URI is added to the job's
    ``outputs.files`` under the same key.
    """

    outputs: OutT
    files: dict[str, Path] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: a multi-part pipeline's prepare step only: lane -> how many shards of it to run (lanes not
    #: named run once, as the part named by the lane itself)
    shards: dict[str, int] = field(default_factory=dict)
    #: output field -> file key: the service sets that output field to the file's ``gs://`` URI
    #: (e.g. ``{"image": "result.png"}`` fills ``outputs.image``).
    uri_fields: dict[str, str] = field(default_factory=dict)


class Pipeline(Protocol):
    """A loaded pipeline. Load once per process; ``run`` is called once per job."""

    def run(self, inputs: Any, ctx: RunContext) -> RunResult[Any]: ...


class BatchingPipeline(Pipeline, Protocol):
    """A pipeline that can run several jobs in one model call (dynamic batching across jobs).

    * ``batch_key(inputs)`` says which jobs may share a call (same model settings: steps, guidance,
      adapters...); only jobs with equal keys are batched together.
    * ``run_batch(items)`` runs ``[(inputs, ctx), ...]`` and returns, per item and in order, its
      ``RunResult`` or the exception that item ends with: one job's bad input or cancel must never
      fail its batch-mates. Report progress through :class:`BatchProgress`. Each job's result must
      be what ``run`` gives it alone (a generator per job, not one for the batch).
    """

    def batch_key(self, inputs: Any) -> Hashable: ...

    def run_batch(self, items: Sequence[tuple[Any, RunContext]]) -> list[RunResult[Any] | Exception]: ...


class BatchProgress:
    """Progress for the jobs of one batch: reports to each job, and remembers per job the
    exception its checkpoint raised (a cancel, a lost lease) instead of stopping the batch."""

    def __init__(self, contexts: Sequence[RunContext]) -> None:
        self._contexts = list(contexts)
        self.errors: dict[int, Exception] = {}

    def report(self, fraction: float, stage: str) -> None:
        for index, ctx in enumerate(self._contexts):
            if index in self.errors:
                continue
            try:
                ctx.progress(fraction, stage)
            except Exception as exc:  # that job stops here; the others go on
                self.errors[index] = exc

    def live(self) -> list[int]:
        return [i for i in range(len(self._contexts)) if i not in self.errors]


class MultiPartPipeline(Pipeline, Protocol):
    """A pipeline whose spec lists ``parts``: prepare once, run the parts in parallel, join.

    * ``prepare`` runs on the job's own message. Its ``RunResult.files`` are published for the
      parts (they get them as ``ctx.files`` under the same keys) and its ``outputs`` are the state
      the parts and the join receive (``state``, a JSON-able dict).
    * ``run_part`` runs once per part key (a lane, or ``{lane}-{i}`` for shard *i*), on whichever
      instance takes the part's message.
    * the spec's ``join`` (a plain function, not a method: no model is loaded for it) runs when the
      last part ends, with the outputs of the parts that succeeded (``None`` for the others); it
      must be cheap and pure: it may run more than once.
    """

    def prepare(self, inputs: Any, ctx: RunContext) -> RunResult[Any]: ...

    def run_part(self, part: str, inputs: Any, ctx: RunContext, state: dict[str, Any]) -> RunResult[Any]: ...


#: ``join(inputs, state, parts) -> outputs`` of a multi-part pipeline.
JoinFn = Callable[[Any, dict[str, Any], dict[str, dict[str, Any] | None]], BaseModel]


def _import(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


class Delivery(BaseModel):
    """What a pipeline needs from its Pub/Sub route, beside the deployment's ``pipeline_defaults``.

    A field left ``None`` keeps the default. The bounds are Pub/Sub's (:mod:`core.pubsub`, as for
    ``infra/topology.yaml``), so a plugin with an impossible setting fails when it is imported, not
    at deploy time.
    ``needs_model = False`` lets a deployment enable the pipeline without a model path.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = None
    ack_deadline_seconds: AckDeadline | None = None
    retry_policy: Backoff | None = None
    message_retention_seconds: SubscriptionRetention | None = None
    needs_model: bool = True


@dataclass(frozen=True)
class PipelineSpec:
    """Everything the functions and the service need to know about a pipeline, without loading it.

    Attributes:
        name: the value of ``pipeline`` on a job document, and the Pub/Sub topic suffix.
        inputs: pydantic model of ``job.inputs`` (validated in the function, before any GPU work).
        outputs: pydantic model of ``job.outputs`` (without ``files``, which the service adds).
        config: pydantic model of this pipeline's settings (model dirs, device, backend...),
            filled from the service's one ``Settings`` object.
        loader: ``"module:function"``; ``function(config) -> Pipeline``. Imported lazily.
        drop_field: the ``Inputs`` field a drop upload to ``uploads/{uid}/{name}/...`` fills,
            or ``None`` if this pipeline cannot be started by an upload alone.
        description: one line for ``gpujobs pipelines`` and the README.
        parts: for a multi-part pipeline (:class:`MultiPartPipeline`), its lanes: each part (or
            each shard of it that the prepare step asks for) has its own route.
        join: for a multi-part pipeline, ``"module:function"`` (a :data:`JoinFn`), imported lazily.
        precheck: optional ``"module:function"``; ``function(inputs, config)`` runs in the
            functions before a job is queued, for checks beyond the schema (e.g. a URL's host).
            It must be cheap and import no model code; it raises ``InvalidInput``.
        delivery: what the pipeline needs from its route (a plugin's topology entry, see
            :meth:`topology_entry`); built-ins declare theirs in ``infra/topology.yaml``.
        streams: whether a job of it shows partial output while it runs (transcript segments,
            spoken audio), as ``GET /v1/pipelines`` tells apps.
    """

    name: str
    inputs: type[PipelineModel]
    outputs: type[BaseModel]
    config: type[BaseModel]
    loader: str
    drop_field: str | None = None
    description: str = ""
    precheck: str | None = None
    parts: tuple[str, ...] = ()
    join: str | None = None
    delivery: Delivery = field(default_factory=Delivery)
    costs: tuple[CostLimit, ...] = ()
    streams: bool = False

    def __post_init__(self) -> None:
        check_name("pipeline", self.name)
        for lane in self.parts:
            check_name("part", lane)
        if bool(self.parts) != bool(self.join):
            raise ValueError(f"pipeline {self.name}: a multi-part pipeline has both parts and a join")
        check_file_fields(self.inputs)
        for limit in self.costs:
            if limit.setting not in self.config.model_fields:
                raise ValueError(
                    f"pipeline {self.name}: cost limit {limit.quantity} names {limit.setting!r}, "
                    f"which is not a field of {self.config.__name__}"
                )

    def check_input_costs(self, inputs: BaseModel, config: BaseModel) -> None:
        """The caps on quantities of the inputs themselves (text length, requested frames...).

        Raises:
            InvalidInput: the limit's code, naming the cap.
        """
        for limit in self.costs:
            if limit.measure is not None:
                limit.check(
                    limit.measure(inputs), config, f"inputs.{limit.field}" if limit.field else "inputs"
                )

    def check_file_costs(self, key: str, measured: Mapping[str, float], config: BaseModel) -> None:
        """The caps on what a file input's probe measured (``key`` as in :func:`file_uris`).

        Raises:
            InvalidInput: the limit's code, naming the cap.
        """
        name = key.split(".", 1)[0]
        for limit in self.costs:
            if limit.field == name and limit.measure is None and limit.quantity in measured:
                limit.check(measured[limit.quantity], config, f"inputs.{key}")

    def topology_entry(self) -> dict[str, Any]:
        """This pipeline's entry under ``pipelines:`` of the topology (Terraform's ``plugin_pipelines``)."""
        entry = self.delivery.model_dump(exclude_none=True, exclude={"needs_model"})
        if self.parts:
            entry["parts"] = list(self.parts)
        return entry

    def load(self, config: BaseModel) -> Pipeline:
        pipeline: Pipeline = _import(self.loader)(config)
        return pipeline

    def run_precheck(self, inputs: BaseModel, config: BaseModel) -> None:
        if self.precheck:
            _import(self.precheck)(inputs, config)

    def run_join(
        self, inputs: BaseModel, state: dict[str, Any], parts: dict[str, dict[str, Any] | None]
    ) -> BaseModel:
        if self.join is None:
            raise ValueError(f"pipeline {self.name} has no parts to join")
        joined: BaseModel = _import(self.join)(inputs, state, parts)
        return joined

    def part_keys(self, shards: Mapping[str, int] | None = None) -> list[str]:
        """The part keys of one job: each lane once, or ``{lane}-{i}`` for each of its shards."""
        keys: list[str] = []
        for lane in self.parts:
            count = (shards or {}).get(lane)
            keys.extend([lane] if count is None else [part_key(lane, i) for i in range(count)])
        unknown = set(shards or {}) - set(self.parts)
        if unknown:
            raise ValueError(f"pipeline {self.name} has no lanes {sorted(unknown)}")
        return keys

    def file_fields(self) -> dict[str, FileInput]:
        return file_fields(self.inputs)


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that was not loaded, and why (shown by ``gpujobs pipelines`` and ``/healthz``).

    Attributes:
        entry: the entry point (``name = module:attr``) or ``PLUGINS`` path that declared it.
        distribution: the installed distribution it came from (``PLUGINS`` for the setting).
        error: what went wrong: the import error, or the name clash with its other claimants.
    """

    entry: str
    distribution: str
    error: str

    def describe(self) -> str:
        return f"{self.distribution} ({self.entry}): {self.error}"


@dataclass(frozen=True)
class Catalog:
    """The pipelines one deployment serves, resolved once in its entry point and passed down.

    ``settings`` holds each pipeline's raw settings (``PIPELINES__<NAME>__*``), validated by its
    own config model in :meth:`config`.
    """

    specs: Mapping[str, PipelineSpec]
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: every installed pipeline, enabled or not (to tell "not enabled here" from "no such pipeline")
    installed: frozenset[str] = frozenset()
    #: plugins that could not be loaded (the others, and the built-ins, are unaffected)
    broken: tuple[BrokenPlugin, ...] = ()

    def get(self, name: str) -> PipelineSpec | None:
        return self.specs.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self.specs)

    def config(self, spec: PipelineSpec) -> BaseModel:
        """The validated config of ``spec`` (raises ``ValidationError`` on a typo or bad value)."""
        return spec.config.model_validate(dict(self.settings.get(spec.name, {})))
