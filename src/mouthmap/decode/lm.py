"""Word n-gram language model, estimated here and written as an ARPA file for KenLM.

The ``kenlm`` wheel loads ARPA files but ships no ``lmplz``, so the project estimates
the model itself: interpolated modified Kneser-Ney (Chen & Goodman), the smoothing
``lmplz`` uses, with sentence boundaries ``<s>``/``</s>`` and an ``<unk>`` entry.
GRID's grammar is fixed (command colour preposition letter digit adverb), so a
trigram over the training transcripts already captures it; higher orders mostly
memorise training sentences, which the sentence-disjoint test split never repeats.

Interpolated KN has a property that makes the ARPA step exact: a listed n-gram's
probability is the interpolated one, and an unlisted word's probability is
``gamma(context) * p(word | shorter context)``, so the ARPA backoff weight of a
context is its interpolation weight ``gamma``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
ARPA_NAME = "lm.arpa"
UNIGRAMS_NAME = "unigrams.txt"
# lmplz's --discount_fallback values, used when count-of-counts cannot give discounts
# (tiny or very regular corpora such as GRID have no singletons at some orders).
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
LOG10_ZERO = -99.0  # how ARPA writes "never predicted" (the <s> unigram)

NGram = tuple[str, ...]


class LMError(ValueError):
    """Language model files are missing or cannot be built."""


@dataclass(frozen=True)
class LMFiles:
    """The two files pyctcdecode needs: the ARPA model and its word list (one per line)."""

    arpa: Path
    unigrams: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> LMFiles:
        """The standard layout of a model package's ``lm/`` directory."""
        directory = Path(directory)
        return cls(arpa=directory / ARPA_NAME, unigrams=directory / UNIGRAMS_NAME)

    def check(self) -> LMFiles:
        """Raise :class:`FileNotFoundError` naming the first missing file."""
        for path in (self.arpa, self.unigrams):
            if not Path(path).is_file():
                raise FileNotFoundError(f"language model file not found: {path}")
        return self

    @property
    def grammar(self) -> Path:
        """The optional slot grammar beside the ARPA file (:mod:`mouthmap.decode.grammar`)."""
        from mouthmap.decode.grammar import GRAMMAR_NAME

        return Path(self.arpa).parent / GRAMMAR_NAME

    def words(self) -> list[str]:
        return [w for w in Path(self.unigrams).read_text().split() if w]


@dataclass(frozen=True)
class Entry:
    """One ARPA line: log10 probability and log10 backoff (``None`` when it is no context)."""

    logp: float
    backoff: float | None = None


def sentences(transcripts: Iterable[str]) -> list[list[str]]:
    """Lower-cased word lists wrapped in ``<s> ... </s>``; blank transcripts are skipped."""
    out = []
    for text in transcripts:
        words = text.lower().split()
        if words:
            out.append([BOS, *words, EOS])
    return out


def raw_counts(sents: list[list[str]], order: int) -> list[Counter[NGram]]:
    """``counts[n-1][ngram]``: how often each n-gram (n = 1..order) occurs."""
    counts: list[Counter[NGram]] = [Counter() for _ in range(order)]
    for sent in sents:
        for n in range(1, order + 1):
            for i in range(len(sent) - n + 1):
                counts[n - 1][tuple(sent[i : i + n])] += 1
    return counts


def adjusted_counts(raw: list[Counter[NGram]]) -> list[Counter[NGram]]:
    """Kneser-Ney counts: below the top order, how many distinct words precede an n-gram.

    N-grams starting with ``<s>`` keep their raw count since nothing can precede them.
    """
    order = len(raw)
    adjusted: list[Counter[NGram]] = [Counter() for _ in range(order)]
    adjusted[-1] = Counter(raw[-1])
    for n in range(order - 1, 0, -1):  # n-gram length n, built from the (n+1)-grams
        continuation: Counter[NGram] = Counter(g[1:] for g in raw[n])
        for g, c in raw[n - 1].items():
            adjusted[n - 1][g] = c if g[0] == BOS else continuation[g]
    adjusted[0].pop((BOS,), None)  # <s> is a context only, never predicted
    return adjusted


def discounts(counts: Counter[NGram]) -> tuple[float, float, float]:
    """Modified KN discounts D1, D2, D3+ from count-of-counts, with lmplz's fallback."""
    n = Counter(min(c, 4) for c in counts.values())
    try:
        y = n[1] / (n[1] + 2 * n[2])
        d = (1 - 2 * y * n[2] / n[1], 2 - 3 * y * n[3] / n[2], 3 - 4 * y * n[4] / n[3])
    except ZeroDivisionError:
        return FALLBACK_DISCOUNTS
    if not all(0 < dk < k for k, dk in enumerate(d, 1)):
        return FALLBACK_DISCOUNTS
    return d


