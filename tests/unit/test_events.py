"""Decoding the events the functions receive, in the shapes the emulators and production send."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents.http import CloudEvent
from google.events.cloud.firestore_v1.types import Document, DocumentEventData, MapValue, Value

from core.errors import InvalidInput
from functions.events import firestore_document, pubsub_message, storage_event
from functions.handlers import derived_job_id
from gpu_service.push import BadEnvelope, decode

OBJECT = {
    "kind": "storage#object",
    "name": "uploads/u1/transcribe/talk.wav",
    "bucket": "media",
    "generation": "1795342368888560",
    "contentType": "audio/wav",
    "size": "15",
    "metadata": {"jobId": "j-123"},
}


def _pubsub_event(data: bytes, attributes: dict[str, str]) -> CloudEvent:
    return CloudEvent(
        {
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": "//pubsub.googleapis.com/x",
            "id": "1",
        },
        {"message": {"data": base64.b64encode(data).decode(), "attributes": attributes, "messageId": "7"}},
    )


def test_storage_notification_through_pubsub() -> None:
    event = storage_event(_pubsub_event(json.dumps(OBJECT).encode(), {"eventType": "OBJECT_FINALIZE"}))
    assert event.event_type == "OBJECT_FINALIZE"
    assert event.object.name == OBJECT["name"]
    assert event.object.size == 15 and event.object.content_type == "audio/wav"
    assert event.object.metadata == {"jobId": "j-123"}


def test_storage_event_direct_from_eventarc() -> None:
    ce = CloudEvent(
        {
            "type": "google.cloud.storage.object.v1.finalized",
            "source": "//storage.googleapis.com/x",
            "id": "2",
        },
        OBJECT,
    )
    assert storage_event(ce).object.generation == "1795342368888560"


def test_malformed_pubsub_payloads_are_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        storage_event(_pubsub_event(b"not json", {}))
    bad = CloudEvent({"type": "t", "source": "s", "id": "3"}, {"message": {"data": "%%%"}})
    with pytest.raises(InvalidInput, match="base64"):
        pubsub_message(bad)


def _document_event_bytes() -> bytes:
    doc = Document(
        name="projects/p/databases/(default)/documents/jobs/job-1",
        fields={
            "uid": Value(string_value="u1"),
            "pipeline": Value(string_value="transcribe"),
            "inputs": Value(
                map_value=MapValue(
                    fields={"media": Value(string_value="gs://b/o"), "beam_size": Value(integer_value=3)}
                )
            ),
            "flag": Value(boolean_value=True),
            "nothing": Value(null_value=0),
        },
    )
    return DocumentEventData.serialize(DocumentEventData(value=doc))


@pytest.mark.parametrize("encoding", ["emulator-base64", "production-raw"])
def test_firestore_created_event_protobuf(encoding: str) -> None:
    raw = _document_event_bytes()
    body = base64.b64encode(raw) if encoding == "emulator-base64" else raw
    ce = CloudEvent(
        {"type": "google.cloud.firestore.document.v1.created", "source": "//firestore", "id": "4"}, body
    )
    doc = firestore_document(ce)
    assert doc.path == "jobs/job-1" and doc.doc_id == "job-1"
    assert doc.fields == {
        "uid": "u1",
        "pipeline": "transcribe",
        "inputs": {"media": "gs://b/o", "beam_size": 3},
        "flag": True,
        "nothing": None,
    }


def test_derived_job_id_is_stable_per_object_generation() -> None:
    a = derived_job_id("media", "uploads/u/transcribe/x.wav", "1")
    assert a == derived_job_id("media", "uploads/u/transcribe/x.wav", "1")
    assert a != derived_job_id("media", "uploads/u/transcribe/x.wav", "2")


def test_push_envelope_decodes_to_a_job_message() -> None:
    data = base64.b64encode(json.dumps({"jobId": "j1", "pipeline": "transcribe"}).encode()).decode()
    body = json.dumps({"message": {"data": data, "messageId": "1", "message_id": "1"}, "subscription": "s"})
    envelope, message = decode(body.encode())
    assert message.job_id == "j1" and message.pipeline == "transcribe"
    assert envelope.message.message_id == "1"


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"message": {"data": "%%%"}}', b'{"message": {"data": "e30="}}', b"[]"],
)
def test_poison_push_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(BadEnvelope):
        decode(body)


def test_a_protobuf_event_reads_as_its_json_form_does_for_every_kind_of_value() -> None:
    from datetime import UTC, datetime

    from google.events.cloud.firestore_v1.types import ArrayValue
    from google.protobuf.timestamp_pb2 import Timestamp
    from google.type.latlng_pb2 import LatLng

    from functions.events import from_value

    when = Timestamp(seconds=1_800_000_000, nanos=123_456_789)
    doc = Document(
        name="projects/p/databases/(default)/documents/jobs/job-2",
        fields={
            "createdAt": Value(timestamp_value=when),
            "ratio": Value(double_value=0.25),
            "big": Value(integer_value=2**40),
            "blob": Value(bytes_value=b"\x00\x01"),
            "ref": Value(reference_value="projects/p/databases/(default)/documents/a/b"),
            "where": Value(geo_point_value=LatLng(latitude=1.5, longitude=-2.5)),
            "list": Value(array_value=ArrayValue(values=[Value(string_value="x"), Value(null_value=0)])),
            "empty": Value(map_value=MapValue()),
        },
    )
    raw = DocumentEventData.serialize(DocumentEventData(value=doc))
    ce = CloudEvent({"type": "google.cloud.firestore.document.v1.created", "source": "//f", "id": "5"}, raw)
    fields = firestore_document(ce).fields
    as_json = json.loads(DocumentEventData.to_json(DocumentEventData.deserialize(raw)))
    assert fields == {k: from_value(v) for k, v in as_json["value"]["fields"].items()}
    assert fields["createdAt"] == datetime(2027, 1, 15, 8, 0, 0, 123456, tzinfo=UTC)
    assert fields["big"] == 2**40 and fields["list"] == ["x", None] and fields["empty"] == {}


def test_a_body_that_is_not_a_document_event_is_invalid_input() -> None:
    ce = CloudEvent(
        {"type": "google.cloud.firestore.document.v1.created", "source": "//f", "id": "6"}, b"\xff\xff"
    )
    with pytest.raises(InvalidInput):
        firestore_document(ce)
