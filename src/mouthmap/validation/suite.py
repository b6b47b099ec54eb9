"""The manifest's data contract, checked by a Great Expectations suite.

Every clip the prepare stage wrote must be fit to train on before any model sees
it. The suite runs over ``manifest.csv`` (one row per clip), renders GE's HTML
data docs for people, and returns a :class:`ValidationReport` for code: which
clips fail, and why, by clip id.

Great Expectations is imported lazily: it takes seconds to import and most CLI
commands never validate.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from mouthmap.data.corpus import GRAMMAR_REGEX
from mouthmap.data.splits import SPLITS

SUITE_NAME = "mouthmap_manifest"
DATASOURCE_NAME = "mouthmap"
ASSET_NAME = "manifest"
BATCH_NAME = "whole_manifest"
SITE_NAME = "mouthmap"
MISSING_ID = "<missing id>"

REQUIRED_COLUMNS = (
    "id",
    "status",
    "error",
    "split",
    "n_frames",
    "fps",
    "audio_present",
    "align_ok",
    "transcript",
    "roi_found_frac",
    "roi_mean",
    "roi_std",
    "roi_min",
    "roi_max",
)
# Columns a usable clip must fill in; "" text is kept as a value (the regex judges it).
NOT_NULL_COLUMNS = tuple(c for c in REQUIRED_COLUMNS if c not in ("id", "error"))
_QUIET_LOGGERS = ("great_expectations", "py.warnings", "tzlocal", "posthog", "urllib3")


@dataclass
class ValidationRules:
    """What a clip must look like to be trained on (params.yaml ``validate``)."""

    min_frames: int = 74
    max_frames: int = 75
    fps: float = 25.0
    fps_tolerance: float = 0.01
    min_roi_found: float = 0.98
    # 96x96 uint8 mouth crops: a mean near 0 or 255 is a black/blown-out frame,
    # a tiny std is a blank (constant) crop, e.g. a localiser that returned padding.
    roi_mean_min: float = 20.0
    roi_mean_max: float = 235.0
    roi_std_min: float = 5.0
    roi_value_min: float = 0.0
    roi_value_max: float = 255.0
    splits: tuple[str, ...] = SPLITS
    transcript_regex: str = GRAMMAR_REGEX

    @classmethod
    def from_params(cls, section: Any) -> ValidationRules:
        """Build from params' ``validate`` section (a ``ValidateParams`` or a mapping);
        keys that are not rules (``data_docs_dir``) are ignored."""
        if not isinstance(section, Mapping):
            section = section.model_dump() if hasattr(section, "model_dump") else vars(section)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names})


@dataclass
class Failure:
    """One expectation that failed, and the clips that broke it."""

    rule: str  # stable short name, e.g. "n_frames_in_range"
    expectation: str  # GE expectation type, e.g. "expect_column_values_to_be_between"
    column: str | None
    description: str  # the rule in words, e.g. "n_frames in [74, 75]"
    ids: list[str]  # distinct failing clip ids (MISSING_ID for rows without one)
    values: dict[str, list[Any]] = field(default_factory=dict)  # bad value(s) per id
    unexpected_count: int = 0  # failing rows (duplicated ids count once per row)
    error: str | None = None  # set when GE could not evaluate the expectation at all
    reason: str = ""  # the failure in words, for table-level expectations


@dataclass
class ValidationReport:
    success: bool
    n_clips: int
    n_bad: int
    failures: list[Failure]
    docs_index: Path
    expectations: dict[str, bool] = field(default_factory=dict)  # rule -> success
    problems: dict[str, list[str]] = field(default_factory=dict)  # clip id -> reasons

    @property
    def bad_ids(self) -> list[str]:
        return list(self.problems)

    def summary(self) -> str:
        """A message for people: one line per bad clip naming every rule it breaks."""
        if self.success:
            return f"all {self.n_clips} clips pass validation (data docs: {self.docs_index})"
        if self.n_bad:
            lines = [f"{self.n_bad} of {self.n_clips} clips fail validation:"]
        else:
            lines = [f"the manifest ({self.n_clips} clips) fails validation:"]
        lines += [f" - {cid}: {'; '.join(reasons)}" for cid, reasons in self.problems.items()]
        for f in self.failures:
            if f.error is not None:
                lines.append(f" - could not check {f.description}: {f.error}")
            elif not f.ids:  # table-level expectation (e.g. row count)
                lines.append(f" - manifest: {f.reason}")
        lines.append(f"data docs: {self.docs_index}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Metrics-file form: counts, per-expectation success, and the bad ids."""
        return {
            "success": self.success,
            "n_clips": self.n_clips,
            "n_bad": self.n_bad,
            "expectations": dict(self.expectations),
            "bad_ids": self.bad_ids,
            "failures": [
                {k: _jsonable(v) for k, v in asdict(f).items() if k != "values"}
                for f in self.failures
            ],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


# --- the suite ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    name: str
    kind: str  # GE expectation class name
    column: str | None
    kwargs: dict[str, Any]
    description: str
    reason: Callable[[Any], str]  # bad value -> short phrase for the summary


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3g}"
    return repr(v) if isinstance(v, str) else str(v)


