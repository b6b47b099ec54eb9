"""``params.yaml``: the single source of parameters, validated into typed objects.

Relative paths in the file are resolved against the file's own directory, so the
CLI, DVC stages (which run in the repo root) and tests in a temporary copy agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_PARAMS = "params.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Section):
    source: str = "data/sample"
    raw_dir: str = "data/grid"
    prepared_dir: str = "data/prepared"
    splits: str = "data/splits/grid_s1.json"
    speakers: list[str] = Field(default_factory=lambda: ["s1"])


class FetchParams(_Section):
    record_url: str = "https://zenodo.org/api/records/3625687"


class PrepareParams(_Section):
    localiser: Literal["mediapipe", "haar"] = "mediapipe"
    roi_size: int = Field(96, ge=32, le=256)
    roi_scale: float = Field(1.8, gt=0.5, le=5.0)
    smooth_frames: int = Field(7, ge=1, le=51)
    audio_sample_rate: int = Field(16000, ge=8000)
    n_mels: int = Field(80, ge=8, le=256)
    workers: int = Field(2, ge=1, le=64)


class ValidateParams(_Section):
    min_frames: int = 74
    max_frames: int = 75
    fps: float = 25.0
    min_roi_found: float = Field(0.98, ge=0.0, le=1.0)
    max_bad_fraction: float = Field(0.0, ge=0.0, le=1.0)
    data_docs_dir: str = "reports/data_docs"
    metrics: str = "reports/data_quality.json"


class ModelParams(_Section):
    """A registered model name (``teacher``, ``student``) or a frontend/backend spec."""

    name: str = "student"
    spec: dict[str, Any] | None = None  # {"frontend": ..., "backend": ..., "*_args": {...}}


class TrainParams(_Section):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    warmup_epochs: float = Field(2.0, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    patience: int = Field(12, ge=1)  # epochs without a better validation WER
    # wall-time budget (a rented GPU): no epoch is started that would end past it; best.pt stays
    max_minutes: float | None = Field(None, gt=0)
    seed: int = 1234
    num_workers: int = Field(0, ge=0)
    amp: bool = True  # mixed precision, used only on CUDA
    crop: int = Field(88, ge=16)
    flip_p: float = Field(0.5, ge=0, le=1)
    time_mask_frames: int = Field(10, ge=0)
    time_masks: int = Field(1, ge=0)  # how many such masks per clip
    rotate_degrees: float = Field(0.0, ge=0, le=45)  # per-clip rotation in [-d, d]
    scale_jitter: float = Field(0.0, ge=0, lt=1)  # per-clip zoom in [1 - s, 1 + s]
    brightness: float = Field(0.0, ge=0, le=1)  # per-clip offset, a fraction of full range
    contrast: float = Field(0.0, ge=0, lt=1)  # per-clip gain in [1 - c, 1 + c]
    # chance a training clip is cut at a word boundary and finished by another clip's words
    splice_p: float = Field(0.0, ge=0, le=1)
    align_weight: float = Field(0.0, ge=0)  # per-frame word classification from the alignments
    # 0: off; else evaluate, select and save a moving average of the weights (e.g. 0.998)
    ema_decay: float = Field(0.0, ge=0, lt=1)
    limit_train: int | None = Field(None, ge=1)  # a data budget: the first N train clips
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning), not random
    out_dir: str = "runs/train"
    mlflow_uri: str | None = None  # default: a local SQLite store under mlruns/; "off": none
    experiment: str = "mouthmap"

    @field_validator("mlflow_uri", mode="before")
    @classmethod
    def _off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class DistillParams(_Section):
    """Knowledge distillation into ``model`` (the student), trained with ``train``'s settings.

    loss = CTC + kd_weight * T^2 KL(visual teacher || student at temperature T)
         + feature_weight * (1 - cos(projected student features, audio teacher features))
         + audio_kl_weight * T^2 KL(audio teacher || student at temperature T)
    A term whose teacher is null or whose weight is 0 is left out (and its teacher not loaded).
    """

    visual_teacher: str | None = None  # checkpoint of a visual teacher (e.g. runs/teacher/best.pt)
    audio_teacher: str | None = None  # checkpoint of an audio teacher (runs/audio_teacher/best.pt)
    temperature: float = Field(2.0, gt=0)
    kd_weight: float = Field(0.5, ge=0)  # response KD from the visual teacher
    feature_weight: float = Field(0.5, ge=0)  # cross-modal feature KD from the audio teacher
    audio_kl_weight: float = Field(0.0, ge=0)  # response KD from the audio teacher
    out_dir: str = "runs/distill"


class LMParams(_Section):
    order: int = Field(3, ge=1, le=6)
    dir: str = "runs/lm"
    # orders the decoder tuning tries (on val) for a package's LM; empty: keep the built one
    tune_orders: list[int] = Field(default_factory=lambda: [3, 4, 5])

    @field_validator("tune_orders")
    @classmethod
    def _orders(cls, v: list[int]) -> list[int]:
        if any(not 2 <= o <= 6 for o in v):
            raise ValueError(f"LM orders must be 2..6 (KenLM loads bigrams and up), got {v}")
        return v


class DecoderParams(_Section):
    """Beam search settings stored in the model package (pyctcdecode)."""

    alpha: float = 0.5  # LM weight
    beta: float = 1.0  # word insertion bonus
    beam_width: int = Field(16, ge=1)
    grammar: bool = False  # rescore within the LM's slot grammar (decode/grammar.py); tuned on val
    # with a model's word head (train.align_weight): its path score's weight in that rescoring
    word_weight: float = Field(0.0, ge=0)


class PackageParams(_Section):
    dir: str = "runs/package"  # where `mouthmap export` writes; releases live in models/


class QuantizeParams(_Section):
    """INT8 for the edge (``mouthmap quantize``): ORT static PTQ, PT2E QAT, ORT dynamic."""

    method: Literal["all", "ptq", "qat", "dynamic"] = "all"
    out_dir: str = "runs/package_int8"  # the quantized copy of package.dir
    calibration_clips: int = Field(64, ge=1)  # training clips for the PTQ activation ranges
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    activation_type: Literal["uint8", "int8"] = "uint8"
    reduce_range: bool = False  # 7-bit weights; measured worse on the student here
    qat_epochs: int = Field(1, ge=1)
    qat_lr: float = Field(1e-4, gt=0)
    qat_batch_size: int = Field(8, ge=1)
    qat_limit_train: int | None = Field(None, ge=1)  # clips per QAT epoch (a CPU time budget)
    select_split: Literal["val", "train"] = "val"  # never test: it reports, it does not choose


class EvaluateParams(_Section):
    out_dir: str = "reports/eval"


class Params(_Section):
    data: DataParams = Field(default_factory=DataParams)
    fetch: FetchParams = Field(default_factory=FetchParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    validate_: ValidateParams = Field(default_factory=ValidateParams, alias="validate")
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    distill: DistillParams = Field(default_factory=DistillParams)
    lm: LMParams = Field(default_factory=LMParams)
    decoder: DecoderParams = Field(default_factory=DecoderParams)
    package: PackageParams = Field(default_factory=PackageParams)
    quantize: QuantizeParams = Field(default_factory=QuantizeParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    root: Path = Field(default=Path("."), exclude=True)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def path(self, value: str | Path) -> Path:
        """A path from the params file, resolved against the file's directory."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p)


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or holds an invalid value."""


def load_params(
    path: str | Path = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Params:
    """Load and validate params.yaml; ``overrides`` uses dotted keys (``prepare.workers``)."""
    p = Path(path)
    if p.is_file():
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{p}: not valid YAML: {e}") from None
        root = p.resolve().parent
    elif Path(path) == Path(DEFAULT_PARAMS):
        raw, root = {}, Path.cwd()  # outside a checkout: embedded defaults
    else:
        raise ParamsError(f"parameter file {p} not found")
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        params = Params.model_validate(raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ParamsError(f"{p}: invalid parameters:\n" + "\n".join(lines)) from None
    params.root = root
    return params
