"""Where a pipeline's inputs may name Storage objects: every such field is found, so ownership, size,
content and the download apply to it; a file the checks could not see is refused when the spec is made."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel

from core.errors import InvalidInput
from core.spec import FileInput, GsUri, PipelineModel, PipelineSpec, check_input_location, file_uris

AUDIO = FileInput(("audio/*",), 10 * 2**20)
Audio = Annotated[GsUri, AUDIO]


class OptionalFiles(PipelineModel):
    main: Audio
    extra: Audio | None = None
    voices: dict[str, Audio] | None = None


def _spec(inputs: type[BaseModel]) -> PipelineSpec:
    return PipelineSpec(name="files", inputs=inputs, outputs=BaseModel, config=BaseModel, loader="x:y")


def test_an_optional_file_field_is_a_file_the_checks_see() -> None:
    inputs = OptionalFiles(
        main="gs://media/uploads/alice/a.wav",
        extra="gs://media/uploads/mallory/secret.wav",
        voices={"Speaker 1": "gs://media/uploads/mallory/voice.wav"},
    )
    keys = {key: uri for key, uri, _ in file_uris(inputs)}
    assert keys == {
        "main": "gs://media/uploads/alice/a.wav",
        "extra": "gs://media/uploads/mallory/secret.wav",
        "voices.Speaker 1": "gs://media/uploads/mallory/voice.wav",
    }
    # so another user's object named in an optional field is refused like any other
    with pytest.raises(InvalidInput) as refused:
        check_input_location("extra", keys["extra"], "alice", "media")
    assert refused.value.code == "forbidden_object"


def test_an_unset_optional_file_is_no_file() -> None:
    assert [key for key, _, _ in file_uris(OptionalFiles(main="gs://media/uploads/alice/a.wav"))] == ["main"]
    assert set(_spec(OptionalFiles).file_fields()) == {"main", "extra"}


@pytest.mark.parametrize(
    "annotation",
    [list[Audio], tuple[Audio, ...], Audio | int, dict[str, list[Audio]]],
    ids=["list", "tuple", "union", "dict-of-lists"],
)
def test_a_file_the_checks_cannot_see_is_refused_when_the_spec_is_made(annotation: object) -> None:
    hidden = type("Hidden", (PipelineModel,), {"__annotations__": {"clips": annotation}})
    with pytest.raises(ValueError, match=r"Hidden\.clips: a file input must be a field"):
        _spec(hidden)
