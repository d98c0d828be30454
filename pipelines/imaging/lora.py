"""LoRA adapters per job on a loaded diffusers pipeline, never leaking into the next job.

A job's adapters (see :mod:`pipelines.imaging.fields` for how they are named) are loaded under
names ``job_0``, ``job_1``... with ``load_lora_weights``, activated with ``set_adapters`` at their
weights, and deleted with ``delete_adapters`` when the run ends, however it ends (result, error,
cancellation). The adapter *weights* read from disk are kept in a small LRU cache keyed by path
(and the file's mtime and size, so a replaced file is re-read); re-attaching cached weights to the
model costs milliseconds.

That is ``lora_mode: runtime``. With ``lora_mode: fused`` the configured set (``fused_loras``) is
loaded once at start-up, activated at its weights, merged into the base weights (``fuse_lora``)
and unloaded: the model then runs at the speed of one without adapters, and a job can only
repeat what is already merged (:func:`pipelines.imaging.fields.check_job_loras`).

In runtime mode, a fixed adapter (``config.fixed_lora``) is loaded once at start-up. It is fused into the base
weights (``fuse_lora`` then ``unload_lora_weights``) when the weights are plain tensors; GGUF
weights cannot absorb it, so there it stays loaded as the active adapter ``fixed``, combined with
each job's adapters and restored after them.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from core.errors import InvalidInput, PermanentError
from pipelines.imaging.fields import AdapterConfig, FixedLora, LoraRef, ResolvedLora, check_job_loras

log = logging.getLogger(__name__)

JOB_ADAPTER_PREFIX = "job_"
FIXED_ADAPTER = "fixed"
FUSED_ADAPTER_PREFIX = "fused_"


#: Where diffusers keeps a PEFT adapter's configuration in a .safetensors header.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"


def bake_adapter_scale(
    weights: dict[str, torch.Tensor], header: dict[str, str]
) -> dict[str, torch.Tensor] | None:
    """Weights that load from memory with the scale the file's header asks for.

    diffusers reads a PEFT adapter's ``lora_alpha`` and rank from the file's header, which a state
    dict in memory does not carry: loaded from memory, every adapter would run at ``alpha = rank``
    (the wrong strength for most trained adapters). So the scale ``alpha / r`` (``alpha / sqrt(r)``
    with rsLoRA) is multiplied into each ``lora_B`` matrix once, here. Files without such a header
    (kohya-style files keep their alphas as tensors) are returned as they are; configurations that
    are not one scale per component (per-layer alpha or rank patterns, DoRA) give ``None``: load
    those by path.
    """
    raw = header.get(ADAPTER_METADATA_KEY)
    if not raw:
        return weights
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return None
    scaled = dict(weights)
    for prefix in {key.split(".", 1)[0] for key in meta}:
        conf = {key.split(".", 1)[1]: value for key, value in meta.items() if key.startswith(f"{prefix}.")}
        if conf.get("alpha_pattern") or conf.get("rank_pattern") or conf.get("use_dora") or "r" not in conf:
            return None
        rank = float(conf["r"])
        alpha = float(conf.get("lora_alpha", rank))
        scale = alpha / (math.sqrt(rank) if conf.get("use_rslora") else rank)
        for key, tensor in weights.items():
            if key.startswith(f"{prefix}.") and ".lora_B." in key:
                scaled[key] = (tensor.float() * scale).to(tensor.dtype)
    return scaled


def _loaded_adapters(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


class LoraAdapters:
    """Resolves, caches and applies LoRA adapters for one pipeline."""

    def __init__(
        self, lora_dir: str | None, cache_size: int = 8, config: AdapterConfig | None = None
    ) -> None:
        self.lora_dir = Path(lora_dir).resolve() if lora_dir else None
        self.cache_size = max(0, cache_size)
        self.config = config or AdapterConfig(lora_dir=lora_dir, lora_cache_size=cache_size)
        self._cache: OrderedDict[tuple[str, int, int], dict[str, torch.Tensor] | None] = OrderedDict()
        self.base: list[tuple[str, float]] = []  # an unfused fixed adapter, always active
        self.fused: list[FixedLora] = []  # merged into the weights at load (fused mode)

    @classmethod
    def prepare(cls, pipe: Any, config: AdapterConfig, *, quantized: bool) -> LoraAdapters:
        """The adapters of a freshly loaded pipeline, as ``config`` says: the fused set merged
        (fused mode), or the fixed adapter applied (runtime mode). Call before placing the weights.

        Raises:
            PermanentError: a configured adapter is missing or does not fit, or fused mode on
                quantized weights (they cannot absorb an adapter).
        """
        adapters = cls(config.lora_dir, config.lora_cache_size, config)
        if config.lora_mode == "fused":
            if quantized and config.fused_loras:
                raise PermanentError(
                    "lora_mode 'fused' needs plain weights; these are quantized (GGUF): use lora_mode 'runtime'"
                )
            adapters.fuse(pipe, config.fused_loras)
        elif config.fixed_lora is not None:
            adapters.fix(pipe, config.fixed_lora, fuse=not quantized)
        return adapters

    # -- resolving (before any model work) -------------------------------------------------------
    def resolve(self, refs: list[LoraRef]) -> list[ResolvedLora]:
        """Map each job adapter to a file inside ``lora_dir``.

        In fused mode the job's adapters are already merged (or the job is refused): nothing is
        resolved or applied per job.

        Raises:
            InvalidInput: no adapter directory configured, the file is not in it (a symlink that
                points outside it counts as outside), or fused mode cannot honour an adapter.
        """
        check_job_loras(refs, self.config)
        if not refs or self.config.lora_mode == "fused":
            return []
        if self.lora_dir is None:
            raise InvalidInput(
                "this service has no adapter directory configured: remove 'loras' from the job"
            )
        resolved = []
        for ref in refs:
            path = (self.lora_dir / ref.path).resolve()
            if not path.is_relative_to(self.lora_dir) or not path.is_file():
                raise InvalidInput(
                    f"adapter {ref.path!r} was not found in the adapter directory: check the name"
                )
            resolved.append(ResolvedLora(ref, path))
        return resolved

    # -- weights cache ---------------------------------------------------------------------------
    def state_dict(self, path: Path) -> dict[str, torch.Tensor] | None:
        """Adapter weights from ``path``, via an LRU cache keyed by path, mtime and size.

        ``None`` means the file must be loaded by path (see :func:`bake_adapter_scale`).
        """
        from safetensors import safe_open
        from safetensors.torch import load_file

        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            weights = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise InvalidInput(f"adapter {path.name!r} is not a readable .safetensors file ({e})") from e
        baked = bake_adapter_scale(weights, header)
        if self.cache_size:
            self._cache[key] = baked
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return baked

    @property
    def cached_paths(self) -> list[str]:
        return [key[0] for key in self._cache]

    # -- applying --------------------------------------------------------------------------------
    def _load(self, pipe: Any, path: Path, name: str, shown: str) -> None:
        try:
            with warnings.catch_warnings():
                # peft warns whenever a second adapter joins a model: here that is the design.
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                weights = self.state_dict(path)
                if weights is None:
                    pipe.load_lora_weights(
                        str(path.parent), weight_name=path.name, adapter_name=name, local_files_only=True
                    )
                else:
                    pipe.load_lora_weights(weights, adapter_name=name)
        except torch.OutOfMemoryError:
            raise
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise InvalidInput(f"adapter {shown!r} does not fit this model: {e}") from e
        if name not in _loaded_adapters(pipe):
            raise InvalidInput(f"adapter {shown!r} has no layers this model has: is it for another model?")

    @contextmanager
    def applied(self, pipe: Any, loras: list[ResolvedLora]) -> Iterator[list[str]]:
        """Load and activate ``loras`` for the block; remove them afterwards, whatever happens.

        Yields the adapter names in use. With no job adapters this does nothing.
        """
        if not loras:
            yield []
            return
        names: list[str] = []
        try:
            for i, lora in enumerate(loras):
                name = f"{JOB_ADAPTER_PREFIX}{i}"
                names.append(name)
                self._load(pipe, lora.path, name, lora.ref.path)
            pipe.set_adapters(
                [n for n, _ in self.base] + names,
                [w for _, w in self.base] + [lora.ref.weight for lora in loras],
            )
            log.info("applied adapters %s", [(lora.ref.path, lora.ref.weight) for lora in loras])
            yield names
        finally:
            self.remove_job_adapters(pipe)

    def remove_job_adapters(self, pipe: Any) -> None:
        """Delete every ``job_*`` adapter (also a half-loaded one) and restore the fixed adapter."""
        leftover = sorted(n for n in _loaded_adapters(pipe) if n.startswith(JOB_ADAPTER_PREFIX))
        if leftover:
            pipe.delete_adapters(leftover)
        if self.base:
            pipe.set_adapters([n for n, _ in self.base], [w for _, w in self.base])

    def _operator_path(self, lora: FixedLora, setting: str) -> Path:
        path = Path(lora.path)
        if not path.is_absolute():
            if self.lora_dir is None:
                raise PermanentError(f"{setting} {lora.path!r} is relative but no lora_dir is configured")
            path = self.lora_dir / path
        if not path.is_file():
            raise PermanentError(f"{setting} {str(path)!r} does not exist")
        return path

    def fuse(self, pipe: Any, loras: list[FixedLora]) -> None:
        """Merge ``loras`` at their weights into the base weights, once, and drop the adapters."""
        if not loras:
            return
        names = []
        for i, lora in enumerate(loras):
            name = f"{FUSED_ADAPTER_PREFIX}{i}"
            try:
                self._load(pipe, self._operator_path(lora, "fused_loras"), name, lora.path)
            except InvalidInput as e:
                raise PermanentError(f"fused_loras: {e.message}") from e
            names.append(name)
        pipe.set_adapters(names, [lora.weight for lora in loras])
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()
        self.fused = list(loras)
        log.info("fused adapters %s", [(lora.path, lora.weight) for lora in loras])

    def fix(self, pipe: Any, fixed: FixedLora, *, fuse: bool) -> str:
        """Apply the operator's fixed adapter for good; returns ``"fused"`` or ``"active"``.

        Raises:
            PermanentError: the file is missing or does not fit the model (a deployment error).
        """
        path = self._operator_path(fixed, "fixed_lora")
        try:
            self._load(pipe, path, FIXED_ADAPTER, str(path))
        except InvalidInput as e:
            raise PermanentError(f"fixed_lora: {e.message}") from e
        if fuse:
            pipe.fuse_lora(lora_scale=fixed.weight, adapter_names=[FIXED_ADAPTER])
            pipe.unload_lora_weights()
            log.info("fused fixed adapter %s at weight %s", path, fixed.weight)
            return "fused"
        self.base = [(FIXED_ADAPTER, fixed.weight)]
        pipe.set_adapters([FIXED_ADAPTER], [fixed.weight])
        log.info(
            "fixed adapter %s active at weight %s (weights are quantized: not fused)", path, fixed.weight
        )
        return "active"