def kneser_ney(
    transcripts: Iterable[str], order: int = 3, vocabulary: Iterable[str] = ()
) -> list[dict[NGram, Entry]]:
    """Estimate an interpolated modified-KN model: ``model[n-1][ngram] -> Entry``.

    ``vocabulary`` adds words that may be unseen in training (e.g. the whole GRID
    grammar); they share the uniform floor with ``<unk>`` instead of being unknown.
    """
    if order < 2:
        raise LMError(f"order must be at least 2 (KenLM loads bigram models and up), got {order}")
    sents = sentences(transcripts)
    if not sents:
        raise LMError("no non-empty transcripts to build a language model from")
    adjusted = adjusted_counts(raw_counts(sents, order))

    vocab = {g[0] for g in adjusted[0]} | {w.lower() for w in vocabulary} | {EOS, UNK}
    vocab.discard(BOS)
    probs: list[dict[NGram, float]] = []
    gammas: list[dict[NGram, float]] = []  # gammas[n-1][context of length n-1]
    for n in range(1, order + 1):
        counts = adjusted[n - 1]
        d = discounts(counts)
        totals: dict[NGram, float] = defaultdict(float)
        mass: dict[NGram, float] = defaultdict(float)
        for g, c in counts.items():
            totals[g[:-1]] += c
            mass[g[:-1]] += d[min(c, 3) - 1]
        gamma = {h: mass[h] / totals[h] for h in totals}
        p: dict[NGram, float] = {}
        for g, c in counts.items():
            h = g[:-1]
            lower = 1.0 / len(vocab) if n == 1 else _backoff_prob(g[1:], probs, gammas)
            p[g] = (c - d[min(c, 3) - 1]) / totals[h] + gamma[h] * lower
        if n == 1:
            floor = gamma.get((), 1.0) / len(vocab)
            for w in vocab:
                p.setdefault((w,), floor)
        probs.append(p)
        gammas.append(gamma)

    model: list[dict[NGram, Entry]] = []
    for n in range(1, order + 1):
        contexts = gammas[n] if n < order else {}
        level = {
            g: Entry(math.log10(pr), _log10(contexts[g]) if g in contexts else None)
            for g, pr in probs[n - 1].items()
        }
        model.append(level)
    bos_backoff = gammas[1].get((BOS,)) if order > 1 else None
    model[0][(BOS,)] = Entry(LOG10_ZERO, None if bos_backoff is None else _log10(bos_backoff))
    return model


def _backoff_prob(
    g: NGram, probs: list[dict[NGram, float]], gammas: list[dict[NGram, float]]
) -> float:
    """p(g[-1] | g[:-1]) from lower orders already estimated, backing off where unlisted."""
    n = len(g)
    if g in probs[n - 1]:
        return probs[n - 1][g]
    if n == 1:
        return probs[0][(UNK,)]
    return gammas[n - 1].get(g[:-1], 1.0) * _backoff_prob(g[1:], probs, gammas)


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else LOG10_ZERO


def arpa_text(model: list[dict[NGram, Entry]]) -> str:
    """The model in ARPA format (``\\data\\`` header, log10 probabilities and backoffs)."""
    lines = ["", "\\data\\"]
    lines += [f"ngram {n}={len(level)}" for n, level in enumerate(model, 1)]
    for n, level in enumerate(model, 1):
        lines += ["", f"\\{n}-grams:"]
        for g in sorted(level):
            e = level[g]
            line = f"{e.logp:.7f}\t{' '.join(g)}"
            if e.backoff is not None:
                line += f"\t{e.backoff:.7f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def build_lm(
    transcripts: list[str],
    out_dir: str | Path,
    order: int = 3,
    vocabulary: Iterable[str] = (),
) -> LMFiles:
    """Estimate a word LM from ``transcripts`` and write ``lm.arpa`` + ``unigrams.txt``, and
    ``grammar.json`` (the word set of each position) when all have the same word count.

    ``unigrams.txt`` lists the real words (no ``<s>``, ``</s>``, ``<unk>``), the list
    pyctcdecode uses to tell in-vocabulary words and word prefixes from unknown ones.
    """
    from mouthmap.decode.grammar import SlotGrammar

    model = kneser_ney(transcripts, order=order, vocabulary=vocabulary)
    files = LMFiles.in_dir(out_dir)
    files.arpa.parent.mkdir(parents=True, exist_ok=True)
    files.arpa.write_text(arpa_text(model))
    words = sorted(g[0] for g in model[0] if g[0] not in (BOS, EOS, UNK))
    files.unigrams.write_text("".join(w + "\n" for w in words))
    grammar = SlotGrammar.from_transcripts(transcripts)
    if grammar is not None:
        grammar.save(files.grammar)
    else:
        files.grammar.unlink(missing_ok=True)  # a stale one from other transcripts would lie
    return files
