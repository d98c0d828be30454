"""Text handling for speech, pure Python: limits, clean-up, ``Speaker N:`` scripts, chunking.

Everything a job can get wrong about its text is found here, before any model work, and raised as
:class:`~core.errors.InvalidInput` with a message that says what to change. Imports the standard
library and :mod:`core` only, so the functions can run the same checks before queueing a job.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.errors import InvalidInput, shown

# --- limits and clean-up ------------------------------------------------------------------------


def check_length(text: str, max_chars: int) -> None:
    """Raises ``InvalidInput`` (``text_too_long``) for a text longer than ``max_chars``."""
    if len(text) > max_chars:
        raise InvalidInput(
            f"text is {len(text)} characters; the limit is {max_chars}: split it into several jobs",
            code="text_too_long",
        )


_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


def clean(text: str) -> str:
    """Unicode NFC, line ends as ``\\n``, control and zero-width characters gone, spaces collapsed
    within each line, blank lines dropped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.translate(_ZERO_WIDTH)
    text = "".join(
        ch if ch in "\n\t" or unicodedata.category(ch)[0] != "C" else " " for ch in text
    )  # fmt: skip
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# --- numbers and abbreviations ------------------------------------------------------------------

# fmt: off
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
# fmt: on
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINALS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
             "nine": "ninth", "twelve": "twelfth"}  # fmt: skip
#: digits longer than this are read digit by digit (phone numbers, ids)
_MAX_CARDINAL_DIGITS = 15


def number_to_words(n: int) -> str:
    """English cardinal without "and": ``2024`` -> ``"two thousand twenty four"``."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{number_to_words(high)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_words(words: str) -> str:
    """The ordinal of a cardinal in words: ``"twenty one"`` -> ``"twenty first"``."""
    head, _, last = words.rpartition(" ")
    if last in _ORDINALS:
        last = _ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def digits_to_words(text: str) -> str:
    """Each digit as a word: ``"07"`` -> ``"zero seven"``."""
    return " ".join(_ONES[int(d)] for d in text)


def _cardinal(digits: str) -> str:
    digits = digits.replace(",", "")
    if len(digits) > _MAX_CARDINAL_DIGITS or (len(digits) > 1 and digits.startswith("0")):
        return digits_to_words(digits)
    return number_to_words(int(digits))


_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"),
             "£": ("pound", "pounds", "penny", "pence")}  # fmt: skip
_MONEY = re.compile(r"([$€£])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{2}))?(?!\d)")
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_NUMBER = re.compile(r"(?<![\w.,])(-)?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(st|nd|rd|th)?(%)?(?![\w])")


def _money(m: re.Match[str]) -> str:
    one, many, cent, cents = _CURRENCY[m[1]]
    whole = int(m[2].replace(",", ""))
    words = f"{number_to_words(whole)} {one if whole == 1 else many}"
    if m[3] and int(m[3]):
        words += f" {number_to_words(int(m[3]))} {cent if int(m[3]) == 1 else cents}"
    return words


def _time(m: re.Match[str]) -> str:
    hours, minutes = int(m[1]), int(m[2])
    if minutes == 0:
        return f"{number_to_words(hours)} o'clock"
    spoken = number_to_words(minutes) if minutes >= 10 else f"oh {number_to_words(minutes)}"
    return f"{number_to_words(hours)} {spoken}"


def _number(m: re.Match[str]) -> str:
    minus, whole, fraction, ordinal, percent = m.groups()
    words = _cardinal(whole)
    if ordinal and not fraction:
        words = ordinal_words(words)
    if fraction:
        words += " point " + digits_to_words(fraction)
    if percent:
        words += " percent"
    return ("minus " if minus else "") + words


_ABBREVIATIONS: tuple[tuple[str, str], ...] = (
    (r"\bMr\.", "Mister"),
    (r"\bMrs\.", "Missus"),
    (r"\bMs\.", "Miss"),
    (r"\bDr\.", "Doctor"),
    (r"\bProf\.", "Professor"),
    (r"\bJr\.", "Junior"),
    (r"\bSr\.", "Senior"),
    (r"\bSt\.(?= [A-Z])", "Saint"),
    (r"\bvs\.?(?= )", "versus"),
    (r"\betc\.", "et cetera"),
    (r"\be\.g\.", "for example"),
    (r"\bi\.e\.", "that is"),
    (r"\bapprox\.", "approximately"),
    (r"\bNo\.(?= ?\d)", "number"),
    (r"\bkm\b(?=[\s.,;:!?]|$)", "kilometers"),
    (r"\bkg\b(?=[\s.,;:!?]|$)", "kilograms"),
)
_ABBREVIATION_RES = tuple((re.compile(pattern), spoken) for pattern, spoken in _ABBREVIATIONS)
_SYMBOLS = {"&": " and ", "+": " plus ", "=": " equals ", "@": " at ", "#": " number "}
_SYMBOL_RE = re.compile(r"(?<=\s)[&+=@]|[&+=@](?=\s)|#(?=\d)")


def normalize(text: str) -> str:
    """What Piper reads badly, spelled out: numbers, money, times, percentages, ordinals, common
    abbreviations and symbols. ``"Dr. Lee paid $4,000 at 9:30."`` -> ``"Doctor Lee paid four
    thousand dollars at nine thirty."``. Keeps line breaks (script lines) and punctuation."""
    for pattern, spoken in _ABBREVIATION_RES:
        text = pattern.sub(spoken, text)
    text = _SYMBOL_RE.sub(lambda m: _SYMBOLS[m[0]], text)
    text = _MONEY.sub(_money, text)
    text = _TIME.sub(_time, text)
    text = _NUMBER.sub(_number, text)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))


