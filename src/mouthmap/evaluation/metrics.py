"""Error rates for lip-reading transcripts: WER, CER and GRID's per-slot error rates.

WER and CER are corpus-level (total edits over total reference words/characters, as
jiwer computes them), not averages of per-sentence rates, so long and short sentences
weigh by their length. Per-slot rates say *which* word a model gets wrong: on GRID the
letter and digit slots are the hard, informative ones, the others are nearly free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import jiwer

from mouthmap.data.corpus import SLOT_NAMES


def normalise(text: str) -> str:
    """Lower case, single spaces, no padding: decoders and references disagree on these,
    and such differences are not recognition errors."""
    return " ".join(text.lower().split())


def _pairs(refs: Sequence[str], hyps: Sequence[str]) -> tuple[list[str], list[str]]:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("no transcripts to score")
    return [normalise(r) for r in refs], [normalise(h) for h in hyps]


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Word error rate over the whole corpus: (S + D + I) / reference words."""
    r, h = _pairs(refs, hyps)
    return float(jiwer.wer(r, h))


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate over the whole corpus; spaces count as characters."""
    r, h = _pairs(refs, hyps)
    return float(jiwer.cer(r, h))


def slot_error_rates(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """Share of sentences whose word in each GRID slot is wrong (substituted or deleted).

    Each hypothesis is aligned to its reference by word edit distance, so a missing or
    an extra word shifts nothing: ``"bin blue f two now"`` loses only the preposition.
    Inserted words are not charged to any slot (WER counts them).
    """
    r, h = _pairs(refs, hyps)
    for ref in r:
        if len(ref.split()) != len(SLOT_NAMES):
            raise ValueError(f"reference {ref!r} is not a six-word GRID sentence")
    errors = dict.fromkeys(SLOT_NAMES, 0)
    for chunks in jiwer.process_words(r, h).alignments:
        for chunk in chunks:
            if chunk.type in ("substitute", "delete"):
                for pos in range(chunk.ref_start_idx, chunk.ref_end_idx):
                    errors[SLOT_NAMES[pos]] += 1
    return {slot: errors[slot] / len(r) for slot in SLOT_NAMES}


def word_confusions(
    refs: Sequence[str], hyps: Sequence[str], top: int | None = 10
) -> list[tuple[str, str, str, int]]:
    """The most frequent slot errors as ``(slot, reference word, hypothesis word, count)``,
    most frequent first (ties alphabetical); a deleted word has ``""`` as its hypothesis.

    Aligned like :func:`slot_error_rates`, so with ``top=None`` the counts per slot add up to
    its errors: they say *which* words a model mixes up (on GRID mostly words that look alike
    on the lips: at/in, p/b)."""
    from collections import Counter

    r, h = _pairs(refs, hyps)
    counts: Counter[tuple[str, str, str]] = Counter()
    out = jiwer.process_words(r, h)
    for ref, hyp, chunks in zip(out.references, out.hypotheses, out.alignments, strict=True):
        if len(ref) != len(SLOT_NAMES):
            raise ValueError(f"reference {' '.join(ref)!r} is not a six-word GRID sentence")
        for chunk in chunks:
            if chunk.type not in ("substitute", "delete"):
                continue
            for pos in range(chunk.ref_start_idx, chunk.ref_end_idx):
                read = ""
                if chunk.type == "substitute":  # word for word: the spans have one length
                    read = hyp[chunk.hyp_start_idx + pos - chunk.ref_start_idx]
                counts[(SLOT_NAMES[pos], ref[pos], read)] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(*key, n) for key, n in ranked[:top]]


def evaluate(refs: Sequence[str], hyps: Sequence[str]) -> dict[str, float]:
    """WER, CER and the six slot error rates in one row (see :func:`evaluation_table`)."""
    return {"wer": wer(refs, hyps), "cer": cer(refs, hyps), **slot_error_rates(refs, hyps)}


def _cell(value: object, float_format: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def evaluation_table(
    results: Mapping[str, Mapping[str, object]],
    columns: Iterable[str] | None = None,
    float_format: str = "{:.1%}",
) -> str:
    """Markdown table, one row per system (e.g. ``{"greedy": evaluate(...), ...}``).

    Columns default to every metric in first-seen order; floats are shown as
    percentages since they are error rates (pass ``float_format`` for other numbers).
    """
    cols = list(columns) if columns is not None else []
    if columns is None:
        for row in results.values():
            cols += [k for k in row if k not in cols]
    lines = [
        "| system | " + " | ".join(cols) + " |",
        "| --- |" + " ---: |" * len(cols),
    ]
    for name, row in results.items():
        cells = [_cell(row.get(c), float_format) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
