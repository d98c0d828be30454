"""Which pipelines exist: the built-in ones plus third-party plugins.

A plugin is any installed distribution that declares an entry point in the group
``gpu_jobs.pipelines``. The entry point names a :class:`~core.spec.PipelineSpec`, a list of them,
or a function without arguments that returns either (a hook that registers several)::

    [project.entry-points."gpu_jobs.pipelines"]
    upscale = "acme_upscale:SPEC"

A ``"module:SPEC"`` path named in the ``PLUGINS`` setting (passed here as ``extra``) is loaded the
same way.

A plugin can never take the others down: one that fails to import, or returns something else, is
left out and reported as a :class:`~core.spec.BrokenPlugin` with its distribution's name; so is one
whose route breaks one of Pub/Sub's limits (:mod:`core.pubsub`), however its spec was built. A
pipeline name claimed by two plugins is loaded from neither (both are reported), and a plugin
cannot shadow a built-in.

Built-ins are listed here by import path so that importing the registry stays cheap. Each entry
point (the functions, the GPU service, the CLI) calls :func:`catalog` once and passes the result
down.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from core.spec import BrokenPlugin, Catalog, Delivery, PipelineSpec

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "gpu_jobs.pipelines"
#: the ``distribution`` of a plugin named in the ``PLUGINS`` setting
SETTING = "PLUGINS"
BUILTIN_ORIGIN = "built-in"

BUILTIN: dict[str, str] = {
    "transcribe": "pipelines.transcribe:SPEC",
    "inpaint": "pipelines.inpaint:SPEC",
    "edit": "pipelines.edit:SPEC",
    "video": "pipelines.video:SPEC",
    "t2v": "pipelines.t2v:SPEC",
    "tts": "pipelines.tts:SPEC",
}


def _import_spec(path: str) -> PipelineSpec:
    module_name, _, attr = path.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, PipelineSpec):
        raise TypeError(f"{path} is a {type(spec).__name__}, not a PipelineSpec")
    return spec


def _check_route(spec: PipelineSpec) -> PipelineSpec:
    """A plugin's route checked against Pub/Sub's limits (:mod:`core.pubsub`), even one whose
    ``Delivery`` was built without validation or is not a ``Delivery`` at all, so that it is left
    out here rather than failing the deployment's plan or the local stack."""
    if not isinstance(spec.delivery, Delivery):
        raise TypeError(f"pipeline {spec.name}: delivery is a {type(spec.delivery).__name__}, not a Delivery")
    Delivery.model_validate(spec.delivery.model_dump())
    return spec


def _as_specs(value: Any, where: str) -> list[PipelineSpec]:
    """What an entry point gave: a spec, a list of specs, or a hook returning either."""
    if callable(value) and not isinstance(value, PipelineSpec):
        value = value()
    found = [value] if isinstance(value, PipelineSpec) else value
    if not isinstance(found, list | tuple) or not found:
        raise TypeError(f"{where} gave a {type(value).__name__}, not a PipelineSpec or a list of them")
    for item in found:
        if not isinstance(item, PipelineSpec):
            raise TypeError(f"{where} gave a {type(item).__name__} among its specs, not a PipelineSpec")
    return list(found)


@dataclass(frozen=True)
class _Claim:
    spec: PipelineSpec
    entry: str
    distribution: str


@dataclass(frozen=True)
class Registry:
    """Every installed pipeline by name, where each came from, and the plugins left out."""

    specs: Mapping[str, PipelineSpec]
    #: pipeline name -> ``built-in``, the plugin's distribution, or ``PLUGINS``
    origins: Mapping[str, str]
    broken: tuple[BrokenPlugin, ...]

    def plugins(self) -> dict[str, PipelineSpec]:
        return {name: spec for name, spec in self.specs.items() if self.origins[name] != BUILTIN_ORIGIN}

    def tfvars(self) -> dict[str, dict[str, Any]]:
        """Terraform's ``plugin_pipelines``: each plugin's topology entry, and whether it needs a
        model path to be enabled."""
        return {
            name: {**spec.topology_entry(), "needs_model": spec.delivery.needs_model}
            for name, spec in sorted(self.plugins().items())
        }


def _entry_label(ep: EntryPoint) -> str:
    return f"{ep.name} = {ep.value}"


def _distribution(ep: EntryPoint) -> str:
    dist = ep.dist
    return dist.name if dist is not None else "unknown distribution"


