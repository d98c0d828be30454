"""tts text handling: limits, clean-up, numbers, scripts, voices and chunking (pure Python)."""

from __future__ import annotations

import random
import re

import pytest
from pydantic import ValidationError

from core.errors import InvalidInput
from pipelines.tts import TtsConfig, TtsInputs
from pipelines.tts.checks import precheck, prepare
from pipelines.tts.text import (
    Script,
    assign_voices,
    check_length,
    chunk_turns,
    clean,
    normalize,
    number_to_words,
    parse_script,
    split_text,
)

VOICES = ["joe", "joe-calm"]


def test_a_text_over_the_limit_is_rejected_with_the_limit_in_the_message() -> None:
    check_length("x" * 100, 100)
    with pytest.raises(InvalidInput, match="101 characters; the limit is 100") as exc:
        check_length("x" * 101, 100)
    assert exc.value.code == "text_too_long"


def test_precheck_applies_the_configured_limit() -> None:
    config = TtsConfig(max_chars=50)
    precheck(TtsInputs(text="a" * 50), config)
    with pytest.raises(InvalidInput, match="the limit is 50"):
        precheck(TtsInputs(text="a" * 51), config)


def test_clean_removes_control_and_zero_width_characters_and_collapses_spaces() -> None:
    text = "  Hello\x00 \u200bwor\u00adld,\t\tfriend\x07.  \r\n\r\n  Bye\u00a0 now \x1b "
    assert clean(text) == "Hello world, friend .\nBye now"


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("It costs $4,000.", "It costs four thousand dollars."),
        ("Meet at 9:30 or 10:05.", "Meet at nine thirty or ten oh five."),
        (
            "The 3rd of 21 items is 12.5% off.",
            "The third of twenty one items is twelve point five percent off.",
        ),
        ("Dr. Lee and Mr. Smith, e.g. the team.", "Doctor Lee and Mister Smith, for example the team."),
        ("We shipped 9 builds in 2024.", "We shipped nine builds in two thousand twenty four."),
        ("Call 0044 now", "Call zero zero four four now"),
        ("Cats & dogs", "Cats and dogs"),
        ("It was -5 degrees.", "It was minus five degrees."),
        ("No. 7 wins", "number seven wins"),
        ("Price: €1.50", "Price: one euro fifty cents"),
    ],
)
def test_normalize_spells_out_what_piper_reads_badly(text: str, spoken: str) -> None:
    assert normalize(text) == spoken


def test_number_words_have_no_and() -> None:
    assert number_to_words(0) == "zero"
    assert number_to_words(115) == "one hundred fifteen"
    assert number_to_words(1_000_001) == "one million one"


def test_a_plain_text_is_one_speaker() -> None:
    script = parse_script("Hello there.\nSecond line.")
    assert script == Script(labels=(None,), turns=((0, "Hello there. Second line."),))
    assert not script.is_script


def test_a_script_numbers_speakers_by_label_and_merges_consecutive_lines() -> None:
    script = parse_script("Speaker 2: Hi.\nspeaker 2: Still me.\nSpeaker 1: Hello!\nSpeaker 2 : Bye.")
    assert script.labels == ("Speaker 1", "Speaker 2")
    assert script.turns == ((1, "Hi. Still me."), (0, "Hello!"), (1, "Bye."))