# --- scripts ------------------------------------------------------------------------------------

_LABELLED = re.compile(r"^\s*speaker\s*([0-9]+)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)
MAX_SPEAKERS = 32


@dataclass(frozen=True)
class Script:
    """A text as turns: ``labels[i]`` is the label of speaker ``i`` (``None`` for a plain text)."""

    labels: tuple[str | None, ...]
    turns: tuple[tuple[int, str], ...]

    @property
    def is_script(self) -> bool:
        return self.labels != (None,)


def parse_script(text: str) -> Script:
    """Split a cleaned text into turns. A text whose first line is ``Speaker N: ...`` is a script:
    then every line must start with a label. Speakers are numbered in label order (Speaker 1
    before Speaker 2), whatever order they first speak in.

    Raises:
        InvalidInput: a line of a script without a label, ``Speaker 0``, too many speakers, or a
            label with nothing to say.
    """
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise InvalidInput("text is empty: give the words to speak", code="empty_text")
    if not _LABELLED.match(lines[0]):
        for number, line in enumerate(lines, 1):
            if _LABELLED.match(line):
                raise InvalidInput(
                    f"line {number} starts with a speaker label but line 1 has none: in a script "
                    "every line starts with 'Speaker N:'",
                    code="unlabelled_speaker",
                )
        return Script(labels=(None,), turns=((0, " ".join(lines)),))
    said: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        m = _LABELLED.match(line)
        if m is None:
            raise InvalidInput(
                f"line {number} of the script has no speaker label ({shown(line, 40)}): every line "
                "of a script starts with 'Speaker N:'",
                code="unlabelled_speaker",
            )
        n = int(m[1]) if len(m[1]) <= 3 else 0
        if not 1 <= n <= 999:
            raise InvalidInput(
                f"line {number}: speakers are numbered from 1 ('Speaker 1:'), not {shown(m[1], 20)}",
                code="bad_speaker_label",
            )
        words = m[2].strip()
        if not words:
            raise InvalidInput(f"line {number}: Speaker {n} has nothing to say", code="empty_turn")
        said.append((n, words))
    numbers = sorted({n for n, _ in said})
    if len(numbers) > MAX_SPEAKERS:
        raise InvalidInput(
            f"the script has {len(numbers)} speakers; the limit is {MAX_SPEAKERS}", code="too_many_speakers"
        )
    index = {n: i for i, n in enumerate(numbers)}
    turns: list[tuple[int, str]] = []
    for n, words in said:  # consecutive lines of one speaker are one turn
        if turns and turns[-1][0] == index[n]:
            turns[-1] = (index[n], f"{turns[-1][1]} {words}")
        else:
            turns.append((index[n], words))
    return Script(labels=tuple(f"Speaker {n}" for n in numbers), turns=tuple(turns))


def assign_voices(
    script: Script,
    *,
    voice: str | None,
    voices: Mapping[str, str],
    references: Collection[str],
    default_voice: str,
    known: Sequence[str] | None,
) -> list[str]:
    """The voice name of each speaker, in speaker order.

    A plain text speaks ``voice`` (or ``default_voice``). A script takes each speaker's voice from
    ``voices``; a script with one speaker may use ``voice`` instead. ``known`` lists the configured
    voices (``None``: the backend checks names itself).

    Raises:
        InvalidInput: a speaker without a voice (naming its label), a voice not configured (listing
            the configured ones), or ``voices``/``references`` naming a speaker the text lacks.
    """
    labels = [label for label in script.labels if label is not None]
    given = set(voices) | set(references)
    if not script.is_script:
        if voices:
            raise InvalidInput(
                "voices maps the speakers of a script, but the text has no 'Speaker N:' lines; "
                "use voice for a single-voice text",
                code="not_a_script",
            )
        given -= {"Speaker 1"}  # a plain text is Speaker 1 when it is given a reference
    stray = sorted(given - set(labels))
    if stray:
        raise InvalidInput(
            f"{', '.join(stray)} named in voices/references but the text has no lines for "
            f"{'it' if len(stray) == 1 else 'them'}",
            code="unknown_speaker",
        )
    names: list[str] = []
    for label in script.labels:
        cloned_as = label if label is not None else "Speaker 1"  # a plain text is Speaker 1
        name = voices.get(label) if label is not None else None
        if name is None and (label is None or len(labels) == 1):
            name = voice or (None if cloned_as in references else default_voice)
        if name is None and cloned_as in references:
            name = cloned_as  # a cloned voice: named after its speaker
        if name is None:
            if known is not None and not known:
                raise InvalidInput(
                    f"{label} has no voice: this deployment has no configured voices, so give a "
                    f"reference recording for it in references",
                    code="speaker_without_voice",
                )
            example = default_voice if known is None or default_voice in known else sorted(known)[0]
            raise InvalidInput(
                f"{label} has no voice: add it to voices, e.g. {{{label!r}: {example!r}}}",
                code="speaker_without_voice",
            )
        names.append(name)
    if known is not None:
        for label, name in zip(script.labels, names, strict=True):
            if (label if label is not None else "Speaker 1") in references:
                continue
            if name in known:
                continue
            speaker = label or "Speaker 1"
            if not known:
                raise InvalidInput(
                    f"{speaker} has no voice: this deployment has no configured voices, so give a "
                    f"reference recording for it in references",
                    code="speaker_without_voice",
                )
            if name == default_voice and voices.get(speaker) != name and voice != name:
                raise InvalidInput(
                    f"{speaker} has no voice and the default voice {shown(name, 60)} is not configured; "
                    f"name one of {', '.join(sorted(known))} in voice/voices, or give a reference",
                    code="speaker_without_voice",
                )
            raise InvalidInput(
                f"unknown voice {shown(name, 60)}; the configured voices are: {', '.join(sorted(known))}",
                code="unknown_voice",
            )
    return names


# --- chunking -----------------------------------------------------------------------------------

# closing quotes and dashes written as escapes: \u00bb \u201d \u2019, \u2014 \u2013
_SENTENCE_END = re.compile("(?<=[.!?\u2026])[\"')\\]\u00bb\u201d\u2019]*\\s+")
_CLAUSE_END = re.compile("(?<=[,;:\u2014\u2013])\\s+|\\s+(?=[\u2014\u2013-]\\s)")


def _pack(pieces: Iterable[str], limit: int) -> list[str]:
    out: list[str] = []
    for piece in pieces:
        if out and len(out[-1]) + 1 + len(piece) <= limit:
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _split_words(text: str, limit: int) -> list[str]:
    words: list[str] = []
    for word in text.split():
        words.extend(word[i : i + limit] for i in range(0, len(word), limit))
    return _pack(words, limit)


def _split_clauses(sentence: str, limit: int) -> list[str]:
    pieces: list[str] = []
    for clause in filter(None, (c.strip() for c in _CLAUSE_END.split(sentence))):
        pieces.extend([clause] if len(clause) <= limit else _split_words(clause, limit))
    return _pack(pieces, limit)


def split_text(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters: whole sentences where they fit, else
    clauses, else words (a word longer than ``limit`` is cut). Pieces are packed greedily."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    text = " ".join(text.split())
    if len(text) <= limit:
        return [text] if text else []
    pieces: list[str] = []
    for sentence in filter(None, (s.strip() for s in _SENTENCE_END.split(text))):
        pieces.extend([sentence] if len(sentence) <= limit else _split_clauses(sentence, limit))
    return _pack(pieces, limit)


def chunk_turns(
    turns: Sequence[tuple[int, str]], limit: int, *, multi_speaker: bool
) -> list[list[tuple[int, str]]]:
    """Turns in chunks of at most ``limit`` characters (the sum of the turns' texts).

    A long turn is split with :func:`split_text`. A multi-speaker backend gets consecutive turns
    packed into one chunk while they fit; otherwise each chunk holds one speaker's words.
    """
    chunks: list[list[tuple[int, str]]] = []
    for speaker, text in turns:
        for piece in split_text(text, limit):
            last = chunks[-1] if chunks else None
            if last is not None and (multi_speaker or last[-1][0] == speaker):
                size = sum(len(t) for _, t in last)
                if last[-1][0] == speaker and size + 1 + len(piece) <= limit:
                    last[-1] = (speaker, f"{last[-1][1]} {piece}")
                    continue
                if multi_speaker and last[-1][0] != speaker and size + len(piece) <= limit:
                    last.append((speaker, piece))
                    continue
            chunks.append([(speaker, piece)])
    return chunks
