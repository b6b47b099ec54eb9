"""GRID corpus: alignments, transcripts, the sentence grammar, and clip discovery."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FRAME_UNITS = 1000  # .align times are in 1/25000 s: 1000 units = one 40 ms video frame
SILENCE = frozenset({"sil", "sp"})
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mpeg", ".mov", ".avi")

SLOTS: dict[str, tuple[str, ...]] = {
    "command": ("bin", "lay", "place", "set"),
    "colour": ("blue", "green", "red", "white"),
    "preposition": ("at", "by", "in", "with"),
    "letter": tuple("abcdefghijklmnopqrstuvxyz"),  # GRID has no "w"
    "digit": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "adverb": ("again", "now", "please", "soon"),
}
SLOT_NAMES: tuple[str, ...] = tuple(SLOTS)
# word classes of the per-frame alignment target (train.align_weight): 0 is silence
WORDS: tuple[str, ...] = tuple(sorted({w for words in SLOTS.values() for w in words}))
IGNORE_LABEL = -100  # frames with no usable label (a word outside the grammar, padding)
GRAMMAR_REGEX = "^" + " ".join("(" + "|".join(words) + ")" for words in SLOTS.values()) + "$"
_GRAMMAR = re.compile(GRAMMAR_REGEX)


class AlignError(ValueError):
    """An .align file is missing, empty or malformed."""


@dataclass(frozen=True)
class Word:
    start: int  # in 1/25000 s
    end: int
    word: str

    @property
    def start_frame(self) -> int:
        return self.start // FRAME_UNITS

    @property
    def end_frame(self) -> int:
        return -(-self.end // FRAME_UNITS)


def parse_align(text: str, source: str = "<align>") -> list[Word]:
    """Parse an .align file (``start end word`` per line, CRLF or LF) into spoken words.

    Silence markers (``sil``, ``sp``) are dropped. Raises :class:`AlignError` naming
    ``source`` and the line on anything malformed.
    """
    words: list[Word] = []
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise AlignError(f"{source}: empty alignment")
    prev_end = -1
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 3:
            raise AlignError(f"{source}:{n}: expected 'start end word', got {line!r}")
        try:
            start, end = int(parts[0]), int(parts[1])
        except ValueError:
            raise AlignError(f"{source}:{n}: times are not integers in {line!r}") from None
        if start < 0 or end < start:
            raise AlignError(f"{source}:{n}: bad interval {start}..{end}")
        if start < prev_end:
            raise AlignError(f"{source}:{n}: interval overlaps the previous one")
        prev_end = end
        word = parts[2].lower()
        if word not in SILENCE:
            words.append(Word(start, end, word))
    if not words:
        raise AlignError(f"{source}: no spoken words, only silence")
    return words


def read_align(path: str | Path) -> list[Word]:
    p = Path(path)
    if not p.is_file():
        raise AlignError(f"{p}: alignment file not found")
    try:
        text = p.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise AlignError(f"{p}: not a text alignment file") from None
    return parse_align(text, str(p))


def frame_labels(words: list[Word], frames: int) -> list[int]:
    """The word spoken at each of ``frames`` video frames, as a class: 0 for silence,
    ``1 + WORDS.index(word)`` for a GRID word, ``IGNORE_LABEL`` for any other word."""
    index = {w: i + 1 for i, w in enumerate(WORDS)}
    labels = [0] * frames
    for w in words:  # a frame belongs to the word spoken at its centre
        label = index.get(w.word, IGNORE_LABEL)
        first = max(0, -(-(w.start - FRAME_UNITS // 2) // FRAME_UNITS))
        for t in range(first, frames):
            if t * FRAME_UNITS + FRAME_UNITS // 2 >= w.end:
                break
            labels[t] = label
    return labels


def transcript(words: list[Word]) -> str:
    return " ".join(w.word for w in words)


def in_grammar(text: str) -> bool:
    """True when ``text`` is a six-word GRID sentence."""
    return bool(_GRAMMAR.match(text))


def slot_words(text: str) -> dict[str, str]:
    """Split a GRID sentence into its six slots (command, colour, ...)."""
    words = text.split()
    if len(words) != len(SLOT_NAMES):
        raise ValueError(f"{text!r} is not a six-word GRID sentence")
    return dict(zip(SLOT_NAMES, words, strict=True))


@dataclass(frozen=True)
class Clip:
    """One utterance on disk: ``id`` is unique within the corpus (speaker + GRID code)."""

    id: str
    speaker: str
    video: Path
    align: Path | None


def discover(root: str | Path) -> list[Clip]:
    """Find clips under ``root`` laid out as ``<speaker>/video/<code>.<ext>`` and
    ``<speaker>/align/<code>.align``. Clips missing their alignment are kept with
    ``align=None`` so validation can report them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus directory {root} does not exist")
    clips: list[Clip] = []
    for vdir in sorted(p for p in root.glob("*/video") if p.is_dir()):
        speaker = vdir.parent.name
        adir = vdir.parent / "align"
        for video in sorted(vdir.iterdir()):
            if video.suffix.lower() not in VIDEO_SUFFIXES:
                continue
            align = adir / f"{video.stem}.align"
            clips.append(
                Clip(
                    id=f"{speaker}_{video.stem}",
                    speaker=speaker,
                    video=video,
                    align=align if align.is_file() else None,
                )
            )
    return clips