def _non_capturing(regex: str) -> str:
    """GE matches with pandas ``str.contains``, which warns on capture groups."""
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", regex)


def _rules(r: ValidationRules) -> list[_Rule]:
    lo_fps, hi_fps = r.fps - r.fps_tolerance, r.fps + r.fps_tolerance
    mean_rng = f"[{_fmt(r.roi_mean_min)}, {_fmt(r.roi_mean_max)}]"
    val_rng = f"[{_fmt(r.roi_value_min)}, {_fmt(r.roi_value_max)}]"
    rules = [
        _Rule(
            "not_empty",
            "ExpectTableRowCountToBeBetween",
            None,
            {"min_value": 1},
            "the manifest has at least one clip",
            lambda v: "no clips (expected at least one)",
        ),
        _Rule(
            "id_not_null",
            "ExpectColumnValuesToNotBeNull",
            "id",
            {},
            "every clip has an id",
            lambda v: "no id",
        ),
        _Rule(
            "id_unique",
            "ExpectColumnValuesToBeUnique",
            "id",
            {},
            "clip ids are unique",
            lambda v: "duplicate id",
        ),
        _Rule(
            "status_ok",
            "ExpectColumnValuesToBeInSet",
            "status",
            {"value_set": ["ok"]},
            "status is 'ok' (prepare did not reject the clip)",
            lambda v: f"status={v}",  # the prepare error is appended per clip
        ),
        _Rule(
            "split_known",
            "ExpectColumnValuesToBeInSet",
            "split",
            {"value_set": list(r.splits)},
            f"split in {list(r.splits)}",
            lambda v: f"split={_fmt(v)} not in {list(r.splits)}",
        ),
        _Rule(
            "n_frames_in_range",
            "ExpectColumnValuesToBeBetween",
            "n_frames",
            {"min_value": r.min_frames, "max_value": r.max_frames},
            f"n_frames in [{r.min_frames}, {r.max_frames}]",
            lambda v: f"n_frames={_fmt(v)} not in [{r.min_frames}, {r.max_frames}]",
        ),
        _Rule(
            "fps_ok",
            "ExpectColumnValuesToBeBetween",
            "fps",
            {"min_value": lo_fps, "max_value": hi_fps},
            f"fps == {_fmt(r.fps)} (± {_fmt(r.fps_tolerance)})",
            lambda v: f"fps={_fmt(v)} != {_fmt(r.fps)}",
        ),
        _Rule(
            "audio_present",
            "ExpectColumnValuesToBeInSet",
            "audio_present",
            {"value_set": [True]},
            "the clip has an audio track",
            lambda v: "no audio",
        ),
        _Rule(
            "align_ok",
            "ExpectColumnValuesToBeInSet",
            "align_ok",
            {"value_set": [True]},
            "the alignment file exists and parses",
            lambda v: "alignment missing or unparseable",
        ),
        _Rule(
            "transcript_in_grammar",
            "ExpectColumnValuesToMatchRegex",
            "transcript",
            {"regex": _non_capturing(r.transcript_regex)},
            "the transcript is a GRID sentence",
            lambda v: f"transcript {_fmt(v)} is not a GRID sentence",
        ),
        _Rule(
            "roi_found",
            "ExpectColumnValuesToBeBetween",
            "roi_found_frac",
            {"min_value": r.min_roi_found, "max_value": 1.0},
            f"the mouth is found in >= {r.min_roi_found:.0%} of frames",
            lambda v: (
                f"mouth found in only {v:.0%} of frames (need >= {r.min_roi_found:.0%})"
                if isinstance(v, int | float) and 0 <= v < r.min_roi_found
                else f"roi_found_frac={_fmt(v)} not in [{_fmt(r.min_roi_found)}, 1]"
            ),
        ),
        _Rule(
            "roi_mean_in_range",
            "ExpectColumnValuesToBeBetween",
            "roi_mean",
            {"min_value": r.roi_mean_min, "max_value": r.roi_mean_max},
            f"mouth crop mean in {mean_rng}",
            lambda v: f"roi_mean={_fmt(v)} not in {mean_rng} (crop too dark or too bright)",
        ),
        _Rule(
            "roi_std_above_min",
            "ExpectColumnValuesToBeBetween",
            "roi_std",
            {"min_value": r.roi_std_min, "strict_min": True},
            f"mouth crop std > {_fmt(r.roi_std_min)}",
            lambda v: f"roi_std={_fmt(v)} <= {_fmt(r.roi_std_min)} (blank crop)",
        ),
        _Rule(
            "roi_min_in_range",
            "ExpectColumnValuesToBeBetween",
            "roi_min",
            {"min_value": r.roi_value_min, "max_value": r.roi_value_max},
            f"mouth crop min in {val_rng}",
            lambda v: f"roi_min={_fmt(v)} not in {val_rng}",
        ),
        _Rule(
            "roi_max_in_range",
            "ExpectColumnValuesToBeBetween",
            "roi_max",
            {"min_value": r.roi_value_min, "max_value": r.roi_value_max},
            f"mouth crop max in {val_rng}",
            lambda v: f"roi_max={_fmt(v)} not in {val_rng}",
        ),
    ]
    for col in NOT_NULL_COLUMNS:
        rules.append(
            _Rule(
                f"{col}_not_null",
                "ExpectColumnValuesToNotBeNull",
                col,
                {},
                f"{col} is filled in",
                lambda v, col=col: f"{col} missing",
            )
        )
    return rules


