"""The MLflow side of MouthMap: the registered model, the gate, promotion and rollback."""

from mouthmap.registry.gate import Decision, Measurement, decide, measure, write_report
from mouthmap.registry.mlflow_registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    PromotionRefused,
    Registry,
    RegistryError,
    RegistryUnreachable,
    VersionInfo,
    check_reachable,
    gate_version,
    resolve_uri,
)
from mouthmap.registry.policy import DEFAULT_POLICY, GatePolicy, PolicyError, load_policy

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_POLICY",
    "MODEL_NAME",
    "Decision",
    "GatePolicy",
    "Measurement",
    "PolicyError",
    "PromotionRefused",
    "Registry",
    "RegistryError",
    "RegistryUnreachable",
    "VersionInfo",
    "check_reachable",
    "decide",
    "gate_version",
    "load_policy",
    "measure",
    "resolve_uri",
    "write_report",
]
