"""Word-slot decoding: the best grammatical sentence from per-frame word posteriors.

The per-frame word alignment aid (``train.align_weight``) trains a head that labels every
output frame as silence or one of the grammar's words. Read at test time, it is a frame
classifier over words, and GRID's fixed grammar turns it into a decoder: the Viterbi path
through ``silence* word_1+ silence* word_2+ ... word_n+ silence*`` where word ``i`` comes from
slot ``i``'s set. Every frame of a word votes for it, where CTC puts a one-letter word such as
``b`` on a single spike that the beam search may drop or misread. The score of a path is
the sum of its frames' log-posteriors (no priors are divided out: the grammar already fixes
how many words there are).

:func:`slot_viterbi` finds the best sentence; :func:`forced_scores` scores given sentences
(the best path that spells each), which is how the CTC grammar rescoring
(:func:`mouthmap.decode.grammar.rescore`) adds the word head's view to its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SILENCE_CLASS = 0  # class 0 of the alignment target is silence (mouthmap.data.corpus)


def _check(word_log_probs: np.ndarray) -> np.ndarray:
    lp = np.asarray(word_log_probs, dtype=np.float64)
    if lp.ndim != 2:
        raise ValueError(f"word log-probs must be (frames, classes), got shape {lp.shape}")
    return lp


def slot_viterbi(
    word_log_probs: np.ndarray,
    slot_classes: Sequence[Sequence[int]],
    silence: int = SILENCE_CLASS,
) -> tuple[list[int], float]:
    """(the class of each slot's word, the path's log score) of the best sentence.

    ``word_log_probs``: one clip's ``(T, K)`` per-frame log-posteriors over K classes;
    ``slot_classes``: the classes each slot may hold, in sentence order. Every word takes at
    least one frame and silence may fill any gap, so a clip shorter than its slots has no
    path: ``([], -inf)``."""
    lp = _check(word_log_probs)
    n_slots, t_max = len(slot_classes), lp.shape[0]
    if n_slots == 0 or any(len(s) == 0 for s in slot_classes):
        raise ValueError("every slot needs at least one word class")
    if t_max < n_slots:
        return [], float("-inf")
    # State layout: gap g (silence before slot g, g = 0..n) then the words of each slot.
    offsets = np.cumsum([n_slots + 1, *[len(s) for s in slot_classes]])
    n_states = int(offsets[-1])
    state_class = np.array(
        [silence] * (n_slots + 1) + [c for s in slot_classes for c in s], dtype=np.int64
    )
    word_slot = np.concatenate([np.full(len(s), i) for i, s in enumerate(slot_classes)])
    prev_slot, has_prev = np.maximum(word_slot - 1, 0), word_slot > 0
    # each slot's word states as a row, padded with a state that stays -inf (index n_states)
    width = max(len(s) for s in slot_classes)
    rows = np.full((n_slots, width), n_states, dtype=np.int64)
    for i in range(n_slots):
        rows[i, : offsets[i + 1] - offsets[i]] = np.arange(offsets[i], offsets[i + 1])
    gaps, words = np.arange(n_slots + 1), slice(offsets[0], n_states)
    word_states = np.arange(offsets[0], n_states)
    neg = -np.inf
    score = np.full(n_states + 1, neg)
    score[0] = lp[0, silence]
    score[offsets[0] : offsets[1]] = lp[0, list(slot_classes[0])]
    back = np.zeros((t_max, n_states), dtype=np.int64)
    for t in range(1, t_max):
        # best way into each slot: from its gap, or straight from any word of the slot before
        by_slot = score[rows]
        arg = by_slot.argmax(axis=1)
        slot_best, slot_arg = by_slot[np.arange(n_slots), arg], rows[np.arange(n_slots), arg]
        new = np.full(n_states + 1, neg)
        # gaps: stay, or leave the slot before (gap 0 can only stay)
        stay = score[: n_slots + 1]
        enter = np.concatenate([[neg], slot_best])
        keep = stay >= enter
        new[: n_slots + 1] = np.where(keep, stay, enter)
        back[t, : n_slots + 1] = np.where(keep, gaps, np.concatenate([[0], slot_arg]))
        # words: stay, or come from this slot's gap, or from the previous slot's best word
        stay = score[words]
        gap = score[word_slot]  # gap index == slot index
        prev = np.where(has_prev, slot_best[prev_slot], neg)
        choice = np.argmax(np.stack([stay, gap, prev]), axis=0)
        new[words] = np.choose(choice, [stay, gap, prev])
        back[t, words] = np.choose(choice, [word_states, word_slot, slot_arg[prev_slot]])
        new[:n_states] += lp[t, state_class]
        score = new
    score = score[:n_states]
    last_slot = slice(offsets[-2], offsets[-1])
    ends = [(score[n_slots], n_slots), *((score[s], s) for s in range(last_slot.start, n_states))]
    best, state = max(ends)
    if not np.isfinite(best):
        return [], float("-inf")
    words_out: list[int] = []
    for t in range(t_max - 1, -1, -1):
        if state >= offsets[0] and (not words_out or words_out[-1] != state):
            words_out.append(state)
        state = back[t, state] if t else state
    # consecutive frames of one word share a state; two slots never share one
    return [int(state_class[s]) for s in reversed(words_out)], float(best)


def forced_scores(
    word_log_probs: np.ndarray,
    sentences: Sequence[Sequence[int]],
    silence: int = SILENCE_CLASS,
) -> np.ndarray:
    """The best path's log score for each sentence (its word classes in order, all of one
    length), all at once: ``silence* w_1+ silence* ... w_n+ silence*``, the CTC topology with
    silence as the blank and max for sum. -inf where the clip is too short."""
    lp = _check(word_log_probs)
    sents = np.asarray(sentences, dtype=np.int64)
    if sents.ndim != 2 or sents.shape[1] == 0:
        raise ValueError("sentences must be a non-empty list of equal-length word-class lists")
    n, n_words = sents.shape
    ext = np.full((n, 2 * n_words + 1), silence, dtype=np.int64)
    ext[:, 1::2] = sents
    emit = lp[:, ext]  # (T, N, S)
    alpha = np.full(ext.shape, -np.inf)
    alpha[:, :2] = emit[0, :, :2]
    for t in range(1, lp.shape[0]):
        step = alpha.copy()
        np.maximum(step[:, 1:], alpha[:, :-1], out=step[:, 1:])
        np.maximum(step[:, 3::2], alpha[:, 1:-2:2], out=step[:, 3::2])  # word -> next word
        alpha = step + emit[t]
    return np.maximum(alpha[:, -1], alpha[:, -2])


class WordSlots:
    """The slot grammar in the word head's classes: ``1 + WORDS.index(word)``, 0 silence
    (:func:`mouthmap.data.corpus.frame_labels`, which made the head's training targets)."""

    def __init__(self, slots: Sequence[Sequence[str]] | None = None) -> None:
        from mouthmap.data.corpus import SLOTS, WORDS

        self.words: tuple[str, ...] = WORDS
        self._class = {w: i + 1 for i, w in enumerate(WORDS)}
        slots = list(SLOTS.values()) if slots is None else slots
        unknown = sorted({w for s in slots for w in s} - set(self._class))
        if unknown:
            raise ValueError(f"the word head has no class for {unknown}: it knows {WORDS}")
        self.slot_classes = [[self._class[w] for w in s] for s in slots]

    @property
    def num_classes(self) -> int:
        return len(self.words) + 1

    def decode(self, word_log_probs: np.ndarray) -> str:
        """The best grammatical sentence by the word head alone ("" for too short a clip)."""
        classes, _ = slot_viterbi(self._checked(word_log_probs), self.slot_classes)
        return " ".join(self.words[c - 1] for c in classes)

    def scorer(
        self, word_log_probs: np.ndarray, weight: float
    ) -> Callable[[list[str]], np.ndarray]:
        """``texts -> weight * forced_scores`` for the grammar rescoring; a text that is not
        a sentence of this grammar's length, or has a word without a class, scores -inf."""
        lp = self._checked(word_log_probs)
        n = len(self.slot_classes)

        def score(texts: list[str]) -> np.ndarray:
            out = np.full(len(texts), -np.inf)
            rows = [(i, t.split()) for i, t in enumerate(texts)]
            ok = [(i, w) for i, w in rows if len(w) == n and all(x in self._class for x in w)]
            if ok:
                got = forced_scores(lp, [[self._class[x] for x in w] for _, w in ok])
                out[[i for i, _ in ok]] = weight * got
            return out

        return score

    def _checked(self, word_log_probs: np.ndarray) -> np.ndarray:
        lp = _check(word_log_probs)
        if lp.shape[1] != self.num_classes:
            raise ValueError(
                f"word log-probs have {lp.shape[1]} classes, the word head {self.num_classes}"
            )
        return lp