# --- running it ------------------------------------------------------------------------


def _gx():
    """Import Great Expectations quietly (no analytics, no progress bars, no INFO logs)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    import great_expectations as gx

    return gx


def _context(gx, docs_dir: Path, project_dir: Path | None):
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if project_dir is None:
        ctx = gx.get_context(mode="ephemeral")
        for name in list(ctx.list_data_docs_sites()):  # its default site is a temp dir
            ctx.delete_data_docs_site(name)
        base = str(docs_dir)
    else:
        ctx = gx.get_context(mode="file", project_root_dir=str(project_dir))
        # relative to the gx/ folder, so great_expectations.yml is the same on every machine
        base = os.path.relpath(docs_dir, Path(ctx.root_directory).resolve())
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": base},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    if SITE_NAME in ctx.list_data_docs_sites():
        if ctx.list_data_docs_sites()[SITE_NAME] != site:
            ctx.update_data_docs_site(SITE_NAME, site)
    else:
        ctx.add_data_docs_site(SITE_NAME, site)
    return ctx


def _checkpoint(gx, ctx, rules: ValidationRules):
    import great_expectations.expectations as gxe

    ds = ctx.data_sources.add_or_update_pandas(DATASOURCE_NAME)
    try:
        asset = ds.get_asset(ASSET_NAME)
    except LookupError:
        asset = ds.add_dataframe_asset(ASSET_NAME)
    try:
        batch = asset.get_batch_definition(BATCH_NAME)
    except (KeyError, LookupError):
        batch = asset.add_batch_definition_whole_dataframe(BATCH_NAME)

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for rule in _rules(rules):
        kwargs = dict(rule.kwargs)
        if rule.column is not None:
            kwargs["column"] = rule.column
        expectation = getattr(gxe, rule.kind)(
            **kwargs, description=rule.description, meta={"rule": rule.name}
        )
        suite.add_expectation(expectation)
    suite = ctx.suites.add_or_update(suite)
    vd = ctx.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite)
    )
    return ctx.checkpoints.add_or_update(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])],
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["id"],
            },
        )
    )


def validate_manifest(
    manifest: pd.DataFrame,
    rules: ValidationRules,
    docs_dir: Path,
    project_dir: Path | None = None,
) -> ValidationReport:
    """Check every clip of ``manifest`` against ``rules`` and write GE data docs.

    Without ``project_dir`` GE runs in an ephemeral context and ``docs_dir`` holds the
    latest run only; with it, GE keeps a file context in ``<project_dir>/gx`` (suite,
    checkpoint, result history) and the docs list every run. Reruns update the GE
    objects in place. Raises ``ValueError`` when the manifest lacks a column.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; has {list(manifest.columns)}")
    docs_dir = Path(docs_dir).resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    df = manifest.reset_index(drop=True)

    gx = _gx()
    ctx = _context(gx, docs_dir, None if project_dir is None else Path(project_dir).resolve())
    checkpoint = _checkpoint(gx, ctx, rules)
    result = checkpoint.run(batch_parameters={"dataframe": df})
    (suite_result,) = result.run_results.values()
    return _report(df, rules, suite_result.results, docs_dir / "index.html")


