"""What the Registry, Benchmarks and Drift pages show, read from where the other commands
write it: the MLflow registry (`mouthmap registry`), `mouthmap bench` outputs
(``reports/bench/bench.json|md|png``) and `mouthmap drift check` HTML reports
(``reports/drift/*.html``). Each loader returns ``None`` or an ``unavailable`` reason
instead of raising, so a page can say what is missing and how to make it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BenchView",
    "DriftView",
    "RegistryView",
    "bench_rows",
    "load_bench",
    "load_drift",
    "load_registry",
]


# --- benchmarks ------------------------------------------------------------------------------


@dataclass
class BenchView:
    report: dict[str, Any]
    json_path: Path
    markdown: str | None
    plot: Path | None
    modified: float


def load_bench(reports: Path) -> BenchView | None:
    """``reports/bench/bench.json`` (+ ``.md``, ``.png`` beside it), or None when absent.
    Raises ValueError when the JSON is unreadable (a page shows that as an error)."""
    path = reports / "bench" / "bench.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or "rows" not in report:
        raise ValueError(f"{path}: not a `mouthmap bench` report (no rows)")
    md, png = path.with_suffix(".md"), path.with_suffix(".png")
    return BenchView(
        report,
        path,
        md.read_text() if md.is_file() else None,
        png if png.is_file() else None,
        path.stat().st_mtime,
    )


def bench_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's variants as flat table rows (one column per figure)."""
    threads = [str(t) for t in report.get("settings", {}).get("threads", [])]
    out = []
    for r in report["rows"]:
        row: dict[str, Any] = {
            "variant": r.get("name"),
            "note": r.get("note") or "",
            "size MB": round(r.get("bytes", 0) / 1e6, 3),
            "params M": round(r.get("parameters", 0) / 1e6, 2),
        }
        for t in threads:
            lat = (r.get("latency_ms") or {}).get(t)
            row[f"p50 ms ({t} thr)"] = round(lat["p50"], 1) if lat else None
            row[f"p95 ms ({t} thr)"] = round(lat["p95"], 1) if lat else None
        row["clips/s"] = r.get("throughput_clips_s")
        row["peak RSS MB"] = r.get("peak_rss_mb")
        for dec in ("greedy", "beam"):
            w = r.get(f"wer_{dec}")
            row[f"WER {dec} %"] = None if w is None else round(100 * w, 1)
        out.append(row)
    return out


# --- drift -----------------------------------------------------------------------------------


@dataclass
class DriftView:
    latest: Path
    html: str
    others: list[Path] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None  # reports/drift/evaluation.json, if any

    @property
    def age_s(self) -> float:
        return time.time() - self.latest.stat().st_mtime


def load_drift(reports: Path) -> DriftView | None:
    """The newest HTML report under ``reports/drift`` (the default of `mouthmap drift
    check --html`), or None when there is none."""
    root = reports / "drift"
    found = sorted(root.glob("**/*.html"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        return None
    ev_path = root / "evaluation.json"
    evaluation = None
    if ev_path.is_file():
        try:
            evaluation = json.loads(ev_path.read_text())
        except json.JSONDecodeError:
            evaluation = None
    return DriftView(found[0], found[0].read_text(errors="replace"), found[1:], evaluation)


# --- registry --------------------------------------------------------------------------------


@dataclass
class RegistryView:
    uri: str | None
    unavailable: str | None = None  # why there is nothing to show
    model: str = ""
    champion: str | None = None
    challenger: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _gate(tags: dict[str, str]) -> dict[str, Any]:
    raw = tags.get("gate.measurement")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return {}


def figure_set(clips: Any, split: Any, decoder: Any) -> str:
    """Where a WER comes from, in words: ``"93 test clips, beam"`` ('' when unknown)."""
    if not clips:
        return ""
    return f"{clips} {split or '?'} clips" + (f", {decoder}" if decoder else "")


def _percent(raw: str | None) -> float | None:
    try:
        return round(100 * float(raw), 2) if raw else None
    except ValueError:
        return None


def registry_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    """`Registry.show()` -> one row per version, newest first."""
    rows = []
    for v in sorted(info["versions"], key=lambda v: int(v["version"]), reverse=True):
        tags, gate = v["tags"], _gate(v["tags"])
        created = v.get("created_ms") or 0
        rows.append(
            {
                "version": int(v["version"]),
                "aliases": ", ".join(v["aliases"]) or "",
                "WER %": round(100 * gate["wer"], 2) if "wer" in gate else None,
                "CER %": round(100 * gate["cer"], 2) if "cer" in gate else None,
                "gate set": figure_set(gate.get("clips"), gate.get("split"), gate.get("decoder")),
                "card WER %": _percent(tags.get("card.wer")),
                "card set": figure_set(
                    tags.get("card.clips"), tags.get("card.split"), tags.get("card.decoder")
                ),
                "latency ms": round(gate["latency_ms"], 1) if "latency_ms" in gate else None,
                "size MB": round(gate["size_mb"], 3) if "size_mb" in gate else None,
                "registered": time.strftime("%Y-%m-%d %H:%M", time.gmtime(created / 1000))
                if created
                else "",
                "promoted at": tags.get("promoted_at", ""),
                "replaced": tags.get("previous_champion", ""),
                "git commit": (tags.get("lineage.git_commit") or "")[:10],
                "pipeline run": tags.get("lineage.pipeline_run_id", ""),
                "training run": tags.get("lineage.training_run_id", ""),
                "data version": tags.get("lineage.data_version", ""),
            }
        )
    return rows


def load_registry(uri: str | None = None, timeout: float = 3.0) -> RegistryView:
    """The registry's versions, or a view whose ``unavailable`` says why there are none:
    no server configured, or one that does not answer."""
    try:
        from mouthmap.registry import Registry, RegistryError
        from mouthmap.registry.mlflow_registry import RegistryUnreachable, resolve_uri
    except ImportError as e:  # the registry is an optional part of a checkout
        return RegistryView(None, f"the registry module is not available ({e})")
    try:
        resolved = resolve_uri(uri)
    except RegistryUnreachable as e:
        return RegistryView(None, f"no registry configured: {e}")
    try:
        info = Registry(resolved, timeout=timeout).show()
    except RegistryUnreachable as e:
        return RegistryView(resolved, str(e))
    except RegistryError as e:
        return RegistryView(resolved, f"the registry at {resolved} answered with an error: {e}")
    except Exception as e:  # MLflow raises many kinds (a proxy, a half-started server)
        return RegistryView(resolved, f"cannot read the registry at {resolved}: {e}")
    aliases = {a: v["version"] for v in info["versions"] for a in v["aliases"]}
    return RegistryView(
        resolved,
        None,
        info["model"],
        info["champion"],
        aliases.get("challenger"),
        registry_rows(info),
    )
