"""Decoding the CloudEvents the functions receive into typed objects, in one place.

Shapes handled (all seen on the emulators, see shared LOCAL-STACK.md, and in production):

* Storage notification through Pub/Sub: ``google.cloud.pubsub.topic.v1.messagePublished`` whose
  ``message.data`` is the base64 object resource (``JSON_API_V1``) and whose attributes carry
  ``eventType``, ``bucketId``, ``objectId``, ``objectGeneration``.
* Storage directly through Eventarc: ``google.cloud.storage.object.v1.finalized`` with the object
  resource as ``data``.
* Firestore through Eventarc: ``google.cloud.firestore.document.v1.created`` with a
  ``DocumentEventData`` protobuf body. The emulator sends it base64-encoded; production sends raw
  bytes (which start with 0x0a and so never pass strict base64 validation).
* Firestore legacy (v1) JSON events, converted by functions-framework: ``data.value.fields``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from cloudevents.http import CloudEvent
from google.events.cloud.firestore_v1.types import DocumentEventData
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, Field

from core.errors import InvalidInput

PUBSUB_PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"
STORAGE_FINALIZED = "google.cloud.storage.object.v1.finalized"


class StorageObject(BaseModel):
    """The fields of a Storage object resource that the functions use."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    bucket: str
    name: str
    generation: str = ""
    size: int = 0
    content_type: str | None = Field(None, alias="contentType")
    metadata: dict[str, str] = Field(default_factory=dict)


class StorageEvent(BaseModel):
    event_type: str  # OBJECT_FINALIZE, OBJECT_DELETE, ...
    object: StorageObject


class PubSubMessage(BaseModel):
    data: bytes
    attributes: dict[str, str]
    message_id: str


def pubsub_message(event: CloudEvent) -> PubSubMessage:
    """The Pub/Sub message inside a ``messagePublished`` event."""
    data = event.get_data()
    if not isinstance(data, dict) or not isinstance(data.get("message"), dict):
        raise InvalidInput("not a Pub/Sub message event")
    msg = data["message"]
    try:
        body = base64.b64decode(msg.get("data") or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("Pub/Sub message data is not base64") from exc
    return PubSubMessage(
        data=body,
        attributes=dict(msg.get("attributes") or {}),
        message_id=str(msg.get("messageId") or msg.get("message_id") or ""),
    )


def storage_event(event: CloudEvent) -> StorageEvent:
    if event["type"] == STORAGE_FINALIZED:
        return StorageEvent(
            event_type="OBJECT_FINALIZE", object=StorageObject.model_validate(event.get_data())
        )
    msg = pubsub_message(event)
    try:
        resource = json.loads(msg.data)
    except ValueError as exc:
        raise InvalidInput("Storage notification payload is not JSON") from exc
    return StorageEvent(
        event_type=msg.attributes.get("eventType", ""), object=StorageObject.model_validate(resource)
    )


class DocumentEvent(BaseModel):
    path: str  # e.g. "jobs/abc"
    fields: dict[str, Any]

    @property
    def doc_id(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def firestore_document(event: CloudEvent) -> DocumentEvent:
    """The new value of the document in a Firestore created/written event."""
    data = event.get_data()
    if isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
        with contextlib.suppress(binascii.Error, ValueError):  # production sends raw protobuf
            raw = base64.b64decode(raw, validate=True)
        return _document_from_protobuf(raw)
    elif isinstance(data, dict):
        as_json = data
    else:
        raise InvalidInput(f"unexpected Firestore event payload: {type(data).__name__}")
    value = as_json.get("value") or {}
    name = str(value.get("name", ""))
    if "/documents/" not in name:
        raise InvalidInput("Firestore event has no document name")
    fields = {k: from_value(v) for k, v in (value.get("fields") or {}).items()}
    return DocumentEvent(path=name.split("/documents/", 1)[1], fields=fields)


def _document_from_protobuf(raw: bytes) -> DocumentEvent:
    """:func:`firestore_document` of a protobuf body, read from the message itself (the values
    as :func:`from_value` reads their JSON form, without writing and parsing that JSON)."""
    try:
        message = _EVENT_PB.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput("Firestore event payload is not a DocumentEventData") from exc
    name = message.value.name if message.HasField("value") else ""
    if "/documents/" not in name:
        raise InvalidInput("Firestore event has no document name")
    fields = {k: _from_pb_value(v) for k, v in message.value.fields.items()}
    return DocumentEvent(path=name.split("/documents/", 1)[1], fields=fields)


_EVENT_PB = type(DocumentEventData.pb(DocumentEventData()))


def _from_pb_value(value: Any) -> Any:
    """A Firestore ``Value`` protobuf as a plain Python value (as :func:`from_value`)."""
    kind = value.WhichOneof("value_type")
    if kind == "timestamp_value":
        return value.timestamp_value.ToDatetime(tzinfo=UTC)
    if kind == "map_value":
        return {k: _from_pb_value(v) for k, v in value.map_value.fields.items()}
    if kind == "array_value":
        return [_from_pb_value(v) for v in value.array_value.values]
    if kind == "geo_point_value":
        return {"latitude": value.geo_point_value.latitude, "longitude": value.geo_point_value.longitude}
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)  # string, integer, double, boolean, bytes, reference


def from_value(value: dict[str, Any]) -> Any:
    """A Firestore ``Value`` (REST/JSON form) as a plain Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "integerValue" in value:
        return int(value["integerValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "booleanValue" in value:
        return bool(value["booleanValue"])
    if "nullValue" in value:
        return None
    if "timestampValue" in value:
        return datetime.fromisoformat(str(value["timestampValue"]).replace("Z", "+00:00"))
    if "mapValue" in value:
        return {k: from_value(v) for k, v in (value["mapValue"].get("fields") or {}).items()}
    if "arrayValue" in value:
        return [from_value(v) for v in (value["arrayValue"].get("values") or [])]
    if "referenceValue" in value:
        return value["referenceValue"]
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    if "geoPointValue" in value:
        return dict(value["geoPointValue"])
    return None