def _key(v: Any) -> str:
    return MISSING_ID if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _report(df: pd.DataFrame, rules: ValidationRules, results, docs_index: Path):
    by_name = {r.name: r for r in _rules(rules)}
    order = list(by_name)
    failures: list[Failure] = []
    expectations: dict[str, bool] = {}
    for res in results:
        cfg = res.expectation_config
        name = (cfg.meta or {}).get("rule", cfg.type)
        rule = by_name.get(name)
        ok = bool(res.success)
        expectations[name] = ok
        if ok:
            continue
        exc = res.exception_info or {}
        error = exc.get("exception_message") if exc.get("raised_exception") else None
        values: dict[str, list[Any]] = {}
        for row in (res.result or {}).get("unexpected_index_list") or []:
            cid = _key(row.get("id"))
            values.setdefault(cid, []).append(_jsonable(row.get(cfg.kwargs.get("column"))))
        failures.append(
            Failure(
                rule=name,
                expectation=cfg.type,
                column=cfg.kwargs.get("column"),
                description=rule.description if rule else (cfg.description or cfg.type),
                ids=list(values),
                values=values,
                unexpected_count=int((res.result or {}).get("unexpected_count") or 0),
                error=error,
                reason=rule.reason(None) if rule and rule.column is None else "",
            )
        )
    failures.sort(key=lambda f: order.index(f.rule) if f.rule in by_name else len(order))

    errors = {}
    if "error" in df.columns:
        errors = {_key(i): e for i, e in zip(df["id"], df["error"], strict=True)}
    problems: dict[str, list[str]] = {}
    missing_cols: dict[str, list[str]] = {}
    for f in failures:
        rule = by_name.get(f.rule)
        for cid, vals in f.values.items():
            if (
                rule is not None
                and rule.kind == "ExpectColumnValuesToNotBeNull"
                and f.column != "id"
            ):
                missing_cols.setdefault(cid, []).append(f.column or "?")
                problems.setdefault(cid, [])
                continue
            shown = sorted({_fmt(v) for v in vals}) if f.rule != "id_unique" else []
            if rule is None:
                phrase = f"{f.description} (value {', '.join(shown)})"
            else:
                phrase = "; ".join(dict.fromkeys(rule.reason(v) for v in vals))
            if f.rule == "status_ok" and isinstance(errors.get(cid), str) and errors[cid]:
                phrase += f" ({errors[cid]})"
            if f.rule == "id_not_null":
                rows = ", ".join(str(i) for i in df.index[df["id"].isna()])
                phrase += f" (manifest row {rows}, counting from 0)"
            if f.rule == "id_unique":
                phrase += f" ({int((df['id'].astype(str) == cid).sum())} rows)"
            problems.setdefault(cid, []).append(phrase)
    for cid, cols in missing_cols.items():
        problems[cid].append("missing " + ", ".join(cols))
    first_row = {cid: i for i, cid in reversed(list(enumerate(df["id"].map(_key))))}
    problems = dict(sorted(problems.items(), key=lambda kv: first_row.get(kv[0], len(df))))

    ids = df["id"]
    real = [c for c in problems if c != MISSING_ID]
    n_bad = int((ids.notna() & ids.astype(str).isin(real)).sum())
    if MISSING_ID in problems:
        n_bad += int(ids.isna().sum())
    return ValidationReport(
        success=all(expectations.values()) and not failures,
        n_clips=len(df),
        n_bad=n_bad,
        failures=failures,
        docs_index=docs_index,
        expectations=expectations,
        problems=problems,
    )


def _jsonable(v: Any) -> Any:
    """numpy scalars and NaN -> plain JSON values."""
    if hasattr(v, "item") and not isinstance(v, list | dict | str):
        with contextlib.suppress(ValueError, AttributeError):
            v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v
