"""Knowledge distillation into the small visual student, through the one trainer loop.

The objective adds to the student's CTC loss (all weights from ``params.distill``):

* **response KD** (Hinton et al. 2015): ``T^2 * KL(teacher || student)`` between the per-frame
  class distributions of a frozen visual teacher and the student, both softened by the
  temperature ``T``, averaged over valid frames (padding is ignored). Both read the same video,
  so frames correspond one to one.
* **cross-modal KD**: a trainable linear projection maps the student's encoder features onto
  the frozen audio teacher's encoder features, and the loss is ``1 - cos`` between the two per
  valid frame. Cosine rather than L2: the audio features' scale is whatever its training left
  (LayerNorm output of a Conformer, or a user's encoder), and the direction carries the
  phonetic content; a cosine target cannot be met by inflating or shrinking the projection.
  The audio teacher runs at 25 frames/s (4 mel frames per video frame, see
  :mod:`mouthmap.models.audio`), so frame ``t`` of both is the same 40 ms; a clip whose audio
  outlasts its video is compared on the common frames only.
* optionally **audio response KD**: the same KL against the audio teacher's outputs.

Teachers are loaded from checkpoints, frozen and kept in eval mode; a checkpoint made for
another alphabet or frame rate, or of the wrong modality, is refused with its file named. A
visual teacher may also be a model package (a directory with ``mouthmap.json``, e.g. the released
``models/mouthmap-student``): its FP32 ONNX runs in ONNX Runtime, so a released model can teach
(born-again self-distillation) without its training checkpoint. A teacher whose input
normalisation differs from the data's gets its input re-normalised. The
projection is part of the training state (checkpoint key ``objective``, restored on
``--resume``) but not of the model: the exported student is the plain student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mouthmap.config import Params
from mouthmap.data import dataset as ds
from mouthmap.models.base import time_mask
from mouthmap.train import checkpoint
from mouthmap.train.objective import CTCObjective, modality_of, model_inputs

TERMS = ("kd", "feature", "audio_kl")  # the distillation parts, besides "ctc"


def _common(
    a: torch.Tensor, b: torch.Tensor, la: torch.Tensor, lb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both sequences cut to their common frames, and the valid mask (B, T) of those."""
    t = min(a.shape[1], b.shape[1])
    lengths = torch.minimum(la.to(a.device), lb.to(a.device)).clamp(max=t)
    return a[:, :t], b[:, :t], time_mask(lengths, t)


