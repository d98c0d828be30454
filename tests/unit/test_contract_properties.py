"""Property tests: the contract's patterns and typed writes, against plain-Python statements of the
rules (no regular expressions), over generated text that includes line ends, non-ASCII letters
and look-alike digits."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from core.contract import (
    JOB_ID_PATTERN,
    UID_PATTERN,
    JobDoc,
    JobMessage,
    JobStatus,
    Progress,
    validate_job_id,
)
from core.errors import InvalidInput
from core.patch import Patch, UnknownField
from core.routes import check_name
from core.spec import parse_gs_uri
from core.work import PART_KEY_PATTERN, WorkRef

ASCII_ALNUM = frozenset(string.ascii_letters + string.digits)
# Characters that a pattern with '$' or a Unicode class lets through by mistake.
TRICKY = "\n\r\t \x00/.`@_-öéßΩ٣１ﬁ"
text = st.text(alphabet=st.sampled_from(sorted(ASCII_ALNUM) + list(TRICKY)), max_size=140) | st.text(
    max_size=40
)


def is_job_id(value: str) -> bool:
    return (
        1 <= len(value) <= 128
        and value[0] in ASCII_ALNUM
        and all(c in ASCII_ALNUM | {"_", "-"} for c in value)
    )


def is_uid(value: str) -> bool:
    return 1 <= len(value) <= 128 and all(c in ASCII_ALNUM | set("_.@-") for c in value)


def is_map_key(value: str) -> bool:
    return 1 <= len(value) <= 128 and all(c in ASCII_ALNUM | {"_", "-"} for c in value)


def is_name(value: str) -> bool:
    lower = set(string.ascii_lowercase)
    return (
        1 <= len(value) <= 40
        and value[0] in lower
        and all(c in lower | set(string.digits) | {"_"} for c in value)
    )


def is_part_key(value: str) -> bool:
    lane, dash, index = value.partition("-")
    if not is_name(lane):
        return False
    if not dash:
        return True
    return (
        1 <= len(index) <= 6 and all(c in string.digits for c in index) and (index == "0" or index[0] != "0")
    )


@given(text)
@example("abc\n")
@example("jöb-1")
@example("a" * 128)
@example("a" * 129)
def test_a_job_id_is_accepted_exactly_when_it_fits_the_documented_rule(value: str) -> None:
    assert bool(JOB_ID_PATTERN.match(value)) is is_job_id(value)
    if is_job_id(value):
        assert validate_job_id(value) == value
        assert JobMessage(job_id=value, pipeline="p").job_id == value
    else:
        with pytest.raises(InvalidInput) as refused:
            validate_job_id(value)
        assert refused.value.code == "invalid_job_id"
        with pytest.raises(ValidationError):
            JobMessage(job_id=value, pipeline="p")


@given(text)
@example("user1\n")
@example("üser")
def test_a_uid_is_accepted_exactly_when_it_fits_the_documented_rule(value: str) -> None:
    assert bool(UID_PATTERN.match(value)) is is_uid(value)
    if is_uid(value):
        assert JobDoc.model_validate({"uid": value, "pipeline": "p"}).uid == value
    else:
        with pytest.raises(ValidationError, match="uid"):
            JobDoc.model_validate({"uid": value, "pipeline": "p"})


@given(text)
@example("speech\n")
@example("chunk-3\n")
@example("chunk-03")
def test_a_part_key_is_accepted_exactly_when_it_fits_the_documented_rule(value: str) -> None:
    assert bool(PART_KEY_PATTERN.match(value)) is is_part_key(value)
    if is_part_key(value):
        assert WorkRef("job-1", value).part == value
    else:
        with pytest.raises(ValueError):
            WorkRef("job-1", value)


@given(text)
@example("transcribe\n")
def test_a_pipeline_name_is_accepted_exactly_when_it_fits_the_documented_rule(value: str) -> None:
    if is_name(value):
        assert check_name("pipeline", value) == value
    else:
        with pytest.raises(ValueError):
            check_name("pipeline", value)


# -- typed writes --------------------------------------------------------------------------------


@given(text, st.sampled_from(list(JobStatus)))
@example("speech\n", JobStatus.RUNNING)
def test_a_map_key_becomes_a_field_path_segment_only_when_it_is_a_plain_identifier(
    key: str, status: JobStatus
) -> None:
    if is_map_key(key):
        assert Patch().set(f"parts.{key}.status", status).to_dict() == {f"parts.{key}.status": status}
    else:
        with pytest.raises((UnknownField, ValueError)):
            Patch().set(f"parts.{key}.status", status)


@given(st.sampled_from(sorted(JobDoc.model_fields)))
def test_every_field_is_written_by_its_camel_case_name(name: str) -> None:
    alias = JobDoc.model_fields[name].alias or name
    assert Patch().delete(name).to_dict().keys() == {alias}
    assert "_" not in alias


@given(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80))
def test_a_progress_write_holds_a_fraction_in_0_to_1_and_a_short_stage(fraction: float, stage: str) -> None:
    fits = 0.0 <= fraction <= 1.0 and len(stage) <= 64
    if fits:
        written = Patch().set("progress", Progress(fraction=fraction, stage=stage)).to_dict()["progress"]
        assert written == {"fraction": fraction, "stage": stage}
    else:
        with pytest.raises(ValidationError):
            Patch().set("progress", Progress(fraction=fraction, stage=stage))


@given(st.one_of(st.integers(), st.text(max_size=10), st.floats(allow_nan=False), st.none()))
def test_an_attempt_write_is_an_integer_equal_to_what_was_given_or_refused(value: object) -> None:
    try:
        written = Patch().set("attempt", value).to_dict()["attempt"]
    except (ValueError, TypeError):
        return
    assert type(written) is int
    assert written == (float(value) if isinstance(value, str) else value)


@given(text, text)
def test_a_write_never_names_a_field_the_contract_does_not_have(first: str, second: str) -> None:
    path = f"{first}.{second}" if second else first
    try:
        built = Patch().set(path, None)
    except (UnknownField, ValueError, TypeError):
        return
    (field_path,) = built.to_dict()
    top = field_path.split(".")[0]
    assert top in {info.alias or name for name, info in JobDoc.model_fields.items()}


@given(st.sampled_from(["media-bucket", "b1.example"]), text)
@example("media-bucket", "uploads/u/a.wav\n")
def test_a_gs_uri_names_exactly_the_object_it_spells(bucket: str, name: str) -> None:
    uri = f"gs://{bucket}/{name}"
    fits = bool(name) and not name.endswith("/") and "\n" not in name and "\r" not in name
    if fits:
        assert parse_gs_uri(uri) == (bucket, name)
    else:
        with pytest.raises(ValueError):
            parse_gs_uri(uri)
