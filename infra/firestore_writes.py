"""Firestore writes built straight as protobufs: the same ``Write`` the client library builds.

The library's ``update``, ``create`` and ``set(merge=True)`` walk the data with field-path
objects and encode every value through proto-plus wrappers (and a protocol ``isinstance`` per
map or list): on a small server, building one job write cost more CPU than sending it. Here
the same write (fields, update mask, transforms, precondition) is filled into the protobuf
message directly, and committed through the library's own batch (the same RPC, retry policy
and errors). ``tests/unit/test_firestore_writes.py`` holds each builder to the library's bytes.

Values are the library's: ``SERVER_TIMESTAMP``, ``DELETE_FIELD`` and ``Increment`` anywhere it
accepts them; a value of a type this module does not encode itself (a reference, a geo point,
a vector) is encoded by the library.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from google.api_core.datetime_helpers import DatetimeWithNanoseconds as _ValueTime
from google.cloud._helpers import _datetime_to_pb_timestamp
from google.cloud.firestore_v1 import _helpers, transforms
from google.cloud.firestore_v1.field_path import FieldPath
from google.cloud.firestore_v1.types import write as write_types
from google.protobuf import timestamp_pb2
from proto.datetime_helpers import DatetimeWithNanoseconds

_Write = write_types.Write.pb()
_REQUEST_TIME = write_types.DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME
_SIMPLE = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")

#: a field path, as the tuple of its segments
Path = tuple[str, ...]


def _render(path: Path) -> str:
    """A field path as the API writes it (segments that are not plain names in backticks)."""
    return ".".join(
        s if _SIMPLE.fullmatch(s) else "`" + s.replace("\\", "\\\\").replace("`", "\\`") + "`" for s in path
    )


def _precondition_time(value: Any) -> timestamp_pb2.Timestamp:
    """An update-time precondition's timestamp, as proto-plus converts it for the library."""
    if isinstance(value, DatetimeWithNanoseconds):
        return value.timestamp_pb()
    if isinstance(value, datetime.datetime):
        return timestamp_pb2.Timestamp(seconds=int(value.timestamp()), nanos=value.microsecond * 1000)
    if isinstance(value, str):
        stamp = timestamp_pb2.Timestamp()
        stamp.FromJsonString(value)
        return stamp
    if isinstance(value, timestamp_pb2.Timestamp):
        return value
    raise TypeError(f"not a timestamp: {type(value).__name__}")


def _fill(pb: Any, value: Any) -> None:
    """Encode ``value`` into the ``Value`` message ``pb`` (as the library's ``encode_value``)."""
    kind = type(value)
    if value is None:
        pb.null_value = 0
    elif kind is bool:
        pb.boolean_value = value
    elif kind is str:
        pb.string_value = value
    elif kind is dict:
        fields = pb.map_value.fields
        pb.map_value.SetInParent()
        for key, item in value.items():
            _fill(fields[key], item)
    elif kind is int:
        pb.integer_value = value
    elif kind is float:
        pb.double_value = value
    elif kind is _ValueTime:  # what a read gives: written back to the nanosecond
        pb.timestamp_value.CopyFrom(value.timestamp_pb())
    elif isinstance(value, datetime.datetime):  # to the microsecond, as the library writes it
        pb.timestamp_value.CopyFrom(_datetime_to_pb_timestamp(value))  # type: ignore[no-untyped-call]
    elif kind is list or kind is tuple:
        values = pb.array_value.values
        pb.array_value.SetInParent()
        for item in value:
            _fill(values.add(), item)
    elif isinstance(value, str) and not hasattr(value, "_document_path"):
        pb.string_value = value  # a str enum
    else:
        pb.CopyFrom(_helpers.encode_value(value)._pb)


@lru_cache(maxsize=4096)
def _dotted(key: str) -> Path:
    """A top-level key of an update, a field path, parsed as the library parses it (the same few
    keys come back in every write)."""
    return tuple(FieldPath.from_string(key).parts)


def _leaves(data: dict[str, Any], prefix: Path, split_top: bool) -> Iterator[tuple[Path, Any]]:
    """Depth first, in sorted key order: ``(path, value)`` of every leaf; an empty map is a
    leaf (``{}``). ``split_top``: the top-level keys are dotted paths (an update's)."""
    if not data:
        yield prefix, {}
        return
    for key, value in sorted(data.items()):
        path = prefix + (_dotted(key) if split_top else (key,))
        if isinstance(value, dict):
            yield from _leaves(value, path, False)
        else:
            yield path, value