def _masked_mean(per_frame: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp(min=1)


def response_kd(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    student_lengths: torch.Tensor,
    teacher_lengths: torch.Tensor | None = None,
    temperature: float = 2.0,
) -> torch.Tensor:
    """``T^2 * mean over valid frames of KL(teacher_T || student_T)``, both (B, T, C) log-probs.

    Softening log-probs is the same as softening logits (``log_softmax(log_p / T)`` equals
    ``softmax(logits / T)`` in log space), so models need to expose only their log-probs."""
    if teacher_lengths is None:
        teacher_lengths = student_lengths
    s, t, mask = _common(student_log_probs, teacher_log_probs, student_lengths, teacher_lengths)
    log_s = F.log_softmax(s.float() / temperature, -1)
    log_t = F.log_softmax(t.float() / temperature, -1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)  # (B, T)
    return temperature**2 * _masked_mean(kl, mask)


def feature_kd(
    student_features: torch.Tensor,
    teacher_features: torch.Tensor,
    student_lengths: torch.Tensor,
    teacher_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over valid frames of ``1 - cos(student, teacher)``; (B, T, D) each, same D (the
    student's already projected), frames at 25/s."""
    if teacher_lengths is None:
        teacher_lengths = student_lengths
    s, t, mask = _common(student_features, teacher_features, student_lengths, teacher_lengths)
    cos = F.cosine_similarity(s.float(), t.float(), dim=-1, eps=1e-6)
    return _masked_mean(1 - cos, mask)


class PackageTeacher(nn.Module):
    """A model package as a frozen visual teacher: ``video, lengths -> log_probs`` through its
    FP32 ONNX in ONNX Runtime (gradients never flow into a teacher, so a graph is enough)."""

    modality = "video"

    def __init__(self, root: str | Path, role: str = "teacher"):
        from mouthmap.package import ModelPackage, PackageError
        from mouthmap.runtime.runner import OnnxRunner

        super().__init__()
        try:
            self.package = ModelPackage.load(root)
        except PackageError as e:
            raise checkpoint.CheckpointError(f"{root}: the {role} is refused: {e}") from None
        self.frame_rate = int(self.package.meta.get("input", {}).get("fps", checkpoint.FRAME_RATE))
        self.input_normalisation = (self.package.mean, self.package.std)
        # no spin-waiting: idle ORT threads would take the cores from the student's training step
        self.runner = OnnxRunner(self.package.fp32_path, spin=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.runner.run(x.detach().float().cpu().numpy(), lengths.cpu().numpy())
        return torch.from_numpy(out).to(x.device)


def load_teacher(
    path: str | Path, modality: str, device: torch.device | str = "cpu", role: str = "teacher"
) -> nn.Module:
    """A frozen teacher in eval mode from a checkpoint (or, for video, a model package
    directory); refused (``CheckpointError`` naming the file) when made for another alphabet or
    frame rate, or when it reads another modality."""
    from mouthmap.train.trainer import load_for_inference

    if Path(path).is_dir():
        model: nn.Module = PackageTeacher(path, role)
        state: dict[str, Any] = {"model_name": f"package {model.package.meta.get('name')}"}
    else:
        model, state = load_for_inference(path)  # checks format, alphabet and frame rate
        norm = state.get("normalisation")
        if norm:
            model.input_normalisation = (float(norm["mean"]), float(norm["std"]))
    if modality_of(model) != modality:
        raise checkpoint.CheckpointError(
            f"{path}: the {role} must read {modality}, but {state.get('model_name')!r} "
            f"reads {modality_of(model)}"
        )
    rate = getattr(model, "frame_rate", checkpoint.FRAME_RATE)
    if rate != checkpoint.FRAME_RATE:
        raise checkpoint.CheckpointError(
            f"{path}: the {role} outputs {rate} frames/s, not {checkpoint.FRAME_RATE}"
        )
    return model.to(device).eval().requires_grad_(False)


def renormalise(
    x: torch.Tensor, data: tuple[float, float] | None, teacher: tuple[float, float] | None
) -> torch.Tensor:
    """Video normalised with the data's (mean, std) re-expressed in the teacher's."""
    if data is None or teacher is None:
        return x
    if abs(data[0] - teacher[0]) < 1e-6 and abs(data[1] - teacher[1]) < 1e-6:
        return x
    return (x * data[1] + data[0] - teacher[0]) / teacher[1]


class DistillationObjective(CTCObjective):
    """CTC plus response KD (visual teacher), cross-modal feature KD and optionally response KD
    from the audio teacher; the parts are returned separately for logging."""

    name = "distill"

    def __init__(
        self,
        visual_teacher: str | Path | None = None,
        audio_teacher: str | Path | None = None,
        temperature: float = 2.0,
        kd_weight: float = 0.5,
        feature_weight: float = 0.5,
        audio_kl_weight: float = 0.0,
        align_weight: float = 0.0,
    ):
        super().__init__(align_weight)
        self.visual_path = Path(visual_teacher) if visual_teacher else None
        self.audio_path = Path(audio_teacher) if audio_teacher else None
        self.temperature = temperature
        self.weights = {"kd": kd_weight, "feature": feature_weight, "audio_kl": audio_kl_weight}
        self.visual: nn.Module | None = None
        self.audio: nn.Module | None = None
        self.projection: nn.Linear | None = None
        self.data_normalisation: tuple[float, float] | None = None

    @classmethod
    def from_params(cls, params: Params) -> DistillationObjective:
        d = params.distill
        return cls(
            params.path(d.visual_teacher) if d.visual_teacher else None,
            params.path(d.audio_teacher) if d.audio_teacher else None,
            d.temperature, d.kd_weight, d.feature_weight, d.audio_kl_weight,
            params.train.align_weight,
        )  # fmt: skip

    @property
    def uses_visual(self) -> bool:
        return self.visual_path is not None and self.weights["kd"] > 0

    @property
    def uses_audio(self) -> bool:
        return self.audio_path is not None and (
            self.weights["feature"] > 0 or self.weights["audio_kl"] > 0
        )

    @property
    def needs_audio(self) -> bool:  # type: ignore[override]
        return self.uses_audio

    def setup(self, model: nn.Module, device: torch.device) -> None:
        if modality_of(model) != "video":
            raise ValueError("distillation trains a visual student; model reads audio")
        # building teachers and the projection must not move the seeded random stream: every
        # configuration of an ablation then sees the same data order and augmentations
        super().setup(model, device)
        with torch.random.fork_rng(devices=[]):
            self._setup(model, device)

    def _setup(self, model: nn.Module, device: torch.device) -> None:
        if self.uses_visual:
            self.visual = load_teacher(self.visual_path, "video", device, "visual teacher")
        if self.uses_audio:
            self.audio = load_teacher(self.audio_path, "audio", device, "audio teacher")
            if self.weights["feature"] > 0:
                self.projection = nn.Linear(
                    model.classifier.in_features, self.audio.classifier.in_features
                ).to(device)

    def bind_normalisation(self, norm: ds.Normalisation) -> None:
        self.data_normalisation = (norm.mean, norm.std)

    def parameters(self) -> list[nn.Parameter]:
        own = list(self.projection.parameters()) if self.projection is not None else []
        return super().parameters() + own

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.projection is not None:
            state["projection"] = self.projection.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.projection is not None and "projection" in state:
            self.projection.load_state_dict(state["projection"])

    def log_params(self) -> dict[str, Any]:
        return {
            "objective": self.name,
            "align_weight": self.align_weight,
            "distill": {
                "visual_teacher": str(self.visual_path) if self.uses_visual else None,
                "audio_teacher": str(self.audio_path) if self.uses_audio else None,
                "temperature": self.temperature,
                **{f"{k}_weight": w for k, w in self.weights.items()},
            },
        }

    def __call__(
        self, net: nn.Module, batch: ds.Batch, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts, (log_probs, feats, out_lengths) = self._ctc_and_alignment(net, batch, device)
        valid = out_lengths.to(device)
        T = self.temperature
        if self.visual is not None:
            with torch.no_grad():
                tx, tn, t_out = model_inputs(self.visual, batch, device)
                tx = renormalise(
                    tx, self.data_normalisation, getattr(self.visual, "input_normalisation", None)
                )
                t_log_probs = self.visual(tx, tn)
            parts["kd"] = response_kd(log_probs, t_log_probs, valid, t_out.to(device), T)
        if self.audio is not None:
            with torch.no_grad():
                ax, an, a_out = model_inputs(self.audio, batch, device)
                a_log_probs, a_feats = self.audio(ax, an, return_features=True)
            a_out = a_out.to(device)
            if self.projection is not None:
                parts["feature"] = feature_kd(self.projection(feats), a_feats, valid, a_out)
            if self.weights["audio_kl"] > 0:
                parts["audio_kl"] = response_kd(log_probs, a_log_probs, valid, a_out, T)
        for k in TERMS:
            if k in parts:
                loss = loss + self.weights[k] * parts[k]
        return loss, parts


def distill(params: Params, resume: bool = False, progress: bool = True):
    """Train ``params.model`` with the distillation objective into ``distill.out_dir``; the
    checkpoints are like ``mouthmap train``'s (``best.pt``/``last.pt``)."""
    from mouthmap.train.trainer import train

    return train(
        params, resume=resume, progress=progress,
        objective=DistillationObjective.from_params(params),
        out_dir=params.path(params.distill.out_dir), run_name=f"distill-{params.model.name}",
    )  # fmt: skip