def _claims(extra: tuple[str, ...]) -> tuple[list[_Claim], list[BrokenPlugin]]:
    """Load every plugin, catching what any one of them raises."""
    claims: list[_Claim] = []
    broken: list[BrokenPlugin] = []
    sources: list[tuple[str, str, Any]] = [(path, SETTING, path) for path in extra]
    sources += [(_entry_label(ep), _distribution(ep), ep) for ep in entry_points(group=ENTRY_POINT_GROUP)]
    for entry, distribution, source in sources:
        try:
            loaded = _import_spec(source) if isinstance(source, str) else _as_specs(source.load(), entry)
            specs = [loaded] if isinstance(loaded, PipelineSpec) else loaded
            for spec in specs:
                _check_route(spec)
        except Exception as exc:  # third-party code: anything it raises leaves only it out
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.error("plugin %s from %s was not loaded: %s", entry, distribution, error)
            broken.append(BrokenPlugin(entry, distribution, error))
            continue
        claims.extend(_Claim(spec, entry, distribution) for spec in specs)
    return claims, broken


def _clash(name: str, claims: list[_Claim], builtin: bool) -> list[BrokenPlugin]:
    dists = " and ".join(sorted({c.distribution for c in claims}))
    if len({c.distribution for c in claims}) < len(claims):  # one distribution, several entries
        dists = " and ".join(sorted(f"{c.distribution} ({c.entry})" for c in claims))
    if builtin:
        why = f"pipeline {name!r} is a built-in; a plugin cannot replace it (declared by {dists})"
    else:
        why = f"pipeline {name!r} is declared by both {dists}; neither is loaded"
    log.error("plugin clash: %s", why)
    return [BrokenPlugin(c.entry, c.distribution, why) for c in claims]


@cache
def registry(extra: tuple[str, ...] = ()) -> Registry:
    """The built-ins, then every plugin that loads and has a name of its own."""
    specs = {name: _import_spec(path) for name, path in BUILTIN.items()}
    origins = dict.fromkeys(specs, BUILTIN_ORIGIN)
    claims, broken = _claims(extra)
    by_name: dict[str, list[_Claim]] = {}
    for claim in claims:
        same = by_name.setdefault(claim.spec.name, [])
        if not any(c.spec is claim.spec for c in same):  # one spec reached twice is one claim
            same.append(claim)
    for name, found in by_name.items():
        if name in specs or len(found) > 1:
            broken.extend(_clash(name, found, builtin=name in specs))
            continue
        specs[name], origins[name] = found[0].spec, found[0].distribution
    return Registry(specs=specs, origins=origins, broken=tuple(broken))


def all_specs(extra: tuple[str, ...] = ()) -> dict[str, PipelineSpec]:
    """Every known pipeline by name (plugins that could not be loaded are left out)."""
    return dict(registry(tuple(extra)).specs)


def get_spec(name: str, extra: tuple[str, ...] = ()) -> PipelineSpec | None:
    return registry(tuple(extra)).specs.get(name)


def plugin_topology(enabled: Iterable[str], extra: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """The topology entries (``pipelines:`` of ``infra/topology.yaml``) of the enabled plugins,
    from their specs: what the local stack adds, and Terraform's ``plugin_pipelines``."""
    plugins = registry(tuple(extra)).plugins()
    return {name: plugins[name].topology_entry() for name in sorted(set(enabled) & set(plugins))}


def catalog(
    enabled: Iterable[str],
    plugins: Iterable[str] = (),
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Catalog:
    """The enabled pipelines that are installed, with their raw settings.

    An enabled name that is not installed is left out (its jobs are rejected as
    ``unknown_pipeline``); callers that must refuse to start without it check ``names``.
    """
    found = registry(tuple(plugins))
    specs = {name: found.specs[name] for name in enabled if name in found.specs}
    return Catalog(
        specs=specs,
        settings=dict(settings or {}),
        installed=frozenset(found.specs),
        broken=found.broken,
    )


def main() -> int:
    """``python -m pipelines.registry``: Terraform's ``plugin_pipelines`` for what is installed here
    (Cloud Build runs it in the built image); fails, naming them, when a plugin is broken."""
    found = registry()
    for broken in found.broken:
        sys.stderr.write(f"broken plugin {broken.describe()}\n")
    sys.stdout.write(json.dumps({"plugin_pipelines": found.tfvars()}, indent=2) + "\n")
    return 1 if found.broken else 0


if __name__ == "__main__":
    sys.exit(main())
