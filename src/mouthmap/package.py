"""Model packages: the directory that is released, registered and served.

``model.onnx`` (the deployable; INT8 where available), ``model_fp32.onnx``,
``lm/`` (ARPA + unigrams), ``mouthmap.json`` (alphabet, input spec,
normalisation, ROI preparation, decoder settings, metrics, lineage); a release also
keeps ``checkpoint.pt``, its slim training checkpoint, so it can be fine-tuned, quantized
with QAT or used as a teacher later (the ONNX files have BatchNorm folded in).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mouthmap import alphabet

FORMAT = "mouthmap-package/1"
META = "mouthmap.json"
CHECKPOINT = "checkpoint.pt"
DEFAULT_PACKAGE = Path(__file__).resolve().parents[2] / "models" / "mouthmap-student"


class PackageError(ValueError):
    """A model package is missing, incomplete or made for another alphabet."""


@dataclass(frozen=True)
class ModelPackage:
    root: Path
    meta: dict[str, Any]

    @property
    def model_path(self) -> Path:
        return self.root / self.meta["files"]["model"]

    @property
    def fp32_path(self) -> Path:
        return self.root / self.meta["files"]["model_fp32"]

    @property
    def lm_dir(self) -> Path | None:
        lm = self.meta["files"].get("lm")
        return self.root / lm if lm else None

    @property
    def checkpoint_path(self) -> Path | None:
        """The slim training checkpoint a release keeps (None in a plain export)."""
        ckpt = self.meta["files"].get("checkpoint")
        return self.root / ckpt if ckpt and (self.root / ckpt).is_file() else None

    @property
    def mean(self) -> float:
        return float(self.meta["normalisation"]["mean"])

    @property
    def std(self) -> float:
        return float(self.meta["normalisation"]["std"])

    @classmethod
    def load(cls, root: str | Path) -> ModelPackage:
        root = Path(root)
        meta_path = root / META
        if not meta_path.is_file():
            raise PackageError(f"{root} is not a MouthMap model package (no {META})")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise PackageError(f"{meta_path}: not valid JSON ({e})") from None
        if meta.get("format") != FORMAT:
            raise PackageError(f"{meta_path}: unknown package format {meta.get('format')!r}")
        if meta.get("alphabet", {}).get("symbols") != list(alphabet.SYMBOLS):
            raise PackageError(f"{meta_path}: the package's alphabet differs from this MouthMap's")
        pkg = cls(root, meta)
        for f in (pkg.model_path, pkg.fp32_path):
            if not f.is_file():
                raise PackageError(f"{root}: {f.name} is missing")
        return pkg


def git_commit(repo: Path | None = None) -> str | None:
    """The commit of the code that made a model (the checkout MouthMap runs from; in an
    image, which holds no .git, the commit it was built from: ``MOUTHMAP_GIT_COMMIT``)."""
    if repo is None and os.environ.get("MOUTHMAP_GIT_COMMIT"):
        return os.environ["MOUTHMAP_GIT_COMMIT"]
    repo = repo or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def write_package(
    out_dir: str | Path,
    fp32_onnx: Path,
    meta: dict[str, Any],
    lm_dir: Path | None = None,
    deploy_onnx: Path | None = None,
) -> ModelPackage:
    """Assemble a package; ``meta`` supplies name, input, normalisation, metrics, lineage."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(fp32_onnx, tmp / "model_fp32.onnx")
    shutil.copy(deploy_onnx or fp32_onnx, tmp / "model.onnx")
    files = {"model": "model.onnx", "model_fp32": "model_fp32.onnx", "lm": None}
    if lm_dir is not None:
        shutil.copytree(lm_dir, tmp / "lm")
        files["lm"] = "lm"
    full = {"format": FORMAT, "alphabet": alphabet.as_dict(), **meta, "files": files}
    (tmp / META).write_text(json.dumps(full, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)  # replace a previous package whole
    tmp.rename(out)
    return ModelPackage.load(out)


def keep_checkpoint(pkg: ModelPackage, checkpoint_path: str | Path) -> ModelPackage:
    """Store a slim copy of the checkpoint behind the package as ``checkpoint.pt``."""
    from mouthmap.train import checkpoint

    checkpoint.slim(checkpoint_path, pkg.root / CHECKPOINT)
    return update_meta(pkg, files={**pkg.meta["files"], "checkpoint": CHECKPOINT})


def update_meta(pkg: ModelPackage, **fields: Any) -> ModelPackage:
    """Set top-level fields of ``mouthmap.json`` (e.g. tuned decoder settings), atomically."""
    from mouthmap.data.cache import atomic_write_bytes

    meta = {**pkg.meta, **fields}
    atomic_write_bytes(pkg.root / META, (json.dumps(meta, indent=1) + "\n").encode())
    return ModelPackage.load(pkg.root)
