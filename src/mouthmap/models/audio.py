"""The audio teacher: log-mel speech recognition with CTC, at the video's 25 frames/s.

Contract, the same as :class:`~mouthmap.models.base.VSRModel` with audio in: ``mel (B, T_a,
n_mels)`` log-mel at 100 frames/s (the prepared ``mel`` array) and ``mel_lengths (B,)`` in,
per-frame log-probabilities ``(B, T25, C)`` over the one alphabet out, plus the encoder
features ``(B, T25, H)`` with ``return_features=True``. It exists to teach the visual student
(cross-modal distillation), so its frames must line up with video frames:

* **Alignment.** 100 mel frames/s / 25 video frames/s = 4 mel frames per video frame. Two
  ``Conv2d(kernel 4, stride 2, padding 1)`` layers each map T frames to exactly ``floor(T/2)``,
  so output frame ``t`` summarises mel frames ``4t-3 .. 4t+5`` (centred on the video frame's
  4 mel frames ``4t .. 4t+3``) and a clip of ``L`` mel frames gives ``floor(L / 4)`` outputs
  (:func:`output_lengths`). Prepared GRID clips have ``L = 4 * n_frames + 1`` (centred STFT
  frames: ``1 + samples // hop``), so the output length equals the video frame count; for the
  few clips whose audio outlasts their video, distillation compares the common frames only.
* **Padding never reaches valid frames**: every layer zeroes frames beyond each clip's own
  length, so a clip reads the same alone or in a padded batch.
* **Input normalisation** is per utterance and per mel band (mean/variance over the clip's
  valid frames): no statistics to store, and robust to recording level.

A user's own pretrained audio encoder plugs in with ``"encoder": "external"`` (see
:class:`ExternalEncoder`); its features are resampled to 25 frames/s by area weighting.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mouthmap import alphabet
from mouthmap.models.backends import BACKENDS
from mouthmap.models.base import time_mask

FRAME_RATE = 25  # output frames per second, the video's
MEL_RATE = 100  # input frames per second (10 ms hop)
SUBSAMPLE = MEL_RATE // FRAME_RATE  # 4 mel frames per video frame


def output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
    """Frames at 25/s for clips of ``mel_lengths`` mel frames: ``floor(L / 4)``."""
    return torch.div(mel_lengths, SUBSAMPLE, rounding_mode="floor")


def utterance_norm(mel: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-clip, per-band mean/variance normalisation over valid frames; padding -> 0."""
    m = time_mask(lengths, mel.shape[1])[..., None].to(mel.dtype)  # (B, T, 1)
    n = m.sum(1, keepdim=True).clamp(min=1)
    mean = (mel * m).sum(1, keepdim=True) / n
    var = (((mel - mean) * m) ** 2).sum(1, keepdim=True) / n
    return (mel - mean) / torch.sqrt(var + eps) * m


class SpecAugment(nn.Module):
    """Frequency and time masking (Park et al. 2019) in training only; masked values are 0,
    the utterance mean after :func:`utterance_norm`."""

    def __init__(
        self, freq_masks: int = 2, freq_width: int = 10, time_masks: int = 2, time_width: int = 20
    ):
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width = time_masks, time_width

    def _mask(self, x: torch.Tensor, dim: int, count: int, width: int, extent: torch.Tensor):
        b, size = x.shape[0], x.shape[dim]
        pos = torch.arange(size, device=x.device)[None, :]
        keep = torch.ones(b, size, dtype=torch.bool, device=x.device)
        for _ in range(count):
            w = torch.randint(0, width + 1, (b, 1), device=x.device)
            start = (torch.rand(b, 1, device=x.device) * (extent[:, None] - w).clamp(min=0)).long()
            keep &= ~((pos >= start) & (pos < start + w))
        shape = [b, 1, 1]
        shape[dim] = size
        return x * keep.view(shape).to(x.dtype)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        bands = torch.full_like(lengths, x.shape[2])
        x = self._mask(x, 2, self.freq_masks, self.freq_width, bands)
        return self._mask(x, 1, self.time_masks, self.time_width, lengths)


