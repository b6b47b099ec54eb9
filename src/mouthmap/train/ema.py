"""An exponential moving average of the weights (``train.ema_decay``).

On 700 clips the validation WER of consecutive epochs jumps by a word or two either way; the
average of the recent weights is a smoother model than any one step's. The trainer evaluates,
selects and saves the averaged weights (what gets exported), and keeps the raw ones in the
checkpoint only to resume the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """Shadow copies of named modules' state (parameters and buffers, e.g. BatchNorm's running
    statistics), moved toward the live weights after every optimiser step:
    ``shadow = decay * shadow + (1 - decay) * live``, an average over about ``1 / (1 - decay)``
    recent steps (0.998: 500 steps, five epochs of GRID's 91 batches of 8). It starts from the
    weights the run starts from, so a run from scratch wants a few such spans of epochs."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), not {decay}")
        self.modules, self.decay, self.updates = modules, decay, 0
        self.shadow = {name: _copy(m.state_dict()) for name, m in modules.items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        for name, module in self.modules.items():
            shadow = self.shadow[name]
            for key, value in module.state_dict().items():
                if value.is_floating_point():
                    shadow[key].lerp_(value.detach(), 1.0 - self.decay)
                else:  # counters such as num_batches_tracked
                    shadow[key].copy_(value)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the modules for the ``with`` block (to evaluate and save);
        the live weights are put back on leaving."""
        raw = {name: _copy(m.state_dict()) for name, m in self.modules.items()}
        try:
            for name, module in self.modules.items():
                module.load_state_dict(self.shadow[name])
            yield
        finally:
            for name, module in self.modules.items():
                module.load_state_dict(raw[name])

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load(self, shadow: dict[str, dict[str, torch.Tensor]], state: dict[str, Any]) -> None:
        """Resume: the averaged weights as saved (the checkpoint's ``model`` and word head)."""
        for name, weights in shadow.items():
            if name in self.shadow:
                self.shadow[name] = _copy(weights)
        self.updates = int(state.get("updates", 0))


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}
