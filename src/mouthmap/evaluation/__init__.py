"""Scoring transcripts: corpus WER/CER, GRID per-slot error rates, report tables."""

from mouthmap.evaluation.metrics import (
    cer,
    evaluate,
    evaluation_table,
    normalise,
    slot_error_rates,
    wer,
    word_confusions,
)

__all__ = [
    "cer",
    "evaluate",
    "evaluation_table",
    "normalise",
    "slot_error_rates",
    "wer",
    "word_confusions",
]
