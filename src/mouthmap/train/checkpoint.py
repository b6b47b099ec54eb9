"""Checkpoints that can resume training and that refuse to load when they are not ours.

A checkpoint holds only plain types and tensors, so it loads with
``torch.load(weights_only=True)``: opening a file cannot run code.
"""

from __future__ import annotations

import io
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from mouthmap import alphabet
from mouthmap.data.cache import atomic_write_bytes

FORMAT = "mouthmap-checkpoint/1"
FRAME_RATE = 25  # output frames per second of every model: one per video frame
# What only resuming a run needs (optimiser moments are twice the weights' size; an EMA run's
# raw weights): not in a slim copy. Of the objective's own state only the word head stays (it
# decodes: slot decoding, mouthmap.decode.slots); a KD projection is training-only.
RESUME_ONLY = ("optimizer", "scheduler", "scaler", "rng", "objective", "raw", "ema")
KEPT_OBJECTIVE = ("align_head",)


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or was made for another alphabet or frame rate."""


def save(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    head = {"format": FORMAT, "alphabet": list(alphabet.SYMBOLS), "frame_rate": FRAME_RATE}
    torch.save({**head, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())  # an interrupted save keeps the previous file


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"{p} is not a readable checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a MouthMap checkpoint (no {FORMAT!r} marker)")
    if state.get("alphabet") != list(alphabet.SYMBOLS):
        raise CheckpointError(
            f"{p} was trained for alphabet {state.get('alphabet')}, not {list(alphabet.SYMBOLS)}"
        )
    rate = state.get("frame_rate", FRAME_RATE)  # checkpoints from before the field: 25
    if rate != FRAME_RATE:
        raise CheckpointError(
            f"{p} outputs {rate} frames/s, not {FRAME_RATE} (one per video frame): its frames "
            "would not line up with the video's"
        )
    return state


def without_machine_paths(value: Any) -> Any:
    """``value`` (params as plain types) with each absolute path cut to its last part.

    A path like ``/home/alice/grid`` names the machine and the person that trained a model;
    a file meant to be shared keeps only ``grid``. Relative paths and other strings stay."""
    if isinstance(value, dict):
        return {k: without_machine_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_machine_paths(v) for v in value]
    if isinstance(value, str):
        scheme, sep, rest = value.partition("://")  # file:///..., sqlite:////...
        path = rest if sep else value
        if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute():
            name = PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name
            return f"{scheme}{sep}{name}" if sep else name
    return value


def slim(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Copy a checkpoint to ``dst`` without what only resuming its run needs.

    The copy still evaluates (with its word head, when the run trained one), exports,
    initialises a fine-tune (``train.init_from``) and serves as a distillation teacher; it
    cannot resume training. It is the copy that gets shared (a
    release keeps one), so the absolute paths in its params are cut to their names. Returns
    the state written."""
    full = load(src)
    state = {k: v for k, v in full.items() if k not in RESUME_ONLY}
    kept = {k: v for k, v in (full.get("objective") or {}).items() if k in KEPT_OBJECTIVE}
    if kept:
        state["objective"] = kept
    if isinstance(state.get("params"), dict):
        state["params"] = without_machine_paths(state["params"])
    state["slim"] = True
    save(Path(dst), state)
    return state
