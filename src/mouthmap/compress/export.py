"""ONNX export with dynamic batch and time axes, checked and compared with PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mouthmap.runtime.runner import WORDS_OUTPUT

INPUT_NAMES = ("video", "lengths")
OUTPUT_NAME = "log_probs"


class WithWordHead(torch.nn.Module):
    """``model`` plus the run's per-frame word head (the alignment aid), as one graph with
    two outputs: the CTC log-probs and the word log-probs that the slot decoder reads
    (:mod:`mouthmap.decode.slots`). Consumers that read only the first output see no change."""

    def __init__(self, model: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, video: torch.Tensor, lengths: torch.Tensor):
        log_probs, features = self.model(video, lengths, return_features=True)
        return log_probs, self.head(features).log_softmax(-1)


def deployable(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy of ``model`` in the form that is exported: Conv3d stems run as the
    equal Conv2d over stacked frames (fast INT8 kernels in ONNX Runtime, and the only
    convolution NNAPI runs); the trained model itself is left as it is."""
    import copy

    from mouthmap.models.frontends import use_frame_stacks

    model = copy.deepcopy(model).eval()
    use_frame_stacks(model)
    return model


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    frames: int = 75,
    word_head: torch.nn.Module | None = None,
) -> Path:
    """Export ``model(video (B,1,T,88,88), lengths (B,)) -> log_probs (B,T,C)`` to ONNX; with
    ``word_head`` (see :func:`mouthmap.train.trainer.word_head`) also ``word_log_probs``."""

    if getattr(model, "modality", "video") != "video":
        raise ValueError(
            f"only visual models export to a model package; this one reads "
            f"{model.modality} (an audio teacher serves distillation: `mouthmap distill`)"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = deployable(model)
    outputs = [OUTPUT_NAME]
    if word_head is not None:
        import copy

        model = WithWordHead(model, copy.deepcopy(word_head).eval())
        outputs.append(WORDS_OUTPUT)
    video = torch.randn(2, 1, frames, 88, 88)
    lengths = torch.tensor([frames, frames - 5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if any(isinstance(m, torch.nn.RNNBase) for m in model.modules()):
            _export_recurrent(model, (video, lengths), path, outputs)
        else:
            batch = torch.export.Dim("batch", min=1, max=256)
            time = torch.export.Dim("time", min=8, max=2000)
            torch.onnx.export(
                model,
                (video, lengths),
                str(path),
                dynamo=True,
                external_data=False,  # one self-contained file per model
                input_names=list(INPUT_NAMES),
                output_names=outputs,
                dynamic_shapes={"video": {0: batch, 2: time}, "lengths": {0: batch}},
            )
    return strip_debug_info(path)


def _export_recurrent(
    model: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, outputs: list[str]
) -> None:
    """Models with an LSTM (the teacher's Bi-LSTM back end) go through the TorchScript
    exporter: ``torch.export`` fixes an LSTM's time axis to the example's length, so the
    dynamo graph fails on any other clip length; TorchScript writes ONNX's own LSTM op with
    both axes free."""
    axes = {"video": {0: "batch", 2: "time"}, "lengths": {0: "batch"}}
    axes.update({name: {0: "batch", 1: "time"} for name in outputs})
    torch.onnx.export(
        model,
        args,
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=list(INPUT_NAMES),
        output_names=outputs,
        dynamic_axes=axes,
    )


def max_abs_difference(
    model: torch.nn.Module,
    path: str | Path,
    frames: int = 61,
    word_head: torch.nn.Module | None = None,
) -> float:
    """Largest |PyTorch - ONNX Runtime| over the outputs (log-probs, and the word log-probs
    with ``word_head``) of a random 2-clip batch."""
    import onnxruntime as ort

    video = torch.randn(2, 1, frames, 88, 88)
    lengths = torch.tensor([frames, frames - 7])
    model = model.eval() if word_head is None else WithWordHead(model, word_head).eval()
    with torch.no_grad():
        ref = model(video, lengths)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"video": video.numpy(), "lengths": lengths.numpy()})
    valid = np.arange(frames)[None, :] < lengths.numpy()[:, None]  # padded frames may differ
    return max(float(np.abs(r.numpy() - g)[valid].max()) for r, g in zip(refs, got, strict=False))


def strip_debug_info(path: str | Path, short_names: bool = False) -> Path:
    """Drop the exporter's per-node debug metadata (FX node text, stack traces, class
    hierarchies) and doc strings: about 0.3-0.65 MB of a 1.5 MB INT8 model, none of it read
    by any runtime; with ``short_names`` also :func:`shorten_names`. Then check the model
    (full check, with shapes)."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        del value.metadata_props[:]
    model.graph.doc_string = ""
    if short_names:
        shorten_names(model.graph)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return Path(path)


def shorten_names(graph) -> None:
    """Rename every node and every tensor but the graph's inputs and outputs to a short
    generated name (``n12``, ``t3f``, ``w7``): the computation is untouched. A quantizer's
    names are long (``model.backend.blocks.0.layers.0.0.weight_DequantizeLinear_Output``) and
    each is written at its producer and every consumer: about 0.1 MB of a 1.5 MB INT8 model,
    which is what a phone downloads and maps. Graphs with subgraphs (If, Loop) are left as
    they are, since their bodies may read outer names."""
    import onnx

    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):  # fmt: skip
        return
    keep = {v.name for v in [*graph.input, *graph.output]} | {""}  # "" = an omitted input
    new: dict[str, str] = {}

    def short(name: str, prefix: str) -> str:
        if name in keep:
            return name
        if name not in new:
            new[name] = f"{prefix}{len(new):x}"
        return new[name]

    for init in graph.initializer:
        init.name = short(init.name, "w")
    for i, node in enumerate(graph.node):
        node.name = f"n{i:x}"
        node.input[:] = [short(x, "t") for x in node.input]
        node.output[:] = [short(x, "t") for x in node.output]
    for value in graph.value_info:
        value.name = short(value.name, "t")
