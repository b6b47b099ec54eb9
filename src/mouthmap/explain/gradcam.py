"""Grad-CAM over the mouth ROI for one word of a transcript.

The score of a word is its CTC log-likelihood over the frames the transcript's best path
gives it (:func:`mouthmap.explain.alignment.word_spans`): ``log P(word | frames of the
word)``. Grad-CAM (Selvaraju et al. 2017) takes the gradient of that score with respect to
the last convolutional feature maps ``A`` of the front end, averages it over space per
channel and frame to weigh the channels, and keeps the positive part of the weighted sum:
``cam[t] = relu(sum_k mean_ij(dS/dA[t,k]) * A[t,k])``. Every frame gets its own weights (the
front end sees frames one by one; the temporal back end mixes them), and all frames share
one scale, so frames that do not matter for the word stay dark.

Written with a forward hook and a tensor (backward) hook: ``pytorch_grad_cam`` needs
torchvision, which has no working CPU build next to torch 2.13 here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mouthmap import alphabet
from mouthmap.explain.alignment import WordSpan, word_spans

__all__ = ["GradCAM", "Saliency", "explain_word", "last_conv_layer", "spatial_layers", "word_score"]


def _spatial(out: object) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim in (4, 5) and min(out.shape[-2:]) > 1


def spatial_layers(model: nn.Module, frames: int = 8, size: int = 88) -> list[tuple[str, int, int]]:
    """``(name, h, w)`` of every front-end module with spatial feature maps, in the order
    the forward pass finishes them; found by running a probe clip, so it works for any front
    end in the zoo (a ShuffleNet's 1x1 head, LipNet's last Conv3d block, ...)."""
    frontend = getattr(model, "frontend", model)
    order: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in frontend.named_modules():
        if name:

            def hook(_m, _i, out, name=name):
                if _spatial(out):
                    order.pop(name, None)  # re-insert: the last call decides the order
                    order[name] = (int(out.shape[-2]), int(out.shape[-1]))

            hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            x = torch.zeros(1, 1, frames, size, size)
            model(x, torch.tensor([frames]))
    finally:
        for h in hooks:
            h.remove()
    return [(name, h, w) for name, (h, w) in order.items()]


def last_conv_layer(model: nn.Module, frames: int = 8, size: int = 88) -> str:
    """The front-end module whose spatial feature maps come last: the last convolutional
    features Grad-CAM is usually taken at."""
    layers = spatial_layers(model, frames, size)
    if not layers:
        frontend = getattr(model, "frontend", model)
        raise ValueError(f"{type(frontend).__name__} has no layer with spatial feature maps")
    return layers[-1][0]


def _per_frame(maps: torch.Tensor, frames: int) -> torch.Tensor:
    """Feature maps of one clip as ``(T, K, h, w)``: from ``(T, K, h, w)`` (per-frame 2-D
    trunks) or ``(1, K, T, h, w)`` (3-D front ends)."""
    if maps.ndim == 5:
        return maps[0].transpose(0, 1)
    if maps.shape[0] != frames:
        raise ValueError(f"feature maps of shape {tuple(maps.shape)} for a clip of {frames}")
    return maps


class GradCAM:
    """Grad-CAM of a MouthMap model at one layer of its front end (default: the last one with
    spatial maps)."""

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        self.model = model.eval()
        self.layer = layer or last_conv_layer(model)
        modules = dict(getattr(model, "frontend", model).named_modules())
        if self.layer not in modules:
            raise ValueError(f"no layer {self.layer!r} in the front end")
        self.module = modules[self.layer]

    def __call__(
        self, video: torch.Tensor, score_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """``video`` (1, 1, T, H, W) normalised; ``score_fn(log_probs (1, T, C)) -> scalar``.

        Returns the raw map ``(T, h, w)`` (>= 0, not normalised), the log-probs ``(T, C)``
        and the score."""
        frames = video.shape[2]
        store: dict[str, torch.Tensor] = {}

        def forward_hook(_m, _i, out):
            store["maps"] = out
            out.register_hook(lambda g: store.__setitem__("grads", g))

        handle = self.module.register_forward_hook(forward_hook)
        try:
            self.model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                log_probs = self.model(video, torch.tensor([frames]))
                score = score_fn(log_probs)
                score.backward()
        finally:
            handle.remove()
        if "grads" not in store:
            raise RuntimeError(f"no gradient reached layer {self.layer!r}")
        maps = _per_frame(store["maps"].detach(), frames)
        grads = _per_frame(store["grads"].detach(), frames)
        weights = grads.mean(dim=(2, 3), keepdim=True)  # (T, K, 1, 1): one weight per frame
        cam = F.relu((weights * maps).sum(1))  # (T, h, w)
        return cam.numpy(), log_probs[0].detach().numpy(), float(score.detach())


def word_score(log_probs: torch.Tensor, labels: list[int], start: int, end: int) -> torch.Tensor:
    """``log P(labels | frames start..end)`` under CTC (all paths, not only the best)."""
    seg = log_probs[0, start:end].unsqueeze(1)  # (T', 1, C)
    target = torch.tensor([labels], dtype=torch.long)
    loss = F.ctc_loss(
        seg,
        target,
        torch.tensor([end - start]),
        torch.tensor([len(labels)]),
        blank=alphabet.BLANK_INDEX,
        reduction="sum",
        zero_infinity=False,
    )
    return -loss


@dataclass
class Saliency:
    """Grad-CAM of one word: ``cam`` (T, S, S) in [0, 1] on the 96x96 ROI's pixels (zero
    outside the centre crop the model sees); ``frame_weight`` (T,) its per-frame mass."""

    span: WordSpan
    cam: np.ndarray
    frame_weight: np.ndarray
    score: float  # the word's CTC log-likelihood over its span
    layer: str
    map_size: tuple[int, int]  # resolution of the feature maps it comes from

    @property
    def peak_frame(self) -> int:
        return int(np.argmax(self.frame_weight))


def explain_word(
    model: nn.Module,
    rois: np.ndarray,
    mean: float,
    std: float,
    text: str,
    word: int,
    crop: int = 88,
    layer: str | None = None,
    log_probs: np.ndarray | None = None,
) -> Saliency:
    """Grad-CAM of word number ``word`` of ``text`` over ``rois`` ((T, S, S) uint8 mouth ROIs,
    prepared as for the model). ``log_probs`` (T, C): the frames to align the text with
    (default: the PyTorch model's own)."""
    t, size = rois.shape[0], rois.shape[1]
    off = (size - crop) // 2
    x = rois[:, off : off + crop, off : off + crop].astype(np.float32) / 255.0
    video = torch.from_numpy((x - mean) / std)[None, None]
    if log_probs is None:
        with torch.no_grad():
            log_probs = model(video, torch.tensor([t]))[0].numpy()
    spans = word_spans(log_probs, text)
    if not 0 <= word < len(spans):
        raise IndexError(f"word {word} of a {len(spans)}-word transcript")
    span = spans[word]
    labels = alphabet.encode(span.word)
    cam_model = GradCAM(model, layer)
    raw, _, score = cam_model(video, lambda lp: word_score(lp, labels, span.start, span.end))
    top = float(raw.max())
    up = F.interpolate(
        torch.from_numpy(raw)[:, None], size=(crop, crop), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    up_top = float(up.max())
    cam = np.zeros((t, size, size), np.float32)  # one scale for the whole clip
    cam[:, off : off + crop, off : off + crop] = np.clip(up / up_top if up_top > 0 else up, 0, 1)
    return Saliency(
        span=span,
        cam=cam,
        frame_weight=raw.reshape(t, -1).sum(1) / max(top, 1e-12),
        score=score,
        layer=cam_model.layer,
        map_size=tuple(raw.shape[1:]),
    )
