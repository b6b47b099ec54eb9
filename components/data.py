"""Data components: import the corpus, prepare ROIs + audio features, validate (GE)."""

# no `from __future__ import annotations`: KFP reads the real annotations
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components.image import COMPONENT


@dsl.component(**COMPONENT)
def import_data(config: str, corpus: Output[Dataset], metrics: Output[Metrics]):
    """Copy the corpus of ``data.source`` into the project layout."""
    from mouthmap.pipeline import steps

    for k, v in steps.import_data(config, corpus.path).items():
        metrics.log_metric(k, v)


@dsl.component(**COMPONENT)
def prepare_data(
    config: str, corpus: Input[Dataset], prepared: Output[Dataset], metrics: Output[Metrics]
):
    """Mouth ROIs (96x96) and log-mel features for every clip, with the manifest."""
    from mouthmap.pipeline import steps

    for k, v in steps.prepare_data(config, corpus.path, prepared.path).items():
        metrics.log_metric(k, v)


@dsl.component(**COMPONENT)
def validate_data(
    config: str,
    prepared: Input[Dataset],
    data_docs: Output[HTML],
    data_docs_site: Output[Artifact],
    metrics: Output[Metrics],
) -> NamedTuple("Validation", [("quarantined", list)]):
    """Great Expectations over the manifest: fails the run when the data is not usable."""
    from collections import namedtuple

    from mouthmap.pipeline import steps

    values, quarantined = steps.validate_data(
        config, prepared.path, data_docs_site.path, data_docs.path
    )
    for k, v in values.items():
        metrics.log_metric(k, v)
    return namedtuple("Validation", ["quarantined"])(quarantined)