class Conv2dSubsampling(nn.Module):
    """(B, T, n_mels) -> (B, floor(T/4), out_dim): two stride-2 Conv2d + ReLU over time and
    frequency, then a linear projection; padding zeroed between the layers."""

    def __init__(self, n_mels: int = 80, channels: int = 64, out_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 4, stride=2, padding=1)
        self.proj = nn.Linear(channels * (n_mels // 4), out_dim)
        self.out_dim = out_dim

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[Tensor, Tensor]:
        def masked(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            return x * time_mask(n, x.shape[2])[:, None, :, None].to(x.dtype)

        half = torch.div(lengths, 2, rounding_mode="floor")
        x = masked(F.relu(self.conv1(mel[:, None])), half)  # (B, C, T/2, F/2)
        out_lengths = torch.div(half, 2, rounding_mode="floor")
        x = masked(F.relu(self.conv2(x)), out_lengths)  # (B, C, T/4, F/4)
        b, c, t, f = x.shape
        y = self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))
        return y * time_mask(out_lengths, t)[..., None].to(y.dtype), out_lengths


class SubsampledEncoder(nn.Module):
    """Conv2d subsampling to 25 frames/s, then one of the temporal back ends by name."""

    def __init__(
        self,
        backend: str = "conformer",
        backend_args: dict[str, Any] | None = None,
        n_mels: int = 80,
        channels: int = 64,
        subsample_dim: int = 256,
        specaugment: dict[str, int] | None = None,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown audio encoder {backend!r}; known: {', '.join(BACKENDS)}, external"
            )
        self.specaugment = SpecAugment(**specaugment) if specaugment is not None else None
        self.subsample = Conv2dSubsampling(n_mels, channels, subsample_dim)
        self.backend = BACKENDS[backend](subsample_dim, **(backend_args or {}))
        self.out_dim = self.backend.out_dim

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[Tensor, Tensor]:
        x = utterance_norm(mel, lengths)
        if self.specaugment is not None:
            x = self.specaugment(x, lengths)
        x, out_lengths = self.subsample(x, lengths)
        mask = time_mask(out_lengths, x.shape[1])
        return self.backend(x, out_lengths, mask), out_lengths


def resample_to(
    x: torch.Tensor,
    lengths: torch.Tensor,
    src_rate: float,
    target_lengths: torch.Tensor,
    dst_rate: float = FRAME_RATE,
) -> torch.Tensor:
    """(B, T_src, D) frames at ``src_rate``/s -> (B, max(target_lengths), D) at ``dst_rate``/s.

    Area weighting: output frame ``i`` spans source time ``[i r, (i + 1) r)`` (``r = src/dst``
    in source frames) and averages the valid source frames by their overlap with it, so an
    integer ratio (50 -> 25 frames/s) is a mean over each pair and a fractional one weighs the
    frames at the edges. An output frame with no valid source frame under it takes the
    nearest valid one; frames beyond ``target_lengths`` are zero."""
    r = src_rate / dst_rate
    t_out, t_src = int(target_lengths.max()), x.shape[1]
    i = torch.arange(t_out, device=x.device, dtype=torch.float64)[:, None]
    j = torch.arange(t_src, device=x.device, dtype=torch.float64)[None, :]
    overlap = (torch.minimum((i + 1) * r, j + 1) - torch.maximum(i * r, j)).clamp(min=0)
    w = overlap.to(x.dtype)[None] * time_mask(lengths, t_src)[:, None, :].to(x.dtype)  # (B,o,s)
    total = w.sum(-1, keepdim=True)
    nearest = torch.minimum(
        ((i[:, 0] + 0.5) * r).long()[None, :], (lengths[:, None] - 1).clamp(min=0)
    )  # (B, o)
    fallback = F.one_hot(nearest, t_src).to(x.dtype)
    w = torch.where(total > 0, w / total.clamp(min=1e-12), fallback)
    out = torch.bmm(w, x)
    return out * time_mask(target_lengths, t_out)[..., None].to(out.dtype)


def load_external(
    module: str,
    checkpoint: str | None = None,
    factory_args: dict[str, Any] | None = None,
) -> nn.Module:
    """``"pkg.mod:factory"`` -> ``factory(**factory_args)``, weights from ``checkpoint``
    (a state dict, or a dict holding one under ``state_dict`` or ``model``) when given."""
    mod_name, sep, attr = module.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"external encoder {module!r}: expected 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"external encoder {module!r} cannot be imported: {e}") from None
    encoder = factory(**(factory_args or {}))
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"external encoder {module!r} returned {type(encoder).__name__}")
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise ValueError(f"external encoder checkpoint {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        try:
            encoder.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not fit encoder {module!r}: {e}") from None
    return encoder


class ExternalEncoder(nn.Module):
    """A user's own (pretrained) audio encoder behind the audio teacher's interface.

    Spec: ``{"modality": "audio", "encoder": "external", "encoder_args": {"module":
    "pkg.mod:factory", "factory_args": {...}, "checkpoint": PATH or null, "feature_dim": N,
    "frame_rate": 50, "freeze": true}, "head": "bilstm" or null, "head_args": {...}}``.

    ``factory(**factory_args)`` returns an ``nn.Module`` called as ``encoder(mel, mel_lengths)``
    with the prepared log-mel ``(B, T_a, 80)`` at 100 frames/s (raw, not normalised) and
    returning ``(B, T_e, feature_dim)`` features at ``frame_rate`` frames/s, or a pair
    (features, their lengths). Without lengths, a clip's are ``floor(L * frame_rate / 100)``.
    The features are resampled to 25 frames/s (:func:`resample_to`) with
    ``floor(L / 4)`` frames per clip, like the built-in encoder, then projected to ``hidden``
    and optionally passed through a trainable back end (``head``). A frozen encoder (the
    default) stays in eval mode and gets no gradients.
    """

    def __init__(
        self,
        module: str,
        feature_dim: int,
        frame_rate: float,
        checkpoint: str | None = None,
        factory_args: dict[str, Any] | None = None,
        freeze: bool = True,
        hidden: int = 256,
        head: str | None = None,
        head_args: dict[str, Any] | None = None,
    ):
        super().__init__()
        if frame_rate <= 0:
            raise ValueError(f"external encoder frame_rate must be positive, got {frame_rate}")
        self.encoder = load_external(module, checkpoint, factory_args)
        self.feature_dim, self.src_rate, self.frozen = feature_dim, float(frame_rate), freeze
        if freeze:
            self.encoder.requires_grad_(False)
        self.proj = nn.Linear(feature_dim, hidden)
        if head is not None and head not in BACKENDS:
            raise ValueError(f"unknown head {head!r}; known: {', '.join(BACKENDS)}")
        self.head = BACKENDS[head](hidden, **(head_args or {})) if head else None
        self.out_dim = self.head.out_dim if self.head is not None else hidden

    def train(self, mode: bool = True) -> ExternalEncoder:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # frozen: dropout/BatchNorm keep their pretrained behaviour
        return self

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[Tensor, Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.encoder(mel, lengths)
        feats, feat_lengths = out if isinstance(out, tuple) else (out, None)
        if feats.dim() != 3 or feats.shape[-1] != self.feature_dim:
            raise ValueError(
                f"external encoder gave features of shape {tuple(feats.shape)}, expected "
                f"(B, T, {self.feature_dim})"
            )
        if feat_lengths is None:
            feat_lengths = torch.div(lengths * self.src_rate, MEL_RATE, rounding_mode="floor")
        feat_lengths = feat_lengths.long().clamp(max=feats.shape[1])
        out_lengths = output_lengths(lengths)
        x = resample_to(feats.float(), feat_lengths, self.src_rate, out_lengths)
        mask = time_mask(out_lengths, x.shape[1])
        x = self.proj(x) * mask[..., None].to(x.dtype)
        if self.head is not None:
            x = self.head(x, out_lengths, mask)
        return x, out_lengths


class AudioModel(nn.Module):
    """Encoder (25 frames/s) -> CTC classifier; the audio counterpart of ``VSRModel``."""

    modality = "audio"
    frame_rate = FRAME_RATE

    def __init__(self, encoder: nn.Module, num_classes: int = alphabet.NUM_CLASSES):
        super().__init__()
        self.encoder = encoder
        self.classifier = nn.Linear(encoder.out_dim, num_classes)

    @staticmethod
    def output_lengths(mel_lengths: torch.Tensor) -> torch.Tensor:
        return output_lengths(mel_lengths)

    def forward(
        self, mel: torch.Tensor, mel_lengths: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats, _ = self.encoder(mel, mel_lengths)  # (B, T25, H), padding zero
        log_probs = self.classifier(feats).log_softmax(-1)
        return (log_probs, feats) if return_features else log_probs


def build_audio_model(spec: dict[str, Any]) -> AudioModel:
    """An audio model from ``{"modality": "audio", "encoder": BACKEND or "external", ...}``:
    built-in encoders take ``encoder_args`` (the back end's), ``subsampling_args``
    (``channels``, ``subsample_dim``, ``n_mels``) and ``specaugment`` (or null)."""
    known = {"modality", "encoder", "encoder_args", "subsampling_args", "specaugment",
             "head", "head_args", "hidden"}  # fmt: skip
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown audio model keys {sorted(unknown)}; known: {sorted(known)}")
    name = spec.get("encoder", "conformer")
    if name == "external":
        args = dict(spec.get("encoder_args") or {})
        missing = {"module", "feature_dim", "frame_rate"} - set(args)
        if missing:
            raise ValueError(f"external audio encoder needs encoder_args {sorted(missing)}")
        encoder: nn.Module = ExternalEncoder(
            **args, hidden=spec.get("hidden", 256), head=spec.get("head"),
            head_args=spec.get("head_args"),
        )  # fmt: skip
    else:
        encoder = SubsampledEncoder(
            name, spec.get("encoder_args"), specaugment=spec.get("specaugment"),
            **(spec.get("subsampling_args") or {}),
        )  # fmt: skip
    return AudioModel(encoder)
