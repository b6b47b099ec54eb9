"""The committed splits: fixed, disjoint by sentence, test sentences unseen in training."""

from pathlib import Path

from mouthmap.data import corpus, splits

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "data" / "splits" / "grid_s1.json"
SAMPLE = ROOT / "data" / "sample"


def test_committed_split_covers_900_clips_in_three_disjoint_parts():
    assignment = splits.load(COMMITTED)
    assert len(assignment) == 900
    counts = {s: list(assignment.values()).count(s) for s in splits.SPLITS}
    assert counts["train"] > 600 and counts["val"] > 50 and counts["test"] > 50


def test_committed_split_follows_the_sentence_rule_so_it_cannot_drift():
    assignment = splits.load(COMMITTED)
    for clip in corpus.discover(SAMPLE):
        text = corpus.transcript(corpus.read_align(clip.align))
        assert assignment[clip.id] == splits.split_of(text)


def test_no_test_sentence_appears_in_training(tmp_path):
    texts = {f"s{i}_x": "bin blue at f two now" for i in range(1, 5)}
    texts["s1_y"] = "set red by k one soon"
    assignment = splits.assign(texts)
    assert not splits.check_splits(assignment, texts)
    assert len({assignment[f"s{i}_x"] for i in range(1, 5)}) == 1  # one sentence, one split


def test_check_splits_reports_a_sentence_in_two_splits():
    texts = {"a": "bin blue at f two now", "b": "bin blue at f two now"}
    problems = splits.check_splits({"a": "train", "b": "test"}, texts)
    assert problems and "both train and test" in problems[0]


def test_sample_spans_all_three_splits():
    assignment = splits.load(COMMITTED)
    found = {assignment[c.id] for c in corpus.discover(SAMPLE)}
    assert found == {"train", "val", "test"}
