"""The per-frame character probability timeline: what the model hears, frame by frame."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mouthmap import alphabet
from mouthmap.explain.alignment import WordSpan

__all__ = ["probability_table", "timeline_figure"]

LABELS = ["·", "␣", *alphabet.LETTERS]  # blank, space, letters: one character each for plots


def probability_table(log_probs: np.ndarray, fps: float = 25.0, top: int = 3) -> list[dict]:
    """One row per frame: time, the blank's probability and the ``top`` likeliest symbols."""
    probs = np.exp(np.asarray(log_probs, dtype=np.float64))
    rows = []
    for t, p in enumerate(probs):
        order = np.argsort(-p)[:top]
        row = {"frame": t, "time_s": round(t / fps, 3), "blank": round(float(p[0]), 3)}
        for k, i in enumerate(order, 1):
            row[f"top{k}"] = LABELS[i]
            row[f"p{k}"] = round(float(p[i]), 3)
        rows.append(row)
    return rows


def timeline_figure(
    log_probs: np.ndarray,
    spans: Sequence[WordSpan] = (),
    fps: float = 25.0,
    highlight: int | None = None,
    frame_weight: np.ndarray | None = None,
):
    """A matplotlib figure: a heat map of P(symbol | frame) for every symbol (rows) over
    time, the argmax symbol of each frame written above it, the words' frame spans as
    bands (``highlight``: the chosen word's in colour) and, when given, the saliency mass
    per frame of that word as a curve below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = np.exp(np.asarray(log_probs, dtype=np.float64)).T  # (C, T)
    c, t = probs.shape
    rows = 3 if frame_weight is not None else 2
    ratios = [1, 6, 1.4][:rows]
    fig, axes = plt.subplots(
        rows, 1, figsize=(12, 2.2 + 0.9 * rows), sharex=True, gridspec_kw={"height_ratios": ratios}
    )
    ax_words, ax = axes[0], axes[1]
    x0, x1 = -0.5 / fps, (t - 0.5) / fps
    ax.imshow(
        probs,
        aspect="auto",
        origin="upper",
        cmap="magma",
        vmin=0,
        vmax=1,
        extent=(x0, x1, c - 0.5, -0.5),
        interpolation="nearest",
    )
    ax.set_yticks(range(c), LABELS, fontsize=7)
    ax.set_ylabel("symbol (· blank, ␣ space)")
    best = probs.argmax(0)
    for i, k in enumerate(best):
        if k != alphabet.BLANK_INDEX:
            ax.text(i / fps, k, LABELS[k], ha="center", va="center", fontsize=6, color="cyan")
    ax_words.set_yticks([])
    ax_words.set_ylim(0, 1)
    for s in spans:
        chosen = highlight is not None and s.index == highlight
        ax_words.axvspan(
            (s.start - 0.5) / fps,
            (s.end - 0.5) / fps,
            0.1,
            0.9,
            color="C1" if chosen else "0.85",
            ec="0.4",
            lw=0.5,
        )
        ax_words.text(
            (s.start + s.end - 1) / 2 / fps,
            0.5,
            s.word,
            ha="center",
            va="center",
            fontsize=9,
            weight="bold" if chosen else "normal",
        )
    ax_words.set_title(
        "P(symbol | frame); the words' frames from the transcript's best CTC path", fontsize=10
    )
    if frame_weight is not None:
        ax_w = axes[2]
        ax_w.fill_between(np.arange(t) / fps, frame_weight, color="C3", alpha=0.6, step="mid")
        ax_w.set_ylabel("saliency", fontsize=8)
        ax_w.set_ylim(bottom=0)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(x0, x1)
    fig.tight_layout()
    return fig
