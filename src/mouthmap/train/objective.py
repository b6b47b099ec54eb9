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
from mouthmap.data.corpus import IGNORE_LABEL, WORDS


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


def alignment_loss(
    logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of (B, T, K) per-frame word logits against the word classes of the
    alignment (B, T'), over frames both have; ignored labels and padding do not count."""
    t = min(logits.shape[1], labels.shape[1])
    labels = labels[:, :t].to(logits.device).clone()
    pad = torch.arange(t, device=logits.device)[None, :] >= lengths.to(logits.device)[:, None]
    labels[pad] = IGNORE_LABEL
    if not (labels != IGNORE_LABEL).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[:, :t].float().transpose(1, 2), labels, ignore_index=IGNORE_LABEL)


class CTCObjective:
    """CTC between the model's per-frame outputs and the transcripts: plain training.

    With ``align_weight > 0`` (``train.align_weight``) a linear head on the back end's features
    also classifies every frame as the word its alignment says is spoken there (GRID ships word
    timings; :func:`mouthmap.data.corpus.frame_labels`). CTC alone has to discover where the
    words are from whole-sentence labels, which takes many epochs on 700 clips; the per-frame
    target is dense and makes the features word-discriminative early. Audio models get it too:
    their outputs run at the video's 25 frames/s. The head belongs to the
    objective (checkpoint key ``objective``), not to the exported model.
    """

    name = "ctc"
    needs_audio = False  # whether batches must carry log-mel features besides the model's input

    def __init__(self, align_weight: float = 0.0) -> None:
        self.align_weight = align_weight
        self.align_head: nn.Linear | None = None

    @property
    def needs_alignment(self) -> bool:
        """Whether batches must carry per-frame word classes."""
        return self.align_weight > 0

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once the model is on its device, before the optimiser is built."""
        if self.align_weight > 0:
            with torch.random.fork_rng(devices=[]):  # the same data order with or without it
                self.align_head = nn.Linear(model.classifier.in_features, len(WORDS) + 1)
            self.align_head.to(device)

    def bind_normalisation(self, norm: ds.Normalisation) -> None:
        """The pixel statistics the batches are normalised with (known once data loads)."""

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the objective itself (optimised with the model's)."""
        return list(self.align_head.parameters()) if self.align_head is not None else []

    def state_dict(self) -> dict[str, Any]:
        return {"align_head": self.align_head.state_dict()} if self.align_head is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.align_head is not None and "align_head" in state:
            self.align_head.load_state_dict(state["align_head"])

    def log_params(self) -> dict[str, Any]:
        """Settings worth recording with the run."""
        return {"objective": self.name, "align_weight": self.align_weight}

    def _ctc_and_alignment(
        self, net: nn.Module, batch: ds.Batch, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        """(loss so far, parts, (log_probs, features, output lengths)) for subclasses."""
        x, lengths, out_lengths = model_inputs(net, batch, device)
        log_probs, feats = net(x, lengths, return_features=True)
        loss = ctc_loss(log_probs, batch, out_lengths)
        parts = {"ctc": loss}
        if self.align_head is not None and batch.frame_labels is not None:
            # Output frames run at 25/s for both modalities, as the alignment's frames do.
            parts["align"] = alignment_loss(self.align_head(feats), batch.frame_labels, out_lengths)
            loss = loss + self.align_weight * parts["align"]
        return loss, parts, (log_probs, feats, out_lengths)

    def __call__(
        self, net: nn.Module, batch: ds.Batch, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, named parts) of one batch; the net is the (DDP-wrapped) model."""
        loss, parts, _ = self._ctc_and_alignment(net, batch, device)
        return loss, parts
