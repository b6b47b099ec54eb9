"""The visual speech recognition model: frontend -> temporal backend -> CTC classifier.

Contract (DESIGN.md): ``video (B, 1, T, 88, 88)`` normalised grayscale mouth ROIs and
``lengths (B,)`` in, per-frame log-probabilities ``(B, T, C)`` out, same T.
"""

from __future__ import annotations

import torch
from torch import nn

from mouthmap import alphabet


def time_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, T) True on valid frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


class VSRModel(nn.Module):
    modality = "video"  # which input it reads (the audio teacher's is "audio")
    frame_rate = 25  # output frames per second; distillation refuses teachers at other rates

    def __init__(
        self, frontend: nn.Module, backend: nn.Module, num_classes: int = alphabet.NUM_CLASSES
    ):
        super().__init__()
        self.frontend = frontend
        self.backend = backend
        self.classifier = nn.Linear(backend.out_dim, num_classes)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        """Output frames per clip: one per video frame."""
        return lengths

    def forward(
        self, video: torch.Tensor, lengths: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mask = time_mask(lengths, video.shape[2])
        # zero the padding so a clip reads the same alone or in a padded batch; front ends that
        # convolve in time more than once also re-zero it between their layers (mask)
        video = video * mask[:, None, :, None, None].to(video.dtype)
        feats = self.frontend(video, mask)  # (B, T, D)
        feats = self.backend(feats * mask[..., None].to(feats.dtype), lengths, mask)  # (B, T, H)
        log_probs = self.classifier(feats).log_softmax(-1)
        return (log_probs, feats) if return_features else log_probs
