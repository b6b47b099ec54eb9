"""Error rates as reported in the evaluation table: values checked against hand counts."""

from __future__ import annotations

import pytest

from mouthmap.data.corpus import SLOT_NAMES
from mouthmap.evaluation import (
    cer,
    evaluate,
    evaluation_table,
    slot_error_rates,
    wer,
    word_confusions,
)

REF = "bin blue at f two now"


def test_wer_counts_substitutions_deletions_and_insertions_over_all_reference_words():
    refs = [REF, "set red by a one soon"]
    hyps = [REF.replace("two", "too"), "set red a one soon now"]  # 1 S; 1 D + 1 I
    assert wer(refs, hyps) == pytest.approx(3 / 12)


def test_wer_is_zero_for_a_perfect_transcript_and_one_for_an_empty_one():
    assert wer([REF], [REF]) == 0.0
    assert wer([REF], [""]) == 1.0


def test_cer_is_corpus_level_not_an_average_of_sentences():
    # 2 errors over 2 + 6 reference characters; averaging per sentence would give 0.5
    assert cer(["ab", "abcdef"], ["", "abcdef"]) == pytest.approx(2 / 8)
    assert cer(["bin blue"], ["bin blua"]) == pytest.approx(1 / 8)


def test_case_and_extra_spaces_are_not_counted_as_errors():
    assert wer([REF], ["  Bin BLUE at  f two now "]) == 0.0
    assert cer([REF], ["bin  blue at f two now"]) == 0.0


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer([REF, REF], [REF])
    with pytest.raises(ValueError, match="no transcripts"):
        cer([], [])


def test_a_wrong_letter_shows_up_only_in_the_letter_slot():
    rates = slot_error_rates([REF], ["bin blue at s two now"])
    assert rates == {**dict.fromkeys(SLOT_NAMES, 0.0), "letter": 1.0}


def test_slot_rates_are_shares_of_sentences_and_survive_a_missing_word():
    refs = [REF, "set red by a one soon"]
    hyps = ["bin blue at s two now", "set red by a soon"]  # letter wrong; digit dropped
    rates = slot_error_rates(refs, hyps)
    assert rates["letter"] == 0.5 and rates["digit"] == 0.5
    assert all(rates[s] == 0.0 for s in ("command", "colour", "preposition", "adverb"))


def test_an_extra_word_does_not_shift_the_slots_after_it():
    assert set(slot_error_rates([REF], ["bin blue at at f two now"]).values()) == {0.0}
    assert slot_error_rates([REF], [""]) == dict.fromkeys(SLOT_NAMES, 1.0)


def test_slot_rates_need_six_word_grid_references():
    with pytest.raises(ValueError, match="not a six-word GRID sentence"):
        slot_error_rates(["hello world"], ["hello world"])


def test_confusions_name_the_slot_the_word_said_and_the_word_read_most_frequent_first():
    refs = [REF, REF, REF, "set red in p one soon"]
    at_in = "bin blue in f two now"
    hyps = [at_in, at_in, "bin blue in f two", "set red in b one"]
    assert word_confusions(refs, hyps) == [
        ("preposition", "at", "in", 3),
        ("adverb", "now", "", 1),  # dropped words read as ""
        ("adverb", "soon", "", 1),
        ("letter", "p", "b", 1),
    ]
    assert word_confusions(refs, hyps, top=1) == [("preposition", "at", "in", 3)]
    # an extra word shifts nothing; counts add up to the slot error rates
    assert word_confusions([REF], ["bin blue at at s two now"]) == [("letter", "f", "s", 1)]
    assert word_confusions([REF], [REF]) == []
    with pytest.raises(ValueError, match="not a six-word GRID sentence"):
        word_confusions(["hello world"], ["hello world"])


def test_evaluation_table_is_markdown_with_one_row_per_system():
    results = {
        "greedy": evaluate([REF], ["bin blue at s two now"]),
        "beam + LM": {**evaluate([REF], [REF]), "ms per clip": "4.1"},
    }
    table = evaluation_table(results)
    lines = table.strip().splitlines()
    assert lines[0] == (
        "| system | wer | cer | command | colour | preposition | letter | digit | adverb "
        "| ms per clip |"
    )
    assert lines[1].startswith("| --- | ---: |")
    assert lines[2].startswith("| greedy | 16.7% | 4.8% |") and lines[2].endswith("| – |")
    assert lines[3].startswith("| beam + LM | 0.0% |") and lines[3].endswith("| 4.1 |")
