"""Compare a window of requests with the training reference (Evidently), and say so.

Each feature is tested on its own (two-sample Kolmogorov-Smirnov by default: no assumption
about the shape of the distributions, and the right test for the few dozen to few hundred
requests of a window); the window has drifted when the share of drifted features reaches
``drift_share`` (Evidently's ``DriftedColumnsCount``). The per-feature p-value threshold is
Bonferroni-corrected by default: with a dozen features tested at 0.05 each, one of them would
"drift" in almost half of all clean windows. The defaults were chosen by measuring false
alarms on clean held-out windows and detection on shifted ones (README, Drift monitoring).

Results leave three ways: the Evidently HTML report, Prometheus metrics (a text file for the
node-exporter textfile collector, or a push to a Pushgateway), and an MLflow run.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mouthmap.monitor.features import ALL_FEATURES, CAPTION

DEFAULT_ALPHA = 0.05  # family-wise false-alarm rate per feature family (before Bonferroni)
DEFAULT_DRIFT_SHARE = 0.2  # share of tested features that must drift for the window to drift
DEFAULT_MIN_REQUESTS = 20  # below this a window says too little to call drift either way
METRIC_PREFIX = "mouthmap_drift"


class DriftInputError(ValueError):
    """A reference or window the check cannot use (empty, too small, no common features)."""


@dataclass
class ColumnDrift:
    p_value: float
    drifted: bool
    method: str
    reference_median: float
    current_median: float


@dataclass
class DriftResult:
    drifted: bool
    share: float  # share of tested features that drifted (DriftedColumnsCount.share)
    count: int  # number of drifted features
    drift_share: float  # the share that makes a window drift
    threshold: float  # per-feature p-value threshold
    n_reference: int
    n_current: int
    columns: dict[str, ColumnDrift] = field(default_factory=dict)
    report_html: str | None = None
    checked_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )

    @property
    def drifted_columns(self) -> list[str]:
        return [c for c, d in self.columns.items() if d.drifted]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["drifted_columns"] = self.drifted_columns
        return out

    def summary(self) -> str:
        verdict = "DRIFT" if self.drifted else "no drift"
        lines = [
            f"{verdict}: {self.count} of {len(self.columns)} features drifted "
            f"(share {self.share:.2f}, drift at >= {self.drift_share:.2f}; per-feature "
            f"p < {self.threshold:.2g}); {self.n_current} requests vs {self.n_reference} "
            "reference clips"
        ]
        for name, c in sorted(self.columns.items(), key=lambda kv: kv[1].p_value):
            mark = "*" if c.drifted else " "
            lines.append(
                f" {mark} {name:<14} p={c.p_value:<10.3g} median {c.reference_median:>9.4g} -> "
                f"{c.current_median:<9.4g} {CAPTION.get(name, '')}"
            )
        return "\n".join(lines)


def read_table(uri: str | Path) -> pd.DataFrame:
    """A reference table: local CSV, or ``s3://bucket/key.csv``."""
    src = str(uri)
    if src.startswith("s3://"):
        from mouthmap.monitor.sink import _split_s3, s3_client

        bucket, key = _split_s3(src)
        body = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return pd.read_csv(io.BytesIO(body))
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: reference not found; build it with `mouthmap drift reference`"
        )
    return pd.read_csv(path)


