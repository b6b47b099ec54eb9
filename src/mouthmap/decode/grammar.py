"""Rescoring a beam hypothesis within a fixed-slot sentence grammar, with the exact CTC score.

GRID's sentences are six slots (command colour preposition letter digit adverb), each
filled from a small word set. When every training transcript has the same number of
words, :class:`SlotGrammar` learns those sets from them (no list is hard-coded) and the
package's ``lm/grammar.json`` carries them. :func:`rescore` then starts from the beam
search's transcript and climbs: of all sentences that differ from it in one slot, it
takes the one with the best ``log P(sentence | video)`` (CTC, summed over every
alignment) ``+ alpha * ln P_LM(sentence)``, until no single change is better. Beam search
scores prefixes and prunes them; the letter, one short syllable, is often lost that way
while the full-sentence score still ranks it first.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap import alphabet

GRAMMAR_NAME = "grammar.json"
RESCALE_EVERY = 4
MAX_STEPS = 12  # single-slot changes per clip; a six-slot sentence needs at most six


@dataclass(frozen=True)
class SlotGrammar:
    """Word sets per position, most frequent first (the filler for a missing slot)."""

    slots: tuple[tuple[str, ...], ...]

    @classmethod
    def from_transcripts(cls, transcripts: Sequence[str]) -> SlotGrammar | None:
        """The slots of ``transcripts``, or ``None`` when their word counts differ (no grammar)."""
        sents = [t.lower().split() for t in transcripts if t.strip()]
        if not sents or len({len(s) for s in sents}) != 1:
            return None
        counts = [Counter(s[i] for s in sents) for i in range(len(sents[0]))]
        return cls(tuple(tuple(w for w, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
                         for c in counts))  # fmt: skip

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"slots": [list(s) for s in self.slots]}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SlotGrammar:
        try:
            slots = json.loads(Path(path).read_text())["slots"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read the slot grammar {path}: {err}") from err
        if not slots or not all(isinstance(s, list) and s for s in slots):
            raise ValueError(f"{path}: a slot grammar needs at least one non-empty slot")
        return cls(tuple(tuple(str(w) for w in s) for s in slots))

    def start(self, hypothesis: str) -> list[str]:
        """A grammatical sentence close to ``hypothesis``: its words kept in order where they
        fit a later slot, the most frequent word where it has none."""
        out = [s[0] for s in self.slots]
        slot = 0
        for word in hypothesis.split():
            for i in range(slot, len(self.slots)):
                if word in self.slots[i]:
                    out[i], slot = word, i + 1
                    break
        return out


def ctc_log_likelihood(log_probs: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """``ln P(text | log_probs)`` for each text: the CTC forward algorithm, all texts at once.

    ``log_probs`` is one clip's ``(T, C)``; a text that cannot fit in T frames gets -inf.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    t_max = lp.shape[0]
    labels = [alphabet.encode(t) for t in texts]
    s_max = 2 * max(len(x) for x in labels) + 1
    ext = np.full((len(texts), s_max), alphabet.BLANK_INDEX, dtype=np.int64)
    for n, x in enumerate(labels):
        ext[n, 1 : 2 * len(x) : 2] = x
    # a label may follow the one two states back unless they are equal (a blank between)
    skip = np.zeros_like(ext, dtype=bool)
    skip[:, 2:] = (ext[:, 2:] != alphabet.BLANK_INDEX) & (ext[:, 2:] != ext[:, :-2])
    # probabilities, rescaled every few frames (the log of the scale summed): the same sums
    # as the log domain without an exp/log per state, which made it 5x slower. Log-probs are
    # above -100 per frame, so RESCALE_EVERY frames cannot underflow float64.
    emit = np.exp(np.maximum(lp, -100.0))[:, ext]  # (T, N, S)
    skipf = skip[:, 2:].astype(np.float64)
    alpha = np.zeros(ext.shape)
    alpha[:, 0] = emit[0, :, 0]
    if s_max > 1:
        alpha[:, 1] = emit[0, :, 1]
    scale = np.zeros(len(texts))
    for t in range(t_max):
        if t:
            step = alpha.copy()
            step[:, 1:] += alpha[:, :-1]
            step[:, 2:] += alpha[:, :-2] * skipf
            alpha = np.multiply(step, emit[t], out=step)
        if t % RESCALE_EVERY == 0 or t == t_max - 1:
            norm = alpha.sum(axis=1)
            alive = norm > 0
            alpha[alive] /= norm[alive, None]
            with np.errstate(divide="ignore"):
                scale += np.log(norm)
    ends = np.array([2 * len(x) for x in labels])
    rows = np.arange(len(texts))
    tail = alpha[rows, ends] + np.where(ends > 0, alpha[rows, np.maximum(ends - 1, 0)], 0.0)
    with np.errstate(divide="ignore"):
        return scale + np.log(tail)


def rescore(
    log_probs: np.ndarray,
    hypothesis: str,
    grammar: SlotGrammar,
    lm: Any = None,
    alpha: float = 0.5,
    extra: Callable[[list[str]], np.ndarray] | None = None,
) -> str:
    """The best grammatical sentence reachable from ``hypothesis`` by single-slot changes.

    ``lm``: a ``kenlm.Model`` (or anything with ``score(sentence, bos=, eos=)`` in log10),
    weighted by ``alpha`` in natural-log units as in the beam search; ``None``: CTC only.
    ``extra``: more evidence, natural-log scores of whole sentences added to theirs (the word
    head's, :meth:`mouthmap.decode.slots.WordSlots.scorer`).
    """
    if np.asarray(log_probs).shape[0] == 0:
        return hypothesis
    known: dict[str, float] = {}

    def lm_score(text: str) -> float:
        if lm is None or alpha == 0:
            return 0.0
        return alpha * lm.score(text, bos=True, eos=True) * math.log(10)

    def scores(texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in known]
        if new:
            got = ctc_log_likelihood(log_probs, new) + np.array([lm_score(t) for t in new])
            got = got + extra(new) if extra is not None else got
            known.update(zip(new, got.tolist(), strict=True))
        return np.array([known[t] for t in texts])

    words = grammar.start(hypothesis)
    current = " ".join(words)
    best = float(scores([current])[0])
    for _ in range(MAX_STEPS):
        cands = [
            " ".join([*words[:i], w, *words[i + 1 :]])
            for i, slot in enumerate(grammar.slots)
            for w in slot
            if w != words[i]
        ]
        if not cands:
            break
        got = scores(cands)
        k = int(np.argmax(got))
        if not got[k] > best:
            break
        best, current = float(got[k]), cands[k]
        words = current.split()
    return current if math.isfinite(best) else hypothesis
