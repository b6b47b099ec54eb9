"""Greedy (best-path) CTC decoding: argmax per frame, merge repeats, drop blanks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mouthmap import alphabet
from mouthmap.decode.arrays import clips, frames


def greedy_decode(log_probs: Any, length: int | None = None) -> str:
    """Best-path transcript of one clip's ``(T, C)`` log-probs (array or tensor).

    Whitespace is normalised (no leading, trailing or doubled spaces) so the text can be
    compared with references directly.
    """
    arr = frames(log_probs, length)
    if arr.shape[1] != alphabet.NUM_CLASSES:
        raise ValueError(
            f"log-probs have {arr.shape[1]} classes, the alphabet has {alphabet.NUM_CLASSES}"
        )
    if arr.shape[0] == 0:
        return ""
    text = alphabet.decode(alphabet.ctc_collapse(arr.argmax(axis=1).tolist()))
    return " ".join(text.split())


def greedy_decode_batch(log_probs: Any, lengths: Sequence[int] | None = None) -> list[str]:
    """Greedy transcripts of a ``(B, T, C)`` batch; ``lengths`` drops each clip's padding."""
    return [greedy_decode(clip) for clip in clips(log_probs, lengths)]
