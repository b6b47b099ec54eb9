"""What the trainer minimises: an objective turns a batch into a loss and its named parts.

The trainer loop (:mod:`mouthmap.train.trainer`) owns optimisation, checkpoints, DDP and
tracking; the objective owns the loss. :class:`CTCObjective` is the default; distillation
(:mod:`mouthmap.train.distill`) adds terms, teachers and a trainable projection. Every part an
objective returns is averaged per epoch, kept in the history and logged to MLflow as
``train_<part>``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mouthmap.data import dataset as ds


def modality_of(model: nn.Module) -> str:
    """``"video"`` or ``"audio"``: the input a model (or its DDP wrapper) reads."""
    return getattr(getattr(model, "module", model), "modality", "video")


def model_inputs(
    model: nn.Module, batch: ds.Batch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input on device, input lengths on device, output lengths on the CPU) for the model's
    modality: video frames, or log-mel frames whose outputs run at 25/s (``floor(L / 4)``)."""
    inner = getattr(model, "module", model)
    if modality_of(inner) == "audio":
        if batch.mel is None or batch.mel_lengths is None:
            raise ValueError("an audio model needs batches with mel (GridDataset(with_audio=True))")
        x, lengths = batch.mel, batch.mel_lengths
    else:
        x, lengths = batch.video, batch.video_lengths
    out_lengths = getattr(inner, "output_lengths", lambda n: n)(lengths)
    return x.to(device, non_blocking=True), lengths.to(device), out_lengths


def ctc_loss(
    log_probs: torch.Tensor, batch: ds.Batch, lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean CTC loss over the batch; (B, T, C) log-probs with ``lengths`` output frames per clip
    (default: the video lengths), computed in float32."""
    return F.ctc_loss(
        log_probs.float().transpose(0, 1),
        batch.targets,
        batch.video_lengths if lengths is None else lengths,
        batch.target_lengths,
        blank=0,
        zero_infinity=True,  # a clip shorter than its transcript must not poison the batch
    )


class CTCObjective:
    """CTC between the model's per-frame outputs and the transcripts: plain training."""

    name = "ctc"
    needs_audio = False  # whether batches must carry log-mel features besides the model's input

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once the model is on its device, before the optimiser is built."""

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the objective itself (optimised with the model's)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def log_params(self) -> dict[str, Any]:
        """Settings worth recording with the run."""
        return {"objective": self.name}

    def __call__(
        self, net: nn.Module, batch: ds.Batch, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, named parts) of one batch; the net is the (DDP-wrapped) model."""
        x, lengths, out_lengths = model_inputs(net, batch, device)
        loss = ctc_loss(net(x, lengths), batch, out_lengths)
        return loss, {"ctc": loss}
