"""What ``GET /v1/pipelines`` tells an app about each enabled pipeline (the route itself, its
token check and its cache headers run on the stack: tests/integration/test_pipelines_route.py)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from api.discovery import Discovery
from core.spec import PipelineModel, PipelineSpec
from pipelines.registry import catalog


def listing(enabled: list[str], settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    body, _ = Discovery(catalog(enabled, ("devkit.flaky:SPEC",), settings), 2**30).answer()
    return {p["name"]: p for p in json.loads(body)["pipelines"]}


def test_only_the_enabled_pipelines_are_listed_with_their_schemas() -> None:
    found = listing(["transcribe", "inpaint", "flaky"])
    assert sorted(found) == ["flaky", "inpaint", "transcribe"]
    transcribe = found["transcribe"]
    assert transcribe["streams"] is True and found["inpaint"]["streams"] is False
    assert transcribe["dropField"] == "media"
    props = transcribe["inputSchema"]["properties"]
    # the form shows the fields in the model's order
    assert list(props) == ["media", "language", "beam_size", "vad", "word_timestamps", "initial_prompt"]
    assert transcribe["inputSchema"]["required"] == ["media"]
    assert props["beam_size"] == {**props["beam_size"], "minimum": 1, "maximum": 10, "default": 5}
    assert props["vad"]["type"] == "boolean"
    assert "text" in transcribe["outputSchema"]["properties"]
    assert "files" in transcribe["outputSchema"]["properties"]


def test_file_inputs_are_marked_with_their_types_and_size() -> None:
    found = listing(["inpaint", "transcribe", "tts"])
    inpaint = found["inpaint"]
    image = {"contentTypes": ["image/png", "image/jpeg", "image/webp"], "maxBytes": 20 * 2**20}
    assert inpaint["files"] == {"image": image, "mask": image}
    assert inpaint["inputSchema"]["properties"]["mask"]["x-file"] == image
    assert "x-file" not in inpaint["inputSchema"]["properties"]["prompt"]
    # A dict of files (one recording per speaker): each value is a file.
    references = found["tts"]["inputSchema"]["properties"]["references"]
    assert references["additionalProperties"]["x-file"] == {
        "contentTypes": ["audio/*"],
        "maxBytes": 50 * 2**20,
    }
    # No larger than the upload route lets through.
    small = Discovery(catalog(["transcribe"]), 1000).answer()[0]
    assert json.loads(small)["pipelines"][0]["files"]["media"]["maxBytes"] == 1000


def test_enums_and_ranges_are_in_the_schema() -> None:
    tts = listing(["tts"])["tts"]["inputSchema"]["properties"]
    assert tts["format"]["enum"] == ["wav", "mp3", "opus", "aac", "flac", "pcm"]
    assert tts["format"]["default"] == "mp3"
    inpaint = listing(["inpaint"])["inpaint"]["inputSchema"]["properties"]
    assert {"enum": ["png", "jpeg", "webp"], "type": "string"} in inpaint["output_format"]["anyOf"]


def test_limits_are_the_deployments_caps() -> None:
    default = {c["quantity"]: c for c in listing(["transcribe"])["transcribe"]["limits"]}
    assert default["duration_seconds"]["max"] == 4 * 3600
    assert default["duration_seconds"]["code"] == "duration_exceeded"
    assert default["duration_seconds"]["field"] == "media"
    tuned = listing(["transcribe"], {"transcribe": {"max_duration_seconds": 60}})["transcribe"]["limits"]
    assert {c["quantity"]: c["max"] for c in tuned}["duration_seconds"] == 60


def test_a_bad_setting_leaves_out_only_that_pipelines_limits() -> None:
    found = listing(["transcribe", "tts"], {"transcribe": {"max_duration_seconds": "soon"}})
    assert found["transcribe"]["limits"] == []
    assert found["transcribe"]["inputSchema"]["properties"]["media"]["x-file"]
    assert found["tts"]["limits"]


def test_a_job_the_pipeline_accepts_fits_its_schema() -> None:
    found = listing(["transcribe", "tts", "inpaint"])
    good = {
        "transcribe": {"media": "gs://b/uploads/u/a.wav", "beam_size": 2, "language": "en"},
        "tts": {"text": "hello", "format": "opus", "speed": 1.5},
        "inpaint": {"image": "gs://b/uploads/u/a.png", "mask": "gs://b/uploads/u/m.png", "steps": 4},
    }
    for name, inputs in good.items():
        jsonschema.validate(inputs, found[name]["inputSchema"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"media": "gs://b/uploads/u/a.wav", "beam_size": 11}, found["transcribe"]["inputSchema"]
        )


class Opaque:
    pass


class _Inputs(PipelineModel):
    model_config = {"arbitrary_types_allowed": True, "extra": "forbid"}
    thing: Opaque | None = None


class _Nothing(BaseModel):
    pass


def test_a_pipeline_that_cannot_be_described_leaves_the_others_listed() -> None:
    from core.spec import Catalog

    odd = PipelineSpec(name="odd", inputs=_Inputs, outputs=_Nothing, config=_Nothing, loader="x:y")
    base = catalog(["flaky"], ("devkit.flaky:SPEC",))
    both = Catalog(specs={**base.specs, "odd": odd})
    body, etag = Discovery(both, 2**30).answer()
    assert [p["name"] for p in json.loads(body)["pipelines"]] == ["flaky"]
    assert etag.startswith('"')