class _Split:
    """Data, deletions and transforms of one write, as the library's ``DocumentExtractor``."""

    def __init__(self, data: dict[str, Any], split_top: bool) -> None:
        self.fields: dict[str, Any] = {}
        self.data_paths: list[Path] = []
        self.deleted: list[Path] = []
        self.transforms: list[tuple[Path, str, Any]] = []
        self.empty = False
        for path, value in _leaves(data, (), split_top):
            if not path:
                self.empty = True
            elif value is transforms.DELETE_FIELD:
                self.deleted.append(path)
            elif value is transforms.SERVER_TIMESTAMP:
                self.transforms.append((path, "time", None))
            elif isinstance(value, transforms.Increment):
                self.transforms.append((path, "increment", value.value))
            elif isinstance(value, transforms.Sentinel | transforms._ValueList | transforms._NumericValue):
                raise TypeError(f"{type(value).__name__} is not written by this module")
            else:
                self.data_paths.append(path)
                node = self.fields
                for key in path[:-1]:
                    node = node.setdefault(key, {})
                node[path[-1]] = value

    @property
    def transform_paths(self) -> list[Path]:
        return sorted(path for path, _, _ in self.transforms)

    def write(self, document_path: str, mask: Sequence[Path] | None) -> Any:
        pb = _Write()
        pb.update.name = document_path
        fields = pb.update.fields
        for key, value in self.fields.items():
            _fill(fields[key], value)
        if mask is not None:
            pb.update_mask.SetInParent()
            pb.update_mask.field_paths.extend(_render(p) for p in mask)
        for path, kind, value in sorted(self.transforms, key=lambda t: t[0]):
            transform = pb.update_transforms.add()
            transform.field_path = _render(path)
            if kind == "time":
                transform.set_to_server_value = _REQUEST_TIME
            else:
                _fill(transform.increment, value)
        return pb


def update(document_path: str, field_updates: dict[str, Any], last_update_time: Any = None) -> Any:
    """``DocumentReference.update(field_updates)``'s write; with ``last_update_time``, the
    precondition of ``client.write_option(last_update_time=...)``, else that the document exists.

    Raises:
        ValueError: as the library: empty, overlapping paths, or a delete below a top-level path.
    """
    tops = sorted(_dotted(key) for key in field_updates)
    top_set = set(tops)
    for top in tops:
        if any(top[:n] in top_set for n in range(1, len(top))):
            raise ValueError(f"Conflicting field path: {_render(top)}")
    split = _Split(field_updates, split_top=True)
    if split.empty:
        raise ValueError("Cannot update with an empty document.")
    for path in split.deleted:
        if path not in top_set:
            raise ValueError(f"Cannot update with nest delete: {_render(path)}")
    transformed = set(split.transform_paths)
    pb = split.write(document_path, [top for top in tops if top not in transformed])
    if last_update_time is not None:
        pb.current_document.update_time.CopyFrom(_precondition_time(last_update_time))
    else:
        pb.current_document.exists = True
    return pb


def create(document_path: str, document_data: dict[str, Any]) -> Any:
    """``DocumentReference.create(document_data)``'s write: only if the document does not exist."""
    split = _Split(document_data, split_top=False)
    if split.deleted:
        raise ValueError("Cannot apply DELETE_FIELD in a create request.")
    pb = split.write(document_path, None)
    pb.current_document.exists = False
    return pb


def merge(document_path: str, document_data: dict[str, Any]) -> Any:
    """``DocumentReference.set(document_data, merge=True)``'s write."""
    split = _Split(document_data, split_top=False)
    transformed = set(split.transform_paths)
    paths = sorted(split.data_paths + split.deleted)
    return split.write(document_path, [p for p in paths if p not in transformed])


def commit(client: Any, writes: Sequence[Any]) -> list[Any]:
    """Commit ``writes`` in one request, through the library's batch (its retry policy and
    errors); returns the write results, in order."""
    batch = client.batch()
    batch._add_write_pbs([write_types.Write.wrap(pb) for pb in writes])
    results: list[Any] = batch.commit()
    return results
