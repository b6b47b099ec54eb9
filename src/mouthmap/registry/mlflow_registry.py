"""The MLflow model registry of MouthMap: one registered model, a version per package.

Each version's source is the model package (a directory artifact of an MLflow run) and its
tags carry the lineage (git commit, DVC data version, pipeline run id, training run id) and
metrics. The ``champion`` alias is what serves; ``challenger`` is the newest registration.

Promotion only ever *moves* the champion alias (one write, a single transaction on the
server) and never deletes it, so a registry that had a champion always has one, whatever
two promotions racing each other do. Each promoted version records the champion it
replaced (tag ``previous_champion``), which is what ``rollback`` returns to.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mouthmap.registry.gate import Decision, Measurement, decide
from mouthmap.registry.policy import GatePolicy

MODEL_NAME = "mouthmap"
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "mouthmap-registry"
GATE_TAG = "gate.measurement"  # JSON of the version's last gate Measurement
PREVIOUS_TAG = "previous_champion"
URI_ENV = "MLFLOW_TRACKING_URI"


class RegistryError(RuntimeError):
    """A registry operation failed; the message says why and what (not) happened."""


class RegistryUnreachable(RegistryError):
    """No MLflow server answers at the URI; nothing was changed."""


class PromotionRefused(RegistryError):
    """The gate refused the challenger; the champion stays."""

    def __init__(self, message: str, decision: Decision | None = None) -> None:
        super().__init__(message)
        self.decision = decision


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the running local stack's MLflow."""
    if uri:
        return uri.rstrip("/")
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV].rstrip("/")
    from mouthmap.stack.mlflow_server import MLflowServer
    from mouthmap.stack.services import default_state_dir

    running = MLflowServer(default_state_dir()).endpoint_if_running()
    if running:
        return running
    raise RegistryUnreachable(
        "no MLflow server given: pass --mlflow-uri, set MLFLOW_TRACKING_URI, or start the "
        "local one with `mouthmap stack up`"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`RegistryUnreachable` unless an MLflow server answers at ``uri``."""
    import requests

    if not uri.startswith(("http://", "https://")):
        raise RegistryUnreachable(f"{uri!r} is not an MLflow server URL (http:// or https://)")
    try:
        r = requests.get(f"{uri}/health", timeout=timeout)
    except requests.RequestException as e:
        raise RegistryUnreachable(
            f"MLflow server at {uri} is unreachable ({type(e).__name__}); nothing was changed. "
            "Start the local one with `mouthmap stack up` or check MLFLOW_TRACKING_URI"
        ) from None
    if r.status_code != 200:
        raise RegistryUnreachable(
            f"MLflow server at {uri} answered /health with HTTP {r.status_code}; "
            "nothing was changed"
        )


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    source: str
    run_id: str | None
    created_ms: int

    @property
    def measurement(self) -> Measurement | None:
        raw = self.tags.get(GATE_TAG)
        return Measurement.from_dict(json.loads(raw)) if raw else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "aliases": list(self.aliases), "source": self.source,
            "run_id": self.run_id, "created_ms": self.created_ms, "tags": self.tags,
        }  # fmt: skip


@dataclass(frozen=True)
class Promotion:
    version: str
    previous: str | None
    decision: Decision | None
    changed: bool  # False when the version already was the champion


def _info(mv) -> VersionInfo:
    return VersionInfo(
        version=str(mv.version), aliases=tuple(mv.aliases or ()), tags=dict(mv.tags or {}),
        source=mv.source, run_id=mv.run_id, created_ms=int(mv.creation_timestamp or 0),
    )  # fmt: skip


def card_tags(meta: dict[str, Any]) -> dict[str, str]:
    """The package's own headline figure (its model card's: the test split with the beam
    decoder) as ``card.*`` tags, so the registry says which split and how many clips each
    figure is on, beside the gate's measurement on the gate's set."""
    test = (meta.get("evaluation") or {}).get("test") or {}
    decoder = "beam" if "beam" in test else next(iter(test), None)
    result = test.get(decoder) if decoder else None
    if not isinstance(result, dict) or "wer" not in result:
        return {}
    return {
        "card.wer": f"{float(result['wer']):.6g}",
        "card.clips": str(result.get("clips", "")),
        "card.split": "test",
        "card.decoder": str(decoder),
    }


def _flatten(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(key + ".", v))
        elif v is not None and not isinstance(v, list):
            out[key] = str(v)[:5000]
    return out


class Registry:
    """The registered model ``name`` on the MLflow server at ``uri`` (checked on creation)."""

    def __init__(self, uri: str | None = None, name: str = MODEL_NAME, timeout: float = 5.0):
        self.uri = resolve_uri(uri)
        self.name = name
        check_reachable(self.uri, timeout)
        # fail in seconds, not after MLflow's default minutes of retries, if it goes away
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reading ------------------------------------------------------------------
    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    self.name, description="MouthMap lip-reading model packages"
                )
            except MlflowException as e:  # created meanwhile by a concurrent register
                if "already exists" not in str(e).lower():
                    raise

    def alias(self, alias: str) -> VersionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            return _info(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def champion(self) -> VersionInfo | None:
        return self.alias(CHAMPION)

    def version(self, version: str | int) -> VersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            return _info(self.client.get_model_version(self.name, str(version)))
        except MlflowException:
            raise RegistryError(f"{self.name} has no version {version}") from None

    def versions(self) -> list[VersionInfo]:
        from dataclasses import replace

        from mlflow.exceptions import MlflowException

        found = self.client.search_model_versions(f"name = '{self.name}'", max_results=1000)
        try:  # search results carry no aliases; the registered model has them all
            aliases = dict(self.client.get_registered_model(self.name).aliases or {})
        except MlflowException:
            aliases = {}
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        infos = [_info(v) for v in found]
        infos = [replace(v, aliases=tuple(sorted(by_version.get(v.version, ())))) for v in infos]
        return sorted(infos, key=lambda v: int(v.version))

    def resolve(self, ref: str | int) -> VersionInfo:
        """A version number, an alias (``champion``, ``challenger``) or ``latest``."""
        ref = str(ref)
        if ref.isdigit():
            return self.version(ref)
        if ref == "latest":
            found = self.versions()
            if not found:
                raise RegistryError(f"{self.name} has no versions yet")
            return found[-1]
        info = self.alias(ref)
        if info is None:
            raise RegistryError(f"{self.name} has no version with alias {ref!r}")
        return info

    def download(self, ref: str | int, dst: str | Path) -> Path:
        """The model package of a version, downloaded to ``dst``; returns its directory."""
        import mlflow

        info = self.resolve(ref)
        Path(dst).mkdir(parents=True, exist_ok=True)
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=info.source, dst_path=str(dst), tracking_uri=self.uri
        )
        return Path(path)

    def show(self) -> dict[str, Any]:
        champ = self.champion()
        return {
            "uri": self.uri,
            "model": self.name,
            "champion": champ.version if champ else None,
            "versions": [v.as_dict() for v in self.versions()],
        }

    # -- writing ------------------------------------------------------------------
    def register(
        self,
        package_dir: str | Path,
        *,
        pipeline_run_id: str | None = None,
        metrics: dict[str, float] | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> VersionInfo:
        """Log the package as an artifact of a run and register it as a new version, tagged
        with its lineage and metrics; the version gets the ``challenger`` alias."""
        import mlflow

        from mouthmap.package import ModelPackage

        pkg = ModelPackage.load(package_dir)
        meta = pkg.meta
        lineage = {**(meta.get("lineage") or {}), "pipeline_run_id": pipeline_run_id}
        numbers = {k: float(v) for k, v in (metrics or {}).items() if v is not None}
        tags = {
            **_flatten("lineage.", lineage),
            **{f"metric.{k}": f"{v:.6g}" for k, v in numbers.items()},
            "package.name": str(meta.get("name")),
            "package.format": str(meta.get("format")),
            **card_tags(meta),
            **(extra_tags or {}),
        }
        self._ensure_model()
        mlflow.set_tracking_uri(self.uri)
        experiment = mlflow.set_experiment(EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
            mlflow.set_tags({k: v for k, v in tags.items() if k.startswith("lineage.")})
            if numbers:
                mlflow.log_metrics(numbers)
            mlflow.log_artifacts(str(pkg.root), artifact_path="package")
            source = f"{run.info.artifact_uri}/package"
        mv = self.client.create_model_version(
            self.name, source=source, run_id=run.info.run_id, tags=tags,
            description=f"{meta.get('name')} package, pipeline run {pipeline_run_id or '-'}",
        )  # fmt: skip
        self.client.set_registered_model_alias(self.name, CHALLENGER, mv.version)
        return self.version(mv.version)

    def record_measurement(self, version: str | int, m: Measurement) -> None:
        self.client.set_model_version_tag(
            self.name, str(version), GATE_TAG, json.dumps(m.as_dict())
        )

    def promote(
        self,
        version: str | int,
        *,
        policy: GatePolicy | None = None,
        decision: Decision | None = None,
        force: bool = False,
        reason: str = "gate passed",
    ) -> Promotion:
        """Move ``champion`` to ``version`` when its gate ``decision`` passed.

        The decision was made against the champion of that moment; if the champion moved
        since (a promotion raced this one), the challenger is judged again against the new
        champion's recorded measurement before the alias moves.
        """
        target = self.version(version)
        current = self.champion()
        if current and current.version == target.version:
            return Promotion(target.version, None, decision, changed=False)
        if not force:
            if decision is None:
                raise RegistryError("promotion needs a gate decision (or force=True)")
            if not decision.passed:
                raise PromotionRefused(
                    f"version {target.version} is not promoted; the champion stays "
                    f"({current.version if current else 'none'}):\n{decision.summary()}",
                    decision,
                )
            compared = decision.champion_version
            now = current.version if current else None
            if now != compared and policy is not None:
                decision = self._regate(decision, current, policy)
        previous = current.version if current else None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.client.set_model_version_tag(self.name, target.version, PREVIOUS_TAG, previous or "")
        self.client.set_model_version_tag(self.name, target.version, "promoted_at", stamp)
        self.client.set_model_version_tag(
            self.name, target.version, "promoted_by", "force" if force else reason
        )
        self.client.set_registered_model_alias(self.name, CHAMPION, target.version)
        return Promotion(target.version, previous, decision, changed=True)

    def _regate(self, decision: Decision, current: VersionInfo | None, policy: GatePolicy):
        champion_m = current.measurement if current else None
        if current is not None and champion_m is None:
            raise PromotionRefused(
                f"the champion moved to version {current.version} while the gate ran and it "
                "has no recorded gate measurement to compare with; run the gate again",
                decision,
            )
        again = decide(
            decision.challenger, champion_m, policy, current.version if current else None
        )
        if not again.passed:
            raise PromotionRefused(
                f"the champion moved to version {current.version} while the gate ran, and "
                f"against it the challenger fails; the champion stays:\n{again.summary()}",
                again,
            )
        return again

    def rollback(self) -> Promotion:
        """Move ``champion`` back to the version it replaced (its ``previous_champion``)."""
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.name} has no champion to roll back from")
        previous = current.tags.get(PREVIOUS_TAG) or None
        if previous is None:
            raise RegistryError(
                f"champion version {current.version} replaced no earlier champion; "
                "there is nothing to roll back to"
            )
        self.version(previous)  # it must still exist
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.client.set_model_version_tag(self.name, current.version, "rolled_back_at", stamp)
        self.client.set_registered_model_alias(self.name, CHAMPION, previous)
        return Promotion(previous, current.version, None, changed=True)


def gate_version(
    registry: Registry,
    version: str | int,
    prepared_dir: str | Path,
    policy: GatePolicy,
    work_dir: str | Path,
    exclude: set[str] | frozenset[str] = frozenset(),
    log: Callable[[str], None] = lambda _: None,
) -> Decision:
    """Download the challenger and the champion, measure both side by side on the gate's
    split, record the measurements as version tags and decide."""
    from mouthmap.registry.gate import measure

    challenger = registry.resolve(version)
    champion = registry.champion()
    work = Path(work_dir)
    log(f"measuring challenger v{challenger.version} on the {policy.split} split")
    c_dir = registry.download(challenger.version, work / f"v{challenger.version}")
    c_m = measure(c_dir, prepared_dir, policy, exclude)
    registry.record_measurement(challenger.version, c_m)
    champ_m = None
    if champion is not None and champion.version == challenger.version:
        champ_m = c_m  # already the champion: it passes against itself, nothing moves
    elif champion is not None:
        log(f"measuring champion v{champion.version} on the same split")
        ch_dir = registry.download(champion.version, work / f"v{champion.version}")
        champ_m = measure(ch_dir, prepared_dir, policy, exclude)
        registry.record_measurement(champion.version, champ_m)
    return decide(c_m, champ_m, policy, champion.version if champ_m else None)
