"""Which frames say which word: the best CTC path (Viterbi) of a transcript through the
per-frame log-probabilities, and each word's frame span from it.

The transcript shown may come from beam search + LM, so the greedy path's frames are not
its frames; forced alignment of that very text is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mouthmap import alphabet

__all__ = ["AlignmentError", "WordSpan", "ctc_align", "word_spans"]


class AlignmentError(ValueError):
    """A text cannot be aligned to the frames (too short a clip, letters outside the alphabet)."""


@dataclass(frozen=True)
class WordSpan:
    word: str
    index: int  # position of the word in the transcript
    start: int  # first frame
    end: int  # one past the last frame

    @property
    def frames(self) -> int:
        return self.end - self.start


def _min_frames(labels: list[int]) -> int:
    """A CTC path needs one frame per label plus a blank between equal neighbours."""
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:], strict=False))


def ctc_align(log_probs: np.ndarray, labels: list[int]) -> np.ndarray:
    """Best CTC path of ``labels`` through ``(T, C)`` log-probs -> ``(T,)`` state per frame.

    States index the extended sequence ``[blank, l1, blank, l2, ..., blank]``: even states
    are blanks, state ``2k + 1`` is label ``k``.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    t_len = lp.shape[0]
    if not labels:
        return np.zeros(t_len, dtype=np.int64)
    if _min_frames(labels) > t_len:
        raise AlignmentError(
            f"{len(labels)} characters need at least {_min_frames(labels)} frames; "
            f"the clip has {t_len}"
        )
    ext = [alphabet.BLANK_INDEX]
    for lab in labels:
        ext += [lab, alphabet.BLANK_INDEX]
    ext_arr = np.array(ext)
    s_len = len(ext)
    # a skip from s-2 to s is allowed onto a label that differs from the label two back
    skip = np.zeros(s_len, dtype=bool)
    skip[2:] = (ext_arr[2:] != alphabet.BLANK_INDEX) & (ext_arr[2:] != ext_arr[:-2])
    neg = -np.inf
    score = np.full(s_len, neg)
    score[0] = lp[0, ext[0]]
    score[1] = lp[0, ext[1]]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    emit = lp[:, ext_arr]
    for t in range(1, t_len):
        stay = score
        one = np.concatenate([[neg], score[:-1]])
        two = np.where(skip, np.concatenate([[neg, neg], score[:-2]]), neg)
        choices = np.stack([stay, one, two])
        back[t] = choices.argmax(0)
        score = choices.max(0) + emit[t]
    last = s_len - 1 if score[s_len - 1] >= score[s_len - 2] else s_len - 2
    if not np.isfinite(score[last]):
        raise AlignmentError("no CTC path fits the text to these frames")
    path = np.empty(t_len, dtype=np.int64)
    s = last
    for t in range(t_len - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    return path


def word_spans(log_probs: np.ndarray, text: str) -> list[WordSpan]:
    """Each word of ``text`` with the frames the best path spends on it.

    A word owns the frames of its letters and the blanks between them, plus the blanks just
    before and after it, up to the neighbouring space or word (a speaker's lips move
    before and after the letters' peak frames).
    """
    words = text.split()
    if not words:
        return []
    try:
        labels = alphabet.encode(" ".join(words))
    except alphabet.AlphabetError as e:
        raise AlignmentError(str(e)) from None
    path = ctc_align(log_probs, labels)
    # label position k (in ``labels``) -> word index, or -1 for the spaces
    owner, w = [], 0
    for lab in labels:
        if lab == alphabet.SYMBOLS.index(alphabet.SPACE):
            owner.append(-1)
            w += 1
        else:
            owner.append(w)
    # per frame: the word it belongs to (-1: space, -2: blank for now)
    frame_word = np.array([owner[(s - 1) // 2] if s % 2 else -2 for s in path])
    # blanks inside or next to a word take that word; between two words the earlier one
    # gets those before the space's frames and the later one those after them
    filled = frame_word.copy()
    for t in range(len(filled)):  # forward: blanks after a word's letter join it
        if filled[t] == -2 and t > 0 and filled[t - 1] >= 0:
            filled[t] = filled[t - 1]
    for t in range(len(filled) - 2, -1, -1):  # backward: blanks before a word's letter
        if filled[t] == -2 and filled[t + 1] >= 0:
            filled[t] = filled[t + 1]
    spans = []
    for i, word in enumerate(words):
        idx = np.flatnonzero(filled == i)
        spans.append(WordSpan(word, i, int(idx[0]), int(idx[-1]) + 1))
    return spans