@pytest.mark.parametrize(
    ("text", "code", "message"),
    [
        ("Speaker 1: Hi.\nNo label here.", "unlabelled_speaker", "line 2 of the script has no speaker label"),
        (
            "Intro line.\nSpeaker 1: Hi.",
            "unlabelled_speaker",
            "line 2 starts with a speaker label but line 1",
        ),
        ("Speaker 0: Hi.", "bad_speaker_label", "numbered from 1"),
        ("Speaker 1:   \nSpeaker 2: Hi.", "empty_turn", "Speaker 1 has nothing to say"),
    ],
)
def test_malformed_scripts_are_rejected_clearly(text: str, code: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as exc:
        parse_script(clean(text))
    assert exc.value.code == code


def _assign(text: str, **kwargs: object) -> list[str]:
    options: dict[str, object] = {"voice": None, "voices": {}, "references": (), "default_voice": "joe"}
    options.update(kwargs)
    return assign_voices(parse_script(text), known=VOICES, **options)  # type: ignore[arg-type]


def test_voices_per_speaker_in_speaker_order() -> None:
    voices = {"Speaker 2": "joe-calm", "Speaker 1": "joe"}
    assert _assign("Speaker 2: A.\nSpeaker 1: B.", voices=voices) == ["joe", "joe-calm"]
    assert _assign("Just text.") == ["joe"]
    assert _assign("Just text.", voice="joe-calm") == ["joe-calm"]
    assert _assign("Speaker 1: Alone.", voice="joe-calm") == ["joe-calm"]


def test_a_speaker_without_a_voice_is_named_in_the_error() -> None:
    with pytest.raises(InvalidInput, match="Speaker 2 has no voice") as exc:
        _assign("Speaker 1: A.\nSpeaker 2: B.", voices={"Speaker 1": "joe"})
    assert exc.value.code == "speaker_without_voice"


def test_an_unknown_voice_lists_the_configured_ones() -> None:
    with pytest.raises(InvalidInput, match="unknown voice 'alloy'; the configured voices are: joe, joe-calm"):
        _assign("Hello.", voice="alloy")
    with pytest.raises(InvalidInput, match="unknown voice 'nova'"):
        _assign("Speaker 1: A.\nSpeaker 2: B.", voices={"Speaker 1": "joe", "Speaker 2": "nova"})


def test_voices_for_speakers_the_text_does_not_have_are_rejected() -> None:
    with pytest.raises(InvalidInput, match="no 'Speaker N:' lines") as exc:
        _assign("Plain text.", voices={"Speaker 1": "joe"})
    assert exc.value.code == "not_a_script"
    with pytest.raises(InvalidInput, match="Speaker 3 named in voices"):
        _assign("Speaker 1: A.", voices={"Speaker 1": "joe", "Speaker 3": "joe"})


def test_the_schema_rejects_bad_fields() -> None:
    for bad in (
        {"text": ""},
        {"text": "   \n "},
        {"text": "hi", "format": "ogg"},
        {"text": "hi", "sample_rate": 11025},
        {"text": "hi", "speed": 0.1},
        {"text": "hi", "speed": 5},
        {"text": "hi", "loudness": -3},
        {"text": "hi", "voices": {"narrator": "joe"}},
        {"text": "hi", "references": {"Speaker 1": "https://example.com/a.wav"}},
        {"text": "hi", "unknown": 1},
    ):
        with pytest.raises(ValidationError):
            TtsInputs.model_validate(bad)


def test_piper_rejects_references_before_any_model_work() -> None:
    inputs = TtsInputs(text="Speaker 1: Hi.", references={"Speaker 1": "gs://bucket-name/uploads/u/a.wav"})
    with pytest.raises(InvalidInput, match="not supported by the piper backend") as exc:
        precheck(inputs, TtsConfig())
    assert exc.value.code == "references_not_supported"


def test_prepare_normalises_the_words_but_not_the_labels() -> None:
    prepared = prepare(
        TtsInputs(
            text="Speaker 1: I have 2 cats.\nSpeaker 2: And 3 dogs.",
            voices={"Speaker 1": "joe", "Speaker 2": "joe"},
        ),
        TtsConfig(),
        VOICES,
    )
    assert prepared.script.turns == ((0, "I have two cats."), (1, "And three dogs."))
    assert prepared.voice_names == ["joe", "joe"]


# --- chunking -----------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


def test_short_text_is_one_piece() -> None:
    assert split_text("  One   sentence. ", 100) == ["One sentence."]


def test_text_splits_at_sentences_first() -> None:
    text = "First sentence here. Second one is here! Third? Fourth sentence."
    pieces = split_text(text, 45)
    assert pieces == ["First sentence here. Second one is here!", "Third? Fourth sentence."]


def test_a_long_sentence_splits_at_clauses_then_words() -> None:
    sentence = (
        "When the rain stopped, we walked to the harbour; the boats were back, and the gulls were loud."
    )
    pieces = split_text(sentence, 40)
    assert all(len(p) <= 40 for p in pieces)
    assert pieces[0] == "When the rain stopped,"
    assert " ".join(pieces) == sentence
    run_on = " ".join(["word"] * 50)
    pieces = split_text(run_on, 33)
    assert all(len(p) <= 33 for p in pieces) and " ".join(pieces) == run_on
    assert split_text("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_random_texts_never_exceed_the_limit_and_keep_every_word() -> None:
    rng = random.Random(7)
    vocabulary = ["alpha", "beta,", "gamma.", "delta;", "epsilon", "zeta!", "eta", "theta?", "iota:", "kappa"]
    for _ in range(200):
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 300)))
        limit = rng.randint(8, 200)
        pieces = split_text(text, limit)
        assert all(0 < len(p) <= limit for p in pieces)
        assert _words(" ".join(pieces)) == _words(text)


def test_chunks_keep_one_speaker_each_unless_the_backend_takes_scripts() -> None:
    turns = [(0, "Hello there."), (1, "Hi."), (0, "How are you?")]
    assert chunk_turns(turns, 100, multi_speaker=False) == [
        [(0, "Hello there.")],
        [(1, "Hi.")],
        [(0, "How are you?")],
    ]
    packed = chunk_turns(turns, 100, multi_speaker=True)
    assert packed == [[(0, "Hello there."), (1, "Hi."), (0, "How are you?")]]
    tight = chunk_turns(turns, 15, multi_speaker=True)
    assert all(sum(len(t) for _, t in chunk) <= 15 for chunk in tight)
    assert [t for chunk in tight for t in chunk] == turns


def test_a_5000_character_text_chunks_under_the_limit_in_order() -> None:
    sentence = "The service turns long documents into clear speech for every listener, one piece at a time. "
    text = (sentence * 60)[:5000]
    chunks = chunk_turns([(0, text)], 400, multi_speaker=False)
    assert len(chunks) >= 5000 // 400
    assert all(sum(len(t) for _, t in chunk) <= 400 for chunk in chunks)
    assert re.sub(r"\s+", " ", " ".join(t for chunk in chunks for _, t in chunk)) == " ".join(text.split())
