"""Which pipelines exist: the built-in ones plus third-party plugins.

A plugin is any installed distribution that declares an entry point in the group
``gpu_jobs.pipelines`` pointing at a :class:`~pipelines.base.PipelineSpec`::

    [project.entry-points."gpu_jobs.pipelines"]
    upscale = "acme_upscale:SPEC"

or a ``"module:SPEC"`` path named in the ``PLUGINS`` setting (passed here as ``extra``).

Built-ins are listed here by import path so that importing the registry stays cheap.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from pipelines.base import PipelineSpec

ENTRY_POINT_GROUP = "gpu_jobs.pipelines"

BUILTIN: dict[str, str] = {
    "transcribe": "pipelines.transcribe:SPEC",
    "inpaint": "pipelines.inpaint:SPEC",
    "edit": "pipelines.edit:SPEC",
    "video": "pipelines.video:SPEC",
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
