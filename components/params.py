"""check-params: the first step; its signature is the pipeline's parameter list, generated
from params.yaml (see :mod:`mouthmap.pipeline.params`)."""

from __future__ import annotations

from kfp import dsl

from components.image import COMPONENT
from mouthmap.pipeline.params import check_params_function


def make_check_params(spec=None):
    return dsl.component(check_params_function(spec), **COMPONENT)
