"""Model-like CTC outputs made from a transcript, for decoder tests and benchmarks.

Decoder speed depends on how peaked the outputs are (pyctcdecode expands every symbol
above ``token_min_logp`` in every beam), and the value of an LM depends on the kind
of mistakes the model makes. A trained CTC lip-reading model is mostly blank, spikes
one or two frames per character, and confuses characters that look alike on the lips
(visemes: b/p/m, f/v, t/d/n/s/z...). These matrices imitate that, so the decoders
can be measured before a model exists and the numbers stay comparable after.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mouthmap import alphabet

# Characters that share a mouth shape, the lip reader's typical substitutions.
VISEMES: tuple[str, ...] = ("bpm", "fv", "tdnszl", "kgch", "aei", "ouw", "rwq", "jy", "x")
_CONFUSABLE = {c: [o for o in group if o != c] for group in VISEMES for c in group}


@dataclass(frozen=True)
class SynthConfig:
    """How a synthetic output looks; the defaults resemble a trained model on GRID."""

    frames: int = 75  # 3 s at 25 fps
    margin: tuple[float, float] = (5.0, 10.0)  # logit lead of a frame's true symbol
    noise: float = 1.0  # std of the logit noise on every symbol
    confusion_rate: float = 0.06  # share of characters shown as a look-alike
    runner_up_gap: float = 1.0  # how far behind the look-alike the true character stays
    lead_in: tuple[int, int] = (8, 20)  # silent frames before speech starts
    lead_out: tuple[int, int] = (4, 12)  # silent frames after it ends


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def synthetic_log_probs(
    text: str, rng: np.random.Generator, config: SynthConfig = SynthConfig()
) -> np.ndarray:
    """A ``(frames, NUM_CLASSES)`` log-prob matrix whose greedy reading is ``text``
    except for the look-alike confusions drawn from ``rng``.

    Characters are spread evenly over the speaking span, one or two frames each, with
    blanks between (always between a repeated character, as CTC requires).
    """
    labels = alphabet.encode(text)
    t = config.frames
    start = int(rng.integers(*config.lead_in))
    end = t - int(rng.integers(*config.lead_out))
    if end - 1 - start < 2 * len(labels):  # too long for the drawn silences: shorten them
        start, end = 0, t
    if t - 1 < 2 * len(labels):
        raise ValueError(f"{text!r} needs at least {2 * len(labels) + 1} frames, have {t}")
    target = np.full(t, alphabet.BLANK_INDEX)
    slots = np.linspace(start, end - 1, num=len(labels), endpoint=False).astype(int)
    for i, (pos, lab) in enumerate(zip(slots, labels, strict=True)):
        target[pos] = lab
        nxt = slots[i + 1] if i + 1 < len(slots) else end
        if nxt - pos > 2 and rng.random() < 0.5:
            target[pos + 1] = lab  # a two-frame spike

    logits = rng.normal(0.0, config.noise, size=(t, alphabet.NUM_CLASSES))
    lead = rng.uniform(*config.margin, size=t)
    logits[np.arange(t), target] += lead
    for pos, lab in zip(slots, labels, strict=True):
        char = alphabet.SYMBOLS[lab]
        if _CONFUSABLE.get(char) and rng.random() < config.confusion_rate:
            wrong = alphabet.encode(str(rng.choice(_CONFUSABLE[char])))[0]
            span = [p for p in (pos, pos + 1) if p < t and target[p] == lab]
            for p in span:
                logits[p, wrong] = logits[p, lab]
                logits[p, lab] -= config.runner_up_gap
    return _log_softmax(logits)
