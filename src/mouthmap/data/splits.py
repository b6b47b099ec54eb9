"""Fixed train/val/test splits by sentence.

A clip's split is a pure function of its sentence (a hash of the transcript), so
the same sentence spoken by any speaker lands in the same split and the test
split only holds sentences never seen in training. The assignment for the shared
corpus is also committed (``data/splits/*.json``) so a change to this rule shows
up as a diff, and :func:`check_splits` guards it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

SPLITS = ("train", "val", "test")
VAL_PERCENT = 10
TEST_PERCENT = 10


def split_of(transcript: str) -> str:
    bucket = int(hashlib.sha1(transcript.encode()).hexdigest()[:8], 16) % 100
    if bucket < TEST_PERCENT:
        return "test"
    if bucket < TEST_PERCENT + VAL_PERCENT:
        return "val"
    return "train"


def assign(transcripts: Mapping[str, str]) -> dict[str, str]:
    """clip id -> split, for clips given as id -> transcript."""
    return {cid: split_of(text) for cid, text in sorted(transcripts.items())}


def load(path: str | Path) -> dict[str, str]:
    """Read a committed split file: ``{"train": [ids], "val": [...], "test": [...]}``."""
    data = json.loads(Path(path).read_text())
    out: dict[str, str] = {}
    for split in SPLITS:
        for cid in data.get(split, []):
            if cid in out:
                raise ValueError(f"{path}: clip {cid} is in both {out[cid]} and {split}")
            out[cid] = split
    return out


def save(assignment: Mapping[str, str], path: str | Path) -> None:
    by_split = {s: sorted(c for c, sp in assignment.items() if sp == s) for s in SPLITS}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(by_split, indent=1) + "\n")


def check_splits(assignment: Mapping[str, str], transcripts: Mapping[str, str]) -> list[str]:
    """Problems with an assignment: a sentence in two splits, or an unknown split name."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for cid, split in assignment.items():
        if split not in SPLITS:
            problems.append(f"{cid}: unknown split {split!r}")
        text = transcripts.get(cid)
        if text is None:
            continue
        other = seen.setdefault(text, split)
        if other != split:
            problems.append(f"sentence {text!r} is in both {other} and {split}")
    return problems
