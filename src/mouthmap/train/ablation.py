"""Knowledge-distillation ablation: does each term help the student?

Four trainings of ``params.model`` with the same seed, data, data budget and epochs, differing
only in the distillation terms (weights and teachers from ``params.distill``):

==================  ==========================================================
``student``         CTC alone
``response_kd``     + response KD from the visual teacher
``crossmodal_kd``   + cross-modal KD from the audio teacher (and its KL term)
``both_kd``         + both
==================  ==========================================================

Each is exported to a model package and scored greedy and beam+LM with the same code as
``mouthmap export`` / ``mouthmap evaluate``. Results go to ``results.json`` and a markdown table
``results.md`` in the output directory, and to MLflow: one parent run ``kd-ablation`` with the
table as an artifact and one metric per configuration, split and decoder; the four training
runs are nested under it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mouthmap.config import Params

CONFIGS: dict[str, tuple[str, dict[str, float]]] = {
    "student": ("student alone (CTC)", {"kd_weight": 0, "feature_weight": 0, "audio_kl_weight": 0}),
    "response_kd": ("+ response KD", {"feature_weight": 0, "audio_kl_weight": 0}),
    "crossmodal_kd": ("+ cross-modal KD", {"kd_weight": 0}),
    "both_kd": ("+ both", {}),
}


def config_params(params: Params, name: str, out: Path, limit_train: int | None) -> Params:
    """``params`` for one configuration: its distillation weights, its own output directory."""
    if name not in CONFIGS:
        raise ValueError(f"unknown ablation config {name!r}; known: {', '.join(CONFIGS)}")
    p = params.model_copy(deep=True)
    p.root = params.root
    p.distill = p.distill.model_copy(update={**CONFIGS[name][1], "out_dir": str(out / "train")})
    if limit_train is not None:
        p.train.limit_train = limit_train
    d = p.distill
    if d.kd_weight > 0 and not d.visual_teacher:
        raise ValueError(f"ablation {name!r} needs distill.visual_teacher (kd_weight > 0)")
    if (d.feature_weight > 0 or d.audio_kl_weight > 0) and not d.audio_teacher:
        raise ValueError(f"ablation {name!r} needs distill.audio_teacher")
    return p


def markdown_table(rows: list[dict[str, Any]], splits: Sequence[str], decoders: Sequence[str]):
    cols = [f"{s} {d}" for s in splits for d in decoders]
    lines = [
        "| config | "
        + " | ".join(f"{c} WER" for c in cols)
        + " | "
        + " | ".join(f"{c} CER" for c in cols)
        + " | train s |",
        "|---|" + "---:|" * (2 * len(cols) + 1),
    ]
    for r in rows:
        cells = [r["label"]]
        for metric in ("wer", "cer"):
            for s in splits:
                for d in decoders:
                    v = r.get(metric, {}).get(s, {}).get(d)
                    cells.append("n/a" if v is None else f"{100 * v:.2f}%")
        cells.append(f"{r['train_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(results: dict[str, Any], out: Path, splits, decoders) -> tuple[Path, Path]:
    json_path, md_path = out / "results.json", out / "results.md"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(markdown_table(results["rows"], splits, decoders))
    return json_path, md_path


def run_ablation(
    params: Params,
    configs: Sequence[str] = tuple(CONFIGS),
    limit_train: int | None = None,
    out_dir: str | Path = "runs/kd_ablation",
    splits: Sequence[str] = ("val", "test"),
    decoders: Sequence[str] = ("greedy", "beam"),
    progress: bool = False,
) -> dict[str, Any]:
    """Train, export and evaluate each configuration; returns (and writes) the results."""
    from mouthmap import stages
    from mouthmap.evaluation.evaluate import evaluate_package
    from mouthmap.train import tracking
    from mouthmap.train.distill import distill

    out = params.path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plans = {name: config_params(params, name, out / name, limit_train) for name in configs}
    lm_dir = stages.build_language_model(params, out / "lm").arpa.parent  # one LM for all
    prepared = params.path(params.data.prepared_dir)
    rows: list[dict[str, Any]] = []
    tp = params.train
    results = {
        "model": params.model.name, "seed": tp.seed, "epochs": tp.epochs,
        "limit_train": limit_train if limit_train is not None else tp.limit_train,
        "temperature": params.distill.temperature, "splits": list(splits),
        "decoders": list(decoders), "rows": rows,
    }  # fmt: skip
    for name, p in plans.items():
        t0 = time.perf_counter()
        result = distill(p, progress=progress)
        seconds = time.perf_counter() - t0
        pkg = stages.export_model(p, result.best_checkpoint, out / name / "package", lm_dir)
        ev = evaluate_package(
            pkg.root, prepared, splits, decoders, exclude=stages.quarantined_ids(p)
        )
        rows.append({
            "config": name, "label": CONFIGS[name][0], "distill": p.distill.model_dump(),
            "train_run_id": result.run_id, "epochs": result.epochs_run, "train_seconds": seconds,
            "best_val_wer_greedy": result.best_val_wer, "package": str(pkg.root),
            "wer": {s: {d: ev[s][d]["wer"] for d in decoders} for s in splits},
            "cer": {s: {d: ev[s][d]["cer"] for d in decoders} for s in splits},
        })  # fmt: skip
        _write(results, out, splits, decoders)  # after each arm: a long run loses nothing
    json_path, md_path = _write(results, out, splits, decoders)
    with tracking.run(tp.mlflow_uri, params.root, tp.experiment, "kd-ablation") as parent:
        if parent is None:  # tracking off: results.json/md are the record
            return results
        import mlflow

        mlflow.log_params({k: v for k, v in results.items() if k != "rows"})
        for r in rows:
            for s in splits:
                for d in decoders:
                    if r["wer"][s][d] is not None:
                        mlflow.log_metric(f"{r['config']}.{s}_{d}_wer", r["wer"][s][d])
            if r["train_run_id"]:  # nest the training run under this one in the MLflow UI
                mlflow.MlflowClient().set_tag(
                    r["train_run_id"], "mlflow.parentRunId", parent.info.run_id
                )
        mlflow.log_artifact(str(json_path))
        mlflow.log_artifact(str(md_path))
        results["run_id"] = parent.info.run_id
    return results
