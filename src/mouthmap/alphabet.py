"""The one CTC alphabet every model, decoder and dataset uses.

Index 0 is the CTC blank, index 1 the space, then ``a``-``z``. GRID needs no
apostrophe, so it is not part of the alphabet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

BLANK = "<blank>"
SPACE = " "
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYMBOLS: tuple[str, ...] = (BLANK, SPACE, *LETTERS)
BLANK_INDEX = 0
NUM_CLASSES = len(SYMBOLS)
_INDEX = {s: i for i, s in enumerate(SYMBOLS)}


class AlphabetError(ValueError):
    """A text holds a character the alphabet cannot spell."""


def encode(text: str) -> list[int]:
    """Text -> label indices (no blanks). Raises on characters outside the alphabet."""
    out: list[int] = []
    for ch in text.lower():
        idx = _INDEX.get(ch)
        if idx is None or idx == BLANK_INDEX:
            raise AlphabetError(f"character {ch!r} in {text!r} is not in the MouthMap alphabet")
        out.append(idx)
    return out


def decode(indices: Iterable[int]) -> str:
    """Label indices -> text; blanks are dropped (no CTC collapsing here)."""
    return "".join(SYMBOLS[i] for i in indices if i != BLANK_INDEX)


def ctc_collapse(indices: Sequence[int]) -> list[int]:
    """Greedy CTC rule: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in indices:
        if i != prev and i != BLANK_INDEX:
            out.append(int(i))
        prev = i
    return out


def as_dict() -> dict[str, object]:
    """The alphabet as stored in a model package's ``mouthmap.json``."""
    return {"symbols": list(SYMBOLS), "blank_index": BLANK_INDEX}
