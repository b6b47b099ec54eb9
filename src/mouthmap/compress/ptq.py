"""Post-training INT8 quantization of the FP32 ONNX model with ONNX Runtime.

Static: QDQ format, per-channel weights, activation ranges calibrated on real training clips.
Dynamic: weights only, activation ranges at run time; the cheap baseline. ONNX Runtime's
dynamic quantization covers MatMul/Gemm-like ops (and Conv only in the QOperator form), so on a
convolutional model it shrinks little: it is here to be measured, not assumed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mouthmap.compress.clips import Clip
from mouthmap.compress.export import strip_debug_info


def _reader(clips: Iterable[Clip], same_length: bool = False):
    from onnxruntime.quantization import CalibrationDataReader

    class ClipReader(CalibrationDataReader):
        """One clip per calibration batch, at its own length (the time axis is dynamic)."""

        def __init__(self, clips: Iterable[Clip]):
            clips = list(clips)
            if same_length:  # histogram calibrators stack every batch's tensors into one array
                n = min(len(c.frames) for c in clips)
                clips = [Clip(c.id, c.text, c.frames[:n]) for c in clips]
            self._it = iter(clips)

        def get_next(self) -> dict[str, np.ndarray] | None:
            c = next(self._it, None)
            if c is None:
                return None
            return {"video": c.frames[None, None].astype(np.float32),
                    "lengths": np.array([len(c.frames)], dtype=np.int64)}  # fmt: skip

    return ClipReader(clips)


def float_stem_nodes(path: str | Path) -> list[str]:
    """Nodes to keep in float: every 3-D convolution plus the nodes between it and the graph
    input and between it and the next convolution. ORT has no fast INT8 Conv3d kernel (a
    quantized stem made the model six times slower, STACK.md), and excluding the Conv3d alone
    is not enough: with quantized tensors on both sides ORT's optimiser fuses it into a 3-D
    QLinearConv anyway. The float stem's neighbours (mask, ReLU, max-pool) stay float with it."""
    import onnx

    graph = onnx.load(str(path)).graph
    rank = {i.name: len(i.dims) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    keep: dict[str, None] = {}
    for conv in graph.node:
        if conv.op_type != "Conv" or rank.get(conv.input[1]) != 5:
            continue
        keep[conv.name] = None
        todo = [producer[conv.input[0]]] if conv.input[0] in producer else []
        while todo:  # back to the graph input
            n = todo.pop()
            if n.name not in keep and n.op_type != "Conv":
                keep[n.name] = None
                todo += [producer[i] for i in n.input if i in producer]
        todo = [c for o in conv.output for c in consumers.get(o, [])]
        while todo:  # forward to the next convolution(s)
            n = todo.pop()
            if n.name not in keep and n.op_type != "Conv":
                keep[n.name] = None
                todo += [c for o in n.output for c in consumers.get(o, [])]
    return list(keep)


def classifier_nodes(path: str | Path) -> list[str]:
    """The CTC classifier (the last MatMul/Gemm before the ``log_probs`` output) and the
    nodes between it and that output (bias, log-softmax). In float they cost nothing, and
    8-bit logits flip close argmax decisions: on the e28 student, val WER +1.1 points against
    +1.5 with the classifier quantized as well. A word head's classifier (second output) is
    quantized like the rest: it is twice the size and votes over whole words."""
    import onnx

    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    keep: dict[str, None] = {}
    todo, found = [graph.output[0].name], False
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in keep:
            continue
        keep[node.name] = None
        if node.op_type in ("MatMul", "Gemm"):  # the classifier ends the walk back
            found = True
        else:
            todo += list(node.input)
    return list(keep) if found else []


@dataclass
class QuantizeSettings:
    """uint8 activations and int8 per-channel weights (ORT's choice for x86). ORT suggests 7-bit
    weights (``reduce_range``) on CPUs without VNNI against saturation; measured on the e28
    student it cost accuracy (val WER +2.4 points against +1.5 without), so it is off."""

    per_channel: bool = True
    activation_type: str = "uint8"  # uint8 | int8 (int8: ARM CPUs and NPUs prefer symmetric)
    reduce_range: bool = False
    keep_conv3d_float: bool = True
    calibrate_method: str = "minmax"  # minmax | entropy | percentile
    keep_classifier_float: bool = True


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if name not in types:
        raise ValueError(f"unknown activation type {name!r}; use uint8 or int8")
    return types[name]


def preprocess(fp32: Path, out: Path) -> Path:
    """ORT's quantization pre-processing: graph optimisation (BatchNorm folding) and shape
    inference, so more tensors get quantization parameters."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=False)
    return out


def quantize_static_qdq(
    fp32: str | Path,
    out: str | Path,
    calibration: Iterable[Clip],
    settings: QuantizeSettings | None = None,
) -> Path:
    """Static INT8 (QDQ, per-channel) calibrated on ``calibration`` clips; checked with onnx."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    s = settings or QuantizeSettings()
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}  # fmt: skip
    if s.calibrate_method not in methods:
        raise ValueError(f"unknown calibration method {s.calibrate_method!r}: {', '.join(methods)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(Path(fp32), Path(tmp) / "pre.onnx")
        exclude = float_stem_nodes(pre) if s.keep_conv3d_float else []
        exclude += classifier_nodes(pre) if s.keep_classifier_float else []
        quantize_static(
            str(pre), str(out), _reader(calibration, s.calibrate_method != "minmax"),
            quant_format=QuantFormat.QDQ, per_channel=s.per_channel,
            reduce_range=s.reduce_range, activation_type=_quant_type(s.activation_type),
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
            calibrate_method=methods[s.calibrate_method],
        )  # fmt: skip
    return strip_debug_info(out, short_names=True)


def quantize_dynamic_int8(fp32: str | Path, out: str | Path) -> Path:
    """Dynamic INT8: weights quantized ahead of time, activations per run (no calibration)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = preprocess(Path(fp32), Path(tmp) / "pre.onnx")
        quantize_dynamic(str(pre), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return strip_debug_info(out, short_names=True)


def op_counts(path: str | Path) -> dict[str, int]:
    """Operator histogram of a graph: shows what a quantizer actually quantized."""
    import collections

    import onnx

    return dict(collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node))
