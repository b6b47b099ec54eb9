"""Pipeline parameters mirrored from ``params.yaml``, and their validation.

Every hyper-parameter in ``params.yaml`` (a scalar or list leaf that is not a path the
pipeline replaces with an artifact) becomes one typed pipeline parameter named
``<section>_<key>`` with the file's value as default, so the Kubeflow UI shows a form
with the same names and defaults as the file. ``None`` cannot be a KFP default, so an
optional value is ``0`` / ``""`` / ``{}`` for "none". A few parameters belong to the
pipeline itself (``PIPELINE_EXTRAS``).

The first pipeline step, ``check-params``, is generated from this list (its signature is
the list) and validates all values with the same pydantic models as the CLI, so a bad
value fails the run at its start with a message naming the parameter.
"""

from __future__ import annotations

import json
import linecache
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mouthmap.config import DEFAULT_PARAMS, Params, ParamsError, load_params


def repo_root() -> Path:
    """The checkout (or the image's copy of it, ``$MOUTHMAP_HOME``) holding params.yaml,
    pipelines/, components/ and mlops/."""
    env = os.environ.get("MOUTHMAP_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parents[3]
    return here if (here / "pyproject.toml").is_file() else Path.cwd().resolve()


REPO_ROOT = repo_root()
# paths the pipeline replaces with artifacts (the outputs of upstream steps)
ARTIFACT_PATHS = {
    "data.raw_dir", "data.prepared_dir", "validate.data_docs_dir", "validate.metrics",
    "train.out_dir", "train.init_from", "distill.visual_teacher", "distill.audio_teacher",
    "distill.out_dir", "lm.dir", "package.dir", "quantize.out_dir", "evaluate.out_dir",
}  # fmt: skip
# parameters of the pipeline itself, not of params.yaml: (type, default, help)
PIPELINE_EXTRAS: dict[str, tuple[type, Any, str]] = {
    "teacher_model": (str, "teacher", "visual teacher: a registered model name"),
    "teacher_spec": (dict, {}, "visual teacher spec (overrides teacher_model when given)"),
    "audio_teacher_model": (str, "audio_teacher", "audio teacher: a registered model name"),
    "bench_repeats": (int, 20, "timed runs per latency figure in the benchmark"),
    "bench_test_clips": (int, 0, "score only N test clips in the benchmark (0: all)"),
    "registry_uri": (str, "", "MLflow server (empty: $MLFLOW_TRACKING_URI of the step)"),
    "gate_policy": (str, "mlops/gate.yaml", "gate policy file, relative to the repo root"),
}
_EMPTY = {int: 0, float: 0.0, str: "", dict: {}, list: [], bool: False}


@dataclass(frozen=True)
class PipelineParam:
    name: str  # pipeline parameter name
    key: str | None  # dotted params.yaml key; None for a pipeline extra
    type: type
    default: Any
    optional: bool  # the params.yaml field accepts None (sent as the type's empty value)


def _leaf_type(annotation: Any) -> tuple[type | None, bool]:
    """(KFP type, optional) of a pydantic field annotation; None type when unsupported."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else str
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), optional
    if origin in (list, tuple):
        return list, optional
    if origin is dict or annotation is dict:
        return dict, optional
    if annotation in (int, float, str, bool):
        return annotation, optional
    if annotation is Path:
        return str, optional
    return None, optional


def mirrored(params_file: str | Path | None = None) -> list[PipelineParam]:
    """The pipeline's parameters: params.yaml's hyper-parameters, then the extras."""
    params = load_params(params_file or REPO_ROOT / DEFAULT_PARAMS)
    out: list[PipelineParam] = []
    for section, field in Params.model_fields.items():
        if section == "root":
            continue
        name = field.alias or section
        model = getattr(params, section)
        for key, sub in type(model).model_fields.items():
            dotted = f"{name}.{key}"
            kfp_type, optional = _leaf_type(sub.annotation)
            if dotted in ARTIFACT_PATHS or kfp_type is None:
                continue
            value = getattr(model, key)
            if value is None:
                value = _EMPTY[kfp_type]
            elif kfp_type is list:
                value = list(value)
            out.append(PipelineParam(f"{name}_{key}", dotted, kfp_type, value, optional))
    for pname, (ptype, default, _) in PIPELINE_EXTRAS.items():
        out.append(PipelineParam(pname, None, ptype, default, False))
    names = [p.name for p in out]
    assert len(names) == len(set(names)), "pipeline parameter names collide"
    return out


def to_config(values: dict[str, Any], spec: list[PipelineParam] | None = None) -> dict[str, Any]:
    """Pipeline parameter values -> ``{"params": nested params.yaml dict, "extras": {...}}``,
    validated; raises :class:`ParamsError` naming the pipeline parameters at fault."""
    spec = spec or mirrored()
    by_name = {p.name: p for p in spec}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ParamsError(
            f"unknown pipeline parameter(s): {', '.join(unknown)}; known: "
            f"{', '.join(sorted(by_name))}"
        )
    nested: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    errors: list[str] = []
    for p in spec:
        v = values.get(p.name, p.default)
        if p.type in (dict, list):
            v = _integral(v)  # KFP structs carry every number as a float
        if p.key is None:
            if not _type_ok(v, p.type):
                errors.append(f"  {p.name}: expected {p.type.__name__}, got {v!r}")
            extras[p.name] = v
            continue
        if p.optional and v == _EMPTY[p.type] and v is not False:
            v = None
        section, key = p.key.split(".", 1)
        nested.setdefault(section, {})[key] = v
    if errors:
        raise ParamsError("invalid pipeline parameters:\n" + "\n".join(errors))
    try:
        validated = Params.model_validate(nested)
    except Exception as e:  # pydantic ValidationError: name the pipeline parameter
        lines = []
        for err in getattr(e, "errors", lambda: [])():
            loc = [str(x) for x in err["loc"]]
            lines.append(f"  {'_'.join(loc[:2])} ({'.'.join(loc)}): {err['msg']}")
        raise ParamsError("invalid pipeline parameters:\n" + "\n".join(lines or [str(e)])) from None
    if values.get("bench_repeats", 1) < 1:
        raise ParamsError("invalid pipeline parameters:\n  bench_repeats: must be >= 1")
    dumped = validated.model_dump(by_alias=True, mode="json")
    return {"params": dumped, "extras": extras}


def _integral(v: Any) -> Any:
    """Floats without a fraction back to ints, inside dicts and lists (64.0 -> 64)."""
    if isinstance(v, dict):
        return {k: _integral(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_integral(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _type_ok(v: Any, t: type) -> bool:
    if t is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, t)


def load_config(config: str | dict[str, Any]) -> dict[str, Any]:
    """The steps' ``config``: JSON text between steps (KFP structs hold no ``null`` and turn
    every integer into a float), or the dict itself."""
    return json.loads(config) if isinstance(config, str) else config


def params_from_config(config: str | dict[str, Any], root: str | Path | None = None) -> Params:
    """The :class:`Params` a pipeline step works with (paths relative to the repo root)."""
    params = Params.model_validate(load_config(config)["params"])
    params.root = Path(root or REPO_ROOT)
    return params


# --- the generated check-params step -------------------------------------------------------

_SOURCE_NAME = "<mouthmap.pipeline.params: check_params>"


def check_params_source(spec: list[PipelineParam]) -> str:
    """Source of the first step: its signature is the pipeline's parameter list."""
    args = ",\n    ".join(f"{p.name}: {p.type.__name__} = {p.default!r}" for p in spec)
    names = ", ".join(f"{p.name!r}: {p.name}" for p in spec)
    return (
        f"def check_params(\n    {args},\n) -> str:\n"
        '    """Validate every pipeline parameter (the run fails here, first, on a bad one)."""\n'
        "    import json\n\n"
        "    from mouthmap.pipeline.params import to_config\n\n"
        f"    return json.dumps(to_config({{{names}}}))\n"
    )


def check_params_function(spec: list[PipelineParam] | None = None):
    """The check-params function, with its source registered so KFP can embed it."""
    src = check_params_source(spec or mirrored())
    linecache.cache[_SOURCE_NAME] = (len(src), None, src.splitlines(True), _SOURCE_NAME)
    namespace: dict[str, Any] = {}
    # dont_inherit: this module's `annotations` future would turn the types into strings
    exec(compile(src, _SOURCE_NAME, "exec", dont_inherit=True), namespace)
    return namespace["check_params"]
