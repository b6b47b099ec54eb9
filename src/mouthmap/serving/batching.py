"""Running a dynamic batch of encoder requests (clips of different lengths).

``padded``: pad to the longest, one ONNX Runtime call with ``lengths``, cut each result
back. The model masks padded frames in every layer, so a clip's log-probabilities agree
with its single run to float rounding (about 5e-7 here), not bit for bit: ONNX Runtime's
CPU kernels sum in another order at another batch size, and in a near tie that can change
a beam-search transcript (seen with a test model whose outputs are nearly flat).

``exact`` (the default): one call per request inside the batch. Bit-identical to the
offline ``mouthmap transcribe``. On this CPU a batch of B clips costs B single clips
either way (measured 37 ms per 75-frame clip at B = 1, 4 and 8 for the student), so
exactness costs nothing here; on a GPU (the ONNX Runtime backend) the fused call is the
point of batching and rounding-level differences are the price.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# the encoder: (video, lengths) -> log_probs, or a tuple of per-frame outputs (the log-probs
# and the word head's log-probs: OnnxRunner.run_all), each (B, T, ...) or None
Run = Callable[[np.ndarray, np.ndarray], Any]


MODES = ("exact", "padded")


def run_batch(
    run: Run, videos: list[np.ndarray], lengths: list[np.ndarray], mode: str = "exact"
) -> list[np.ndarray]:
    """(b_i, 1, T_i, H, W) each -> (b_i, T_i, C) each (a tuple of such where ``run`` gives
    one)."""
    if mode not in MODES:
        raise ValueError(f"batch mode {mode!r}: use one of {MODES}")
    if len(videos) == 1 or mode == "exact":
        return [run(v, n) for v, n in zip(videos, lengths, strict=True)]
    t = max(v.shape[2] for v in videos)
    total = sum(v.shape[0] for v in videos)
    batch = np.zeros((total, 1, t, *videos[0].shape[3:]), np.float32)
    i = 0
    for v in videos:
        batch[i : i + len(v), :, : v.shape[2]] = v
        i += len(v)
    out = run(batch, np.concatenate(lengths))
    res, i = [], 0
    for v in videos:
        part = slice(i, i + len(v)), slice(0, v.shape[2])
        res.append(
            tuple(None if o is None else o[part] for o in out)
            if isinstance(out, tuple)
            else out[part]
        )
        i += len(v)
    return res
