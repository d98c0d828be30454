"""Typed writes to the job document.

A :class:`Patch` names fields by their Python attribute path on :class:`~core.contract.JobDoc`
(``parts.speech.lease``), checks every step of the path against the contract's models, and
produces the camelCase field paths Firestore stores (``parts.speech.lease``, ``lastError``).
A misspelt field is an error when the write is built, never a silently written stray field.

Values are checked against the field's type; contract models are written by alias. The two
sentinels :data:`SERVER_TIME` and :data:`DELETE` stand for Firestore's own; the Firestore edge
translates them, so this module needs no Google library.
"""

from __future__ import annotations

import re
import types
import typing
from functools import cache
from typing import Any, Union

from pydantic import BaseModel, TypeAdapter


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SERVER_TIME = _Sentinel("SERVER_TIME")
DELETE = _Sentinel("DELETE")
Sentinel = _Sentinel

# Map keys become Firestore field path segments: keep them to plain identifiers.
_KEY = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")


class UnknownField(ValueError):
    """A write names a field that the job contract does not have."""


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _resolve(model: type[BaseModel], path: str) -> tuple[str, Any]:
    """The Firestore field path of ``path`` on ``model``, and the annotation of its last step."""
    out: list[str] = []
    annotation: Any = model
    segments = path.split(".")
    i = 0
    while i < len(segments):
        seg = segments[i]
        if _is_model(annotation):
            fields = annotation.model_fields
            if seg not in fields:
                raise UnknownField(f"{annotation.__name__} has no field {seg!r} (in {path!r})")
            info = fields[seg]
            out.append(info.alias or seg)
            annotation = _unwrap_optional(info.annotation)
        elif typing.get_origin(annotation) is dict:
            if not _KEY.fullmatch(seg):
                raise UnknownField(f"map key {seg!r} in {path!r} is not a plain identifier")
            out.append(seg)
            annotation = _unwrap_optional(typing.get_args(annotation)[1])
        elif annotation is Any:
            out.extend(s for s in segments[i:])  # free-form JSON (outputs, runtime, state)
            return ".".join(out), Any
        else:
            raise UnknownField(f"{path!r}: {'.'.join(out)} is a value, it has no field {seg!r}")
        i += 1
    return ".".join(out), annotation


def _dump(annotation: Any, value: Any) -> Any:
    if isinstance(value, _Sentinel):
        return value
    if isinstance(value, BaseModel):
        if _is_model(annotation) and not isinstance(value, annotation):
            raise TypeError(f"expected {annotation.__name__}, got {type(value).__name__}")
        return value.model_dump(by_alias=True, exclude_none=True, mode="python")
    if annotation is Any:
        return value
    if _is_model(annotation):
        raise TypeError(f"expected a {annotation.__name__}, got {type(value).__name__}")
    origin = typing.get_origin(annotation)
    if origin is dict and _is_model(_unwrap_optional(typing.get_args(annotation)[1])):
        inner = _unwrap_optional(typing.get_args(annotation)[1])
        return {k: _dump(inner, v) for k, v in value.items()}
    checked = _adapter(annotation).validate_python(value, strict=False)
    return _adapter(annotation).dump_python(checked, mode="python", by_alias=True)


class Patch:
    """One update of a document of type ``model`` (a :class:`~core.contract.JobDoc` by default)."""

    def __init__(self, model: type[BaseModel] | None = None) -> None:
        if model is None:
            from core.contract import JobDoc

            model = JobDoc
        self._model = model
        self._data: dict[str, Any] = {}

    def set(self, path: str, value: Any, *, stamp: bool | str = False) -> Patch:
        """Set ``path`` (attribute names, dots between) to ``value``.

        ``stamp=True`` also sets the written sub-document's ``updated_at`` to the server time;
        ``stamp="name"`` its field ``name`` instead.

        Raises:
            UnknownField: the path is not in the contract.
            TypeError, ValueError: the value does not fit the field.
        """
        field_path, annotation = _resolve(self._model, path)
        data = _dump(annotation, value)
        if stamp:
            name = "updated_at" if stamp is True else str(stamp)
            if not (_is_model(annotation) and name in annotation.model_fields):
                raise UnknownField(f"{path!r} has no {name} to stamp")
            data = {**data, annotation.model_fields[name].alias or name: SERVER_TIME}
        for existing in self._data:
            if existing != field_path and (
                existing.startswith(field_path + ".") or field_path.startswith(existing + ".")
            ):
                raise ValueError(f"{field_path!r} overlaps {existing!r} in one write")
        self._data[field_path] = data
        return self

    def delete(self, path: str) -> Patch:
        return self.set(path, DELETE)

    def server_time(self, path: str) -> Patch:
        return self.set(path, SERVER_TIME)

    def merge(self, other: Patch) -> Patch:
        for key, value in other._data.items():
            self._data[key] = value
        return self

    def has(self, path: str) -> bool:
        return _resolve(self._model, path)[0] in self._data

    def to_dict(self) -> dict[str, Any]:
        """Firestore field paths to values (sentinels left in place for the edge to translate)."""
        return dict(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __repr__(self) -> str:
        return f"Patch({self._data!r})"
