"""Registry components: register the package, gate it against the champion, promote."""

# no `from __future__ import annotations`: KFP reads the real annotations
from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import COMPONENT


@dsl.component(**COMPONENT)
def register_model(
    config: str, package: Input[Model], evaluation: dict, pipeline_run_id: str
) -> str:
    """A new version of the registered model ``mouthmap`` (alias challenger), with lineage."""
    from mouthmap.pipeline import steps

    return steps.register_model(config, package.path, evaluation, pipeline_run_id)


@dsl.component(**COMPONENT)
def gate(
    config: str,
    prepared: Input[Dataset],
    quarantined: list,
    version: str,
    report: Output[HTML],
    report_files: Output[Artifact],
    metrics: Output[Metrics],
) -> bool:
    """Challenger vs champion, side by side on the fixed test split (mlops/gate.yaml);
    True when it passed. The decision (gate.json) goes on in ``report_files``."""
    from mouthmap.pipeline import steps

    decision = steps.gate(config, prepared.path, quarantined, version, report_files.path,
                          report.path)  # fmt: skip
    for k, v in decision["challenger"].items():
        if isinstance(v, int | float):
            metrics.log_metric(f"challenger_{k}", v)
    metrics.log_metric("passed", float(decision["passed"]))
    return decision["passed"]


@dsl.component(**COMPONENT)
def promote_model(config: str, version: str, gate_report: Input[Artifact]) -> str:
    """Move the champion alias to the version (runs only when the gate passed)."""
    import os

    from mouthmap.pipeline import steps

    return steps.promote(config, version, os.path.join(gate_report.path, "gate.json"))
