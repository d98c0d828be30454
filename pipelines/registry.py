"""Which pipelines exist: the built-in ones plus third-party plugins.

A plugin is any installed distribution that declares an entry point in the group
``gpu_jobs.pipelines`` pointing at a :class:`~core.spec.PipelineSpec`::

    [project.entry-points."gpu_jobs.pipelines"]
    upscale = "acme_upscale:SPEC"

or a ``"module:SPEC"`` path named in the ``PLUGINS`` setting (passed here as ``extra``).

Built-ins are listed here by import path so that importing the registry stays cheap. Each entry
point (the functions, the GPU service, the CLI) calls :func:`catalog` once and passes the result
down.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from core.spec import Catalog, PipelineSpec

ENTRY_POINT_GROUP = "gpu_jobs.pipelines"

BUILTIN: dict[str, str] = {
    "transcribe": "pipelines.transcribe:SPEC",
    "inpaint": "pipelines.inpaint:SPEC",
    "edit": "pipelines.edit:SPEC",
    "video": "pipelines.video:SPEC",
    "tts": "pipelines.tts:SPEC",
}


def _import_spec(path: str) -> PipelineSpec:
    module_name, _, attr = path.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, PipelineSpec):
        raise TypeError(f"{path} is a {type(spec).__name__}, not a PipelineSpec")
    return spec


@cache
def all_specs(extra: tuple[str, ...] = ()) -> dict[str, PipelineSpec]:
    """Every known pipeline by name; a plugin cannot shadow a built-in."""
    specs = {name: _import_spec(path) for name, path in BUILTIN.items()}
    for path in extra:
        spec = _import_spec(path)
        specs.setdefault(spec.name, spec)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in specs:
            continue
        spec = ep.load()
        if isinstance(spec, PipelineSpec):
            specs[spec.name] = spec
    return specs


def get_spec(name: str, extra: tuple[str, ...] = ()) -> PipelineSpec | None:
    return all_specs(tuple(extra)).get(name)


def catalog(
    enabled: Iterable[str],
    plugins: Iterable[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Catalog:
    """The enabled pipelines that are installed, with their raw settings.

    An enabled name that is not installed is left out (its jobs are rejected as
    ``unknown_pipeline``); callers that must refuse to start without it check ``names``.
    """
    known = all_specs(tuple(plugins))
    specs = {name: known[name] for name in enabled if name in known}
    return Catalog(specs=specs, settings=dict(settings or {}), installed=frozenset(known))
