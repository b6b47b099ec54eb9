"""Model size and compute: parameters, FP32 megabytes and multiply-accumulates per second.

``summarise("student")`` runs one clip of silent video (batch 1, 25 frames of 88x88 per
second) through the model under ``torch.utils.flop_counter.FlopCounterMode`` and reports
MACs = counted FLOPs / 2. Counted: convolutions (2D/3D/1D, grouped and depthwise included),
linear layers and matmuls, scaled-dot-product attention (CPU kernel registered here) and
recurrent layers (LSTM/GRU/RNN, counted analytically below because FlopCounterMode does not
see inside them). Not counted: element-wise work — normalisation, activations, pooling,
softmax, gating, residual additions, biases — which is small next to the products above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mouthmap.models.backends import BACKENDS
from mouthmap.models.frontends import FRONTENDS
from mouthmap.models.registry import MODELS, build_model, resolve_spec

FPS = 25
FRAME_SIZE = 88
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """One model's size and cost.

    ``size_mb`` is the FP32 weight size: 4 bytes per parameter, in MB of 10^6 bytes.
    ``macs`` counts multiply-accumulates for ``seconds`` of video (batch 1, 25 fps, 88x88);
    ``macs_per_second`` is that divided by ``seconds``.
    """

    name: str
    frontend: str
    backend: str
    parameters: int
    size_mb: float
    macs_per_second: float
    seconds: float = 1.0
    macs: int = 0

    @property
    def gmacs_per_second(self) -> float:
        return self.macs_per_second / 1e9


def rnn_macs(module: nn.RNNBase, steps: int) -> int:
    """Analytic MACs of a recurrent layer over ``steps`` time steps (summed over the batch):
    per step, direction and layer, gates x H x (D_in + H) (LSTM: 4 H (D + H))."""
    if module.proj_size:
        raise NotImplementedError("MACs of LSTMs with proj_size are not counted")
    gates = _GATES[module.mode]
    dirs = 2 if module.bidirectional else 1
    h = module.hidden_size
    per_step = sum(
        gates * h * ((module.input_size if layer == 0 else dirs * h) + h)
        for layer in range(module.num_layers)
    )
    return steps * dirs * per_step


def _rnn_steps(x: torch.Tensor | PackedSequence) -> int:
    if isinstance(x, PackedSequence):
        return int(x.data.shape[0])  # one row per valid step of every sequence
    return int(x.numel() // x.shape[-1]) if x.dim() == 3 else int(x.shape[0])


def count_macs(model: nn.Module, *inputs: Any) -> int:
    """Multiply-accumulates of one ``model(*inputs)`` call (no grad, model as it is)."""
    sdpa_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def sdpa_formula(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    counter = FlopCounterMode(display=False, custom_mapping={sdpa_cpu: sdpa_formula})
    extra = 0
    before: dict[int, int] = {}

    def pre_hook(module: nn.Module, args: tuple) -> None:
        before[id(module)] = counter.get_total_flops()

    def post_hook(module: nn.Module, args: tuple, output: Any) -> None:
        nonlocal extra
        if counter.get_total_flops() == before[id(module)]:  # the counter missed it: add it
            steps = _rnn_steps(args[0])
            extra += 2 * rnn_macs(module, steps)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return (counter.get_total_flops() + extra) // 2


def summarise(
    name_or_spec: str | dict[str, Any], seconds: float = 1.0, name: str | None = None
) -> ModelSummary:
    """Size and MACs of a named model (``"student"``) or a ``{"frontend", "backend", ...}``
    spec, measured on ``seconds`` of video (batch 1, 25 frames of 88x88 per second)."""
    spec = resolve_spec(name_or_spec)
    if name is None:
        name = (
            name_or_spec
            if isinstance(name_or_spec, str)
            else f"{spec['frontend']}+{spec['backend']}"
        )
    model = build_model(spec).eval()
    frames = max(1, round(seconds * FPS))
    video = torch.zeros(1, 1, frames, FRAME_SIZE, FRAME_SIZE)
    macs = count_macs(model, video, torch.tensor([frames]))
    params = sum(p.numel() for p in model.parameters())
    return ModelSummary(
        name=name,
        frontend=spec["frontend"],
        backend=spec["backend"],
        parameters=params,
        size_mb=4 * params / 1e6,
        macs_per_second=macs * FPS / frames,
        seconds=frames / FPS,
        macs=macs,
    )


def all_combinations() -> list[str | dict[str, str]]:
    """The named models, then every frontend x backend pair with default arguments."""
    pairs = [{"frontend": fe, "backend": be} for fe in FRONTENDS for be in BACKENDS]
    return [*MODELS, *pairs]


def summarise_all(seconds: float = 1.0) -> list[ModelSummary]:
    return [summarise(m, seconds) for m in all_combinations()]


_COLUMNS = ("model", "frontend", "backend", "params", "FP32 MB", "GMACs/s")


def _rows(summaries: Iterable[ModelSummary], sort_by: str | None) -> list[tuple[str, ...]]:
    items: Sequence[ModelSummary] = list(summaries)
    if sort_by is not None:
        items = sorted(items, key=lambda s: getattr(s, sort_by))
    return [
        (s.name, s.frontend, s.backend, f"{s.parameters:,}", f"{s.size_mb:.2f}",
         f"{s.gmacs_per_second:.3f}")
        for s in items
    ]  # fmt: skip


def markdown_table(summaries: Iterable[ModelSummary], sort_by: str | None = None) -> str:
    """A GitHub markdown table; ``sort_by`` names a ModelSummary field (default: as given)."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * 3 + "---:|" * 3]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(summaries, sort_by)]
    return "\n".join(lines) + "\n"


def format_table(summaries: Iterable[ModelSummary], sort_by: str | None = None) -> str:
    """An aligned plain-text table for the terminal; numbers right-aligned."""
    rows = [_COLUMNS, *_rows(summaries, sort_by)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    out = []
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out) + "\n"
