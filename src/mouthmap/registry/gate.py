"""The accuracy / latency / size gate between a challenger and the current champion.

:func:`measure` scores one model package on the fixed split (WER, CER with the policy's
decoder; ONNX Runtime latency per clip; size of ``model.onnx``); :func:`decide` applies
the policy to two measurements. Both models are measured in the same run on the same
machine, so a slower machine moves both latencies, not the verdict.
"""

from __future__ import annotations

import html
import json
import statistics
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mouthmap.registry.policy import GatePolicy


@dataclass(frozen=True)
class Measurement:
    """One package on the gate's split."""

    wer: float
    cer: float
    clips: int
    latency_ms: float  # median ORT forward of one clip, batch 1
    size_mb: float  # model.onnx
    split: str = "test"
    decoder: str = "beam"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        keys = cls.__dataclass_fields__
        return cls(**{k: (float(v) if k in _FLOATS else v) for k, v in d.items() if k in keys})


_FLOATS = {"wer", "cer", "latency_ms", "size_mb"}


@dataclass
class Decision:
    passed: bool
    reasons: list[str]  # one line per rule, passed or failed
    challenger: Measurement
    champion: Measurement | None
    champion_version: str | None = None
    policy: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": self.reasons,
            "challenger": self.challenger.as_dict(),
            "champion": self.champion.as_dict() if self.champion else None,
            "champion_version": self.champion_version,
            "policy": self.policy,
        }

    def summary(self) -> str:
        head = "PASSED: promote" if self.passed else "REFUSED: the champion stays"
        return "\n".join([f"gate {head}", *(f"  {r}" for r in self.reasons)])


def measure(
    package_dir: str | Path,
    prepared_dir: str | Path,
    policy: GatePolicy,
    exclude: Collection[str] = (),
    repeats: int = 3,
) -> Measurement:
    """Score ``package_dir`` on ``policy.split`` of the prepared data and time its model."""
    from mouthmap.data import cache
    from mouthmap.data.prepare import read_manifest
    from mouthmap.evaluation.evaluate import evaluate_package
    from mouthmap.package import ModelPackage
    from mouthmap.runtime.transcriber import Transcriber

    pkg = ModelPackage.load(package_dir)
    prepared = Path(prepared_dir)
    results = evaluate_package(pkg.root, prepared, (policy.split,), (policy.decoder,), exclude)
    r = results[policy.split][policy.decoder]
    if not r["clips"]:
        raise ValueError(f"no usable {policy.split} clips in {prepared}: the gate cannot judge")

    df = read_manifest(prepared)
    rows = df[(df["status"] == "ok") & (df["split"] == policy.split) & ~df["id"].isin(exclude)]
    runner = Transcriber(pkg, decoder="greedy", threads=policy.latency_threads)
    times = []
    for rel in list(rows["roi_path"])[:16]:
        roi = cache.read_arrays(prepared / rel)["roi"]
        runner.log_probs(roi)  # warm-up: first-run allocations are not the model's speed
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.log_probs(roi)
            times.append(1000 * (time.perf_counter() - t0))
    return Measurement(
        wer=float(r["wer"]), cer=float(r["cer"]), clips=int(r["clips"]),
        latency_ms=round(statistics.median(times), 3),
        size_mb=round(pkg.model_path.stat().st_size / 1e6, 4),
        split=policy.split, decoder=policy.decoder,
    )  # fmt: skip


def decide(
    challenger: Measurement,
    champion: Measurement | None,
    policy: GatePolicy,
    champion_version: str | None = None,
) -> Decision:
    """Every rule of the policy, each with its numbers; passed only when all hold."""
    rules: list[tuple[bool, str]] = []
    c = challenger
    rules.append((c.size_mb <= policy.max_size_mb,
                  f"size {c.size_mb:.2f} MB <= budget {policy.max_size_mb:.2f} MB"))  # fmt: skip
    rules.append(
        (
            c.latency_ms <= policy.max_latency_ms,
            f"latency {c.latency_ms:.1f} ms <= budget {policy.max_latency_ms:.1f} ms",
        )
    )
    if champion is None:
        rules.append((policy.promote_first, "no champion yet: the first model inside the "
                      f"budgets {'becomes' if policy.promote_first else 'does not become'} "
                      "champion (promote_first)"))  # fmt: skip
    else:
        if (champion.split, champion.decoder) != (c.split, c.decoder):
            raise ValueError(
                f"cannot compare a {c.split}/{c.decoder} measurement with a "
                f"{champion.split}/{champion.decoder} one"
            )
        limit = champion.wer + policy.wer_tolerance
        rules.append((c.wer <= limit + 1e-12,
                      f"{c.split} WER {c.wer:.4f} <= champion {champion.wer:.4f} + tolerance "
                      f"{policy.wer_tolerance:.4f}"))  # fmt: skip
        ratio = c.latency_ms / max(champion.latency_ms, 1e-9)
        rules.append((ratio <= policy.max_latency_ratio,
                      f"latency {ratio:.2f}x the champion's ({champion.latency_ms:.1f} ms) "
                      f"<= {policy.max_latency_ratio:.2f}x"))  # fmt: skip
    reasons = [f"{'ok  ' if ok else 'FAIL'} {text}" for ok, text in rules]
    return Decision(
        passed=all(ok for ok, _ in rules), reasons=reasons, challenger=challenger,
        champion=champion, champion_version=champion_version, policy=policy.model_dump(),
    )  # fmt: skip


def write_report(decision: Decision, out_dir: str | Path, title: str = "MouthMap gate") -> Path:
    """``gate.json`` and a small self-contained ``gate.html`` (the Kubeflow HTML artifact)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.json").write_text(json.dumps(decision.as_dict(), indent=1) + "\n")
    cols = ("wer", "cer", "clips", "latency_ms", "size_mb")
    rows = [("challenger", decision.challenger)]
    if decision.champion:
        rows.append((f"champion v{decision.champion_version or '?'}", decision.champion))
    table = "".join(
        "<tr><th>" + html.escape(name) + "</th>"
        + "".join(f"<td>{getattr(m, k):.4g}</td>" for k in cols) + "</tr>"
        for name, m in rows
    )  # fmt: skip
    verdict = "passed: promote" if decision.passed else "refused: the champion stays"
    colour = "#1a7f37" if decision.passed else "#cf222e"
    items = "".join(f"<li><code>{html.escape(r)}</code></li>" for r in decision.reasons)
    page = (
        f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:right}</style>"
        f"<h1>{html.escape(title)}</h1><p style='color:{colour};font-weight:bold'>{verdict}</p>"
        f"<table><tr><th></th>{''.join(f'<th>{k}</th>' for k in cols)}</tr>{table}</table>"
        f"<ul>{items}</ul><p>split <b>{decision.challenger.split}</b>, decoder "
        f"<b>{decision.challenger.decoder}</b>; both measured in the same run.</p>"
    )
    path = out / "gate.html"
    path.write_text(page + "\n")
    return path