def feature_columns(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    """Features both tables have (in the canonical order), minus those constant in both
    (a clip length that never varies cannot drift, and its test would be 0/0)."""
    cols = [c for c in ALL_FEATURES if c in reference.columns and c in current.columns]
    numeric = pd.api.types.is_numeric_dtype
    extra = [
        c
        for c in reference.columns
        if c in current.columns and c not in cols and c not in ("id", "split", "ts")
        and numeric(reference[c]) and numeric(current[c])
    ]  # fmt: skip
    keep = []
    for c in cols + extra:
        both = pd.concat([reference[c], current[c]]).dropna()
        if both.nunique() > 1:
            keep.append(c)
    return keep


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: list[str] | None = None,
    exclude: list[str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    threshold: float | None = None,
    drift_share: float = DEFAULT_DRIFT_SHARE,
    method: str = "ks",
    min_requests: int = DEFAULT_MIN_REQUESTS,
    html: str | Path | None = None,
) -> DriftResult:
    """Evidently's data-drift preset over the features; ``threshold`` defaults to
    ``alpha / number of features`` (Bonferroni). ``exclude`` leaves features out, e.g.
    ``clip_seconds`` when live clips are streams of any length and the reference is GRID's 3 s."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its web-UI dependency warns about itself on import
        from evidently import DataDefinition, Dataset, Report
        from evidently.metrics import DriftedColumnsCount, ValueDrift
        from evidently.presets import DataDriftPreset

    if len(reference) < 2:
        raise DriftInputError(f"the reference has {len(reference)} rows; it needs at least 2")
    if len(current) < min_requests:
        raise DriftInputError(
            f"the window has {len(current)} requests, fewer than the {min_requests} needed "
            "(widen --since or lower --min-requests)"
        )
    cols = [c for c in features or feature_columns(reference, current) if c not in (exclude or [])]
    missing = [c for c in cols if c not in reference.columns or c not in current.columns]
    if missing:
        raise DriftInputError(
            f"features {missing} are missing (reference has {list(reference.columns)}, "
            f"window has {list(current.columns)})"
        )
    if not cols:
        raise DriftInputError(
            "no feature to compare: the reference and the window share no feature that varies "
            f"(reference: {list(reference.columns)}; window: {list(current.columns)})"
        )
    thr = threshold if threshold is not None else alpha / len(cols)
    definition = DataDefinition(numerical_columns=cols)
    ref_ds = Dataset.from_pandas(reference[cols].astype(float), data_definition=definition)
    cur_ds = Dataset.from_pandas(current[cols].astype(float), data_definition=definition)
    if html is not None:  # the preset: the same metrics plus the report's drift table widgets
        items = [DataDriftPreset(columns=cols, method=method, threshold=thr,
                                 drift_share=drift_share)]  # fmt: skip
    else:  # the same two metrics without rendering (half the time; used to evaluate the monitor)
        items = [DriftedColumnsCount(columns=cols, method=method, threshold=thr,
                                     drift_share=drift_share)]  # fmt: skip
        items += [ValueDrift(column=c, method=method, threshold=thr) for c in cols]
    report = Report(items)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # correlation widgets divide by zero on flat columns
        snapshot = report.run(current_data=cur_ds, reference_data=ref_ds)
    metrics = snapshot.dict()["metrics"]
    count_metric = next(m for m in metrics if m["config"]["type"].endswith("DriftedColumnsCount"))
    columns: dict[str, ColumnDrift] = {}
    for m in metrics:
        cfg = m["config"]
        if not cfg["type"].endswith("ValueDrift"):
            continue
        name, p = cfg["column"], float(m["value"])
        columns[name] = ColumnDrift(
            p_value=p, drifted=p < thr, method=cfg.get("method", method),
            reference_median=float(reference[name].median()),
            current_median=float(current[name].median()),
        )  # fmt: skip
    share = float(count_metric["value"]["share"])
    result = DriftResult(
        drifted=share >= drift_share, share=share, count=int(count_metric["value"]["count"]),
        drift_share=drift_share, threshold=thr, n_reference=len(reference),
        n_current=len(current), columns=columns,
    )  # fmt: skip
    if html is not None:
        html = Path(html)
        html.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(html))
        result.report_html = str(html)
    return result


# --- exposing the result --------------------------------------------------------------------


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def prometheus_text(result: DriftResult, labels: dict[str, str] | None = None) -> str:
    """The result in the Prometheus text exposition format."""
    base = dict(labels or {})
    lb = _labels(base)
    p = METRIC_PREFIX
    out = [
        f"# HELP {p}_detected 1 when the last window drifted from the training reference.",
        f"# TYPE {p}_detected gauge",
        f"{p}_detected{lb} {int(result.drifted)}",
        f"# HELP {p}_share Share of monitored features that drifted in the last window.",
        f"# TYPE {p}_share gauge",
        f"{p}_share{lb} {result.share:.6g}",
        f"# HELP {p}_window_requests Requests in the last window checked.",
        f"# TYPE {p}_window_requests gauge",
        f"{p}_window_requests{lb} {result.n_current}",
        f"# HELP {p}_last_check_timestamp_seconds When the last check ran (Unix time).",
        f"# TYPE {p}_last_check_timestamp_seconds gauge",
        f"{p}_last_check_timestamp_seconds{lb} "
        f"{dt.datetime.fromisoformat(result.checked_at).timestamp():.0f}",
        f"# HELP {p}_feature_p_value Drift test p-value per feature (low: drifted).",
        f"# TYPE {p}_feature_p_value gauge",
    ]
    for name, c in result.columns.items():
        out.append(f"{p}_feature_p_value{_labels({**base, 'feature': name})} {c.p_value:.6g}")
    out.append(f"# HELP {p}_feature_drifted 1 when the feature drifted in the last window.")
    out.append(f"# TYPE {p}_feature_drifted gauge")
    for name, c in result.columns.items():
        out.append(f"{p}_feature_drifted{_labels({**base, 'feature': name})} {int(c.drifted)}")
    return "\n".join(out) + "\n"


def write_prometheus(result: DriftResult, path: str | Path, labels=None) -> Path:
    """Atomically write the metrics file (the textfile collector must never read half)."""
    from mouthmap.data.cache import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, prometheus_text(result, labels).encode())
    return path


def push_metrics(result: DriftResult, gateway: str, job: str = "mouthmap-drift", labels=None):
    """PUT the metrics to a Prometheus Pushgateway (``http://host:9091``)."""
    import requests

    url = f"{gateway.rstrip('/')}/metrics/job/{job}"
    resp = requests.put(url, data=prometheus_text(result, labels).encode(), timeout=10)
    if resp.status_code >= 300:
        raise RuntimeError(f"pushgateway {url} answered {resp.status_code}: {resp.text[:200]}")


def log_to_mlflow(
    result: DriftResult, tracking_uri: str | None = None, experiment: str = "mouthmap-drift"
) -> str:
    """One MLflow run per check: the share and per-feature p-values as metrics, the HTML
    report and the JSON result as artifacts. Returns the run id."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"drift-{result.checked_at}") as run:
        mlflow.log_params(
            {"drift_share": result.drift_share, "threshold": result.threshold,
             "n_reference": result.n_reference, "n_current": result.n_current}
        )  # fmt: skip
        metrics = {"drift_detected": float(result.drifted), "drift_share_observed": result.share}
        metrics.update({f"p_{k}": max(v.p_value, 1e-300) for k, v in result.columns.items()})
        mlflow.log_metrics(metrics)
        mlflow.set_tag("drift", "yes" if result.drifted else "no")
        mlflow.log_text(json.dumps(result.as_dict(), indent=1), "drift_result.json")
        if result.report_html and os.path.isfile(result.report_html):
            mlflow.log_artifact(result.report_html)
        return run.info.run_id
