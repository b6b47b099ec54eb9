"""The Android path as far as it goes without a phone: ONNX Runtime Mobile artefacts.

NNAPI needs fixed shapes, so the model is first pinned to one batch and clip length
(``make_dim_param_fixed``). Then ONNX Runtime's own tools write what a phone build consumes:
the ORT-format model (``convert_onnx_models_to_ort``, "Runtime" optimisation style, which keeps
nodes that NNAPI could take instead of fusing them for the CPU) with the operator config for a
reduced build, and the mobile-usability report (``check_onnx_model_mobile_usability``): how
many nodes the NNAPI and CoreML execution providers can take, in how many partitions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MobileArtefacts:
    out_dir: Path
    fixed_model: Path  # the model with batch and time pinned
    ort_model: Path | None
    ort_config: Path | None  # required operators, for a reduced ORT Mobile build
    usability_report: Path  # the ORT checker's text, verbatim
    nnapi: dict[str, Any] = field(default_factory=dict)  # partitioning summary
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what went wrong but was worked around

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def fix_shapes(src: str | Path, dst: str | Path, batch: int = 1, frames: int = 75) -> Path:
    """A copy of the model with ``batch`` and ``time`` pinned (NNAPI takes no dynamic shapes)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    model = onnx.load(str(src))
    make_dim_param_fixed(model.graph, "batch", batch)
    make_dim_param_fixed(model.graph, "time", frames)
    fix_output_shapes(model)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    return Path(dst)


def nnapi_partitions(path: str | Path) -> dict[str, Any]:
    """How much of the graph the NNAPI execution provider could take: ORT's own checker, on
    the graph after ORT's basic optimisations (as the ORT-format conversion leaves it). It
    checks operator types only; its caveats (e.g. "only 2D Conv") are in the text report."""
    import tempfile

    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "basic.onnx"
        optimize_model(Path(path), optimized, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(optimized).model_with_shape_info
    info = uc.check_nnapi_partitions(model, require_fixed_input_sizes=True)
    conv3d = _rank5_convs(model)
    return {
        "conv3d_nodes": conv3d,  # NNAPI runs only 2-D Conv: these fall back to the CPU
        "nodes": info.num_nodes,
        "supported_nodes": info.num_supported_nodes,
        "partitions": info.num_partitions,
        "unsupported_ops": sorted(info.unsupported_ops),
        "suitability": info.suitability().name,  # YES / MAYBE / NO, ORT's own verdict
    }


def _rank5_convs(model) -> int:
    """Conv nodes over 5-D tensors (Conv3d), from the shape-inferred graph: their weight may
    be an initializer (PTQ, FP32) or the output of a DequantizeLinear (PT2E QAT)."""
    g = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.value_info]}
    ranks.update({i.name: len(i.dims) for i in g.initializer})
    return sum(
        1 for n in g.node if n.op_type in ("Conv", "QLinearConv") and ranks.get(n.input[0]) == 5
    )


def _tool(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout
    )


def export_mobile(
    model: str | Path, out_dir: str | Path, frames: int = 75, batch: int = 1
) -> MobileArtefacts:
    """Write the fixed-shape ONNX, the ORT-format model and the usability report to
    ``out_dir``; a tool that fails leaves its message in ``errors`` (and in the summary)."""
    model, out = Path(model), Path(out_dir)
    if not model.is_file():
        raise FileNotFoundError(f"{model}: no such ONNX model")
    out.mkdir(parents=True, exist_ok=True)
    fixed = fix_shapes(model, out / f"{model.stem}.b{batch}_t{frames}.onnx", batch, frames)
    errors: list[str] = []

    check = _tool("onnxruntime.tools.check_onnx_model_mobile_usability", "--log_level", "info",
                  str(fixed))  # fmt: skip
    report = out / "mobile_usability.txt"
    report.write_text(check.stdout + check.stderr)
    if check.returncode != 0:
        errors.append(f"usability check exited {check.returncode}")
    try:
        nnapi = nnapi_partitions(fixed)
    except Exception as e:  # the checker is ORT's tooling; report, do not crash the export
        nnapi, _ = {}, errors.append(f"NNAPI partition summary failed: {e}")

    ort_model, ort_config, notes = None, None, []
    # "Runtime" keeps nodes NNAPI could take unfused; ORT 1.32 fails it on some QDQ graphs
    # (MatMulAddFusion with a dequantized bias, PT2E's classifier), then "Fixed" is the way
    for style in ("Runtime", "Fixed"):
        conv = _tool("onnxruntime.tools.convert_onnx_models_to_ort", "--optimization_style",
                     style, "--output_dir", str(out), str(fixed))  # fmt: skip
        (out / f"convert_to_ort.{style.lower()}.log").write_text(conv.stdout + conv.stderr)
        suffix = ".with_runtime_opt.ort" if style == "Runtime" else ".ort"
        found = out / f"{fixed.stem}{suffix}"
        if conv.returncode == 0 and found.is_file():
            ort_model = found
            ort_config = next(iter(sorted(out.glob("*.config"))), None)
            break
        notes.append(f"ORT format conversion, {style} style, failed (exit {conv.returncode}): "
                     f"{(conv.stderr or conv.stdout).strip()[-300:]}")  # fmt: skip
    if ort_model is None:
        errors.extend(notes)
        notes = []
    artefacts = MobileArtefacts(out, fixed, ort_model, ort_config, report, nnapi, errors, notes)
    (out / "mobile.json").write_text(json.dumps(artefacts.as_dict(), indent=1) + "\n")
    return artefacts
