"""The checks a ``tts`` job passes before it is queued, and again before the model runs.

Cheap: the standard library, pydantic and :mod:`pipelines.tts.text` only (no numpy, no model).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import InvalidInput
from pipelines.tts.spec import TtsConfig, TtsInputs
from pipelines.tts.text import Script, assign_voices, check_length, clean, normalize, parse_script


@dataclass(frozen=True)
class Prepared:
    """A job's text as speakers and turns, ready to chunk."""

    script: Script
    voice_names: list[str]
    #: speaker index -> the label its reference recording was given under
    references: dict[int, str]


def prepare(inputs: TtsInputs, config: TtsConfig, known_voices: list[str] | None) -> Prepared:
    """Clean, normalise and parse the text, and give every speaker a voice.

    Raises:
        InvalidInput: the text is too long or empty, a script is malformed, a speaker has no
            voice, a voice is unknown, or a reference is given to a backend that cannot clone.
    """
    check_length(inputs.text, config.max_chars)
    if inputs.references and config.backend == "piper":
        raise InvalidInput(
            "references (voice cloning) are not supported by the piper backend; "
            "choose configured voices with voice/voices",
            code="references_not_supported",
        )
    text = clean(inputs.text)
    if not text:
        raise InvalidInput("text has nothing to speak once control characters are removed", code="empty_text")
    parsed = parse_script(text)  # labels first: normalising would spell out "Speaker 1"
    script = Script(parsed.labels, tuple((speaker, normalize(words)) for speaker, words in parsed.turns))
    names = assign_voices(
        script,
        voice=inputs.voice,
        voices=inputs.voices,
        references=inputs.references,
        default_voice=config.default_voice,
        known=known_voices,
    )
    references = {i: label for i, label in enumerate(script.labels) if label in inputs.references}
    if not script.is_script and "Speaker 1" in inputs.references:
        references = {0: "Speaker 1"}
    return Prepared(script=script, voice_names=names, references=references)


def precheck(inputs: TtsInputs, config: TtsConfig) -> None:
    """The spec's precheck: the functions reject a bad text or voice before the job is queued.

    Piper's voices are in the config; other backends' voices are checked when the model loads.
    """
    prepare(inputs, config, sorted(config.voices) if config.backend == "piper" else None)
