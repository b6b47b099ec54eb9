"""Quantization-aware training with PyTorch 2 export (PT2E) and its ONNX export.

The trained FP32 student is captured with ``torch.export`` (dynamic batch and time), fake
quantizers are inserted by the XNNPACK quantizer (INT8, symmetric, per-channel weights; the
same scheme phones' XNNPACK/NNAPI kernels run), the model is fine-tuned briefly with CTC so its
weights adapt to the rounding, then converted to a QDQ graph and exported to ONNX.

PT2E lives in torchao now (torch 2.13 removed ``torch.ao.quantization.quantize_pt2e``), and
its XNNPACK quantizer only under ``torchao.testing`` (the maintained copy moved to ExecuTorch),
so the import is wrapped here, in one place, and torchao is pinned in pyproject.toml.
The quantizer leaves Conv3d in float (it has no 3-D pattern): the stem stays FP32, which is
also what ONNX Runtime runs fastest on CPUs without INT8 Conv3d kernels.

``lengths`` needs no special treatment: the model builds its time mask from it with
``arange < lengths``, which exports as ordinary ops with the time axis symbolic.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm


def _pt2e():
    """torchao's PT2E entry points and the XNNPACK quantizer configured for QAT."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CUDA-only extension load warnings, deprecation notes
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.testing.pt2e._xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
        )
    return prepare_qat_pt2e, convert_pt2e, move_exported_model_to_eval, quantizer


@dataclass
class QATSettings:
    epochs: int = 1
    lr: float = 1e-4  # a nudge: the FP32 weights are already trained
    batch_size: int = 8
    limit_train: int | None = None  # clips per epoch (a time budget on a CPU)
    seed: int = 1234


@dataclass
class QATResult:
    onnx_path: Path
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    torch_vs_onnx_max_abs_diff: float | None = None  # converted torch model vs its ONNX


def _example(frames: int = 75, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    video = torch.randn(batch, 1, frames, 88, 88)
    return video, torch.tensor([frames] + [frames - 5] * (batch - 1))


def _dynamic_shapes():
    batch = torch.export.Dim("batch", min=1, max=256)
    frames = torch.export.Dim("time", min=8, max=2000)
    return ({0: batch, 2: frames}, {0: batch})


def prepare(model: torch.nn.Module) -> torch.fx.GraphModule:
    """Capture the model in training mode (BatchNorm folds into the fake-quantized conv the
    QAT way) and insert the fake quantizers."""
    from mouthmap.compress.export import deployable

    prepare_qat_pt2e, _, _, quantizer = _pt2e()
    model = deployable(model).train()  # a Conv2d stem: the quantizer makes it INT8 too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, _example(), dynamic_shapes=_dynamic_shapes())
        return prepare_qat_pt2e(exported.module(), quantizer)


def fine_tune(
    prepared: torch.fx.GraphModule,
    loader: DataLoader,
    settings: QATSettings,
    progress: bool = True,
) -> list[float]:
    """A few epochs of CTC with the fake quantizers in the loop; returns the batch losses."""
    from mouthmap.train.objective import ctc_loss

    torch.manual_seed(settings.seed)
    opt = torch.optim.AdamW(prepared.parameters(), lr=settings.lr, weight_decay=0.0)
    losses: list[float] = []
    total = settings.epochs * len(loader)
    with tqdm(total=total, desc="QAT fine-tune", unit="batch", disable=not progress) as bar:
        for _ in range(settings.epochs):
            for batch in loader:
                log_probs = _log_probs(prepared(batch.video, batch.video_lengths))
                loss = ctc_loss(log_probs, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(prepared.parameters(), 5.0)
                opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                bar.update()
    return losses


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fake-quantized training graph -> QDQ inference graph (``.eval()`` raises on exported
    models: torchao switches dropout and BatchNorm itself)."""
    _, convert_pt2e, move_exported_model_to_eval, _ = _pt2e()
    move_exported_model_to_eval(prepared)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_pt2e(prepared)


def _log_probs(out: Any) -> torch.Tensor:
    """The CTC log-probs of a model's output (the first of two with a word head)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def export_quantized(
    converted: torch.fx.GraphModule, path: str | Path, word_head: bool = False
) -> Path:
    """The converted model to a QDQ ONNX with dynamic batch and time; checked with onnx.
    Only the dynamo exporter handles the converted graph (the TorchScript one fails).
    ``word_head``: the model also returns the word log-probs (:class:`WithWordHead`)."""
    from mouthmap.compress.export import INPUT_NAMES, OUTPUT_NAME, strip_debug_info
    from mouthmap.runtime.runner import WORDS_OUTPUT

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            converted, _example(), str(path), dynamo=True, external_data=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME, *([WORDS_OUTPUT] if word_head else [])],
            dynamic_shapes=_dynamic_shapes(),
        )  # fmt: skip
    unsigned_activations(path)
    return strip_debug_info(path, short_names=True)


def unsigned_activations(path: str | Path) -> int:
    """Rewrite the activations' INT8 quantize/dequantize pairs as UINT8 (zero point + 128:
    the same values, bit for bit); weights and biases stay signed. Returns how many nodes
    changed.

    Why: ONNX Runtime's x86 CPU kernels take UINT8 activations. It converts a signed Q->DQ
    pair itself, but only where the quantized tensor has one reader; where it has several
    (both branches of a ShuffleNet down-sampling unit, the three kernels of a TCN block) the
    convolutions stay in float between DQ and Q. That made the QAT export about 1.5x slower
    than PTQ (33 vs 22 ms per clip here); with unsigned activations every Conv fuses."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    unsigned: dict[str, str] = {}  # signed zero point -> its unsigned copy
    quantized: set[str] = set()  # tensors a rewritten Q writes
    changed = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue  # a weight or a bias
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != onnx.TensorProto.INT8:
            continue
        if zp.name not in unsigned:
            value = numpy_helper.to_array(zp).astype(np.int16) + 128
            copy = numpy_helper.from_array(value.astype(np.uint8), f"{zp.name}_u8")
            graph.initializer.append(copy)
            unsigned[zp.name] = copy.name
        node.input[2] = unsigned[zp.name]
        if node.op_type == "QuantizeLinear":
            quantized.add(node.output[0])
        changed += 1
    for value in graph.value_info:
        if value.name in quantized:
            value.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    read = {x for node in graph.node for x in node.input}
    unread = [i for i in graph.initializer if i.name in unsigned and i.name not in read]
    for init in unread:  # the signed zero points nothing reads any more
        graph.initializer.remove(init)
    onnx.save(model, str(path))
    return changed


def _max_abs_diff(model: torch.nn.Module, path: Path, frames: int = 61) -> float:
    from mouthmap.runtime.runner import OnnxRunner

    video, lengths = _example(frames)
    with torch.no_grad():
        ref = _log_probs(model(video, lengths)).numpy()
    got = OnnxRunner(path).run(video.numpy(), lengths.numpy())
    valid = np.arange(frames)[None, :] < lengths.numpy()[:, None]
    return float(np.abs(ref - got)[valid].max())


def train_loader(
    prepared_dir: str | Path, mean: float, std: float, settings: QATSettings, exclude=()
) -> DataLoader:
    """Training clips with the trainer's augmentation, normalised like the package."""
    from mouthmap.data import dataset as ds

    data = ds.GridDataset(
        prepared_dir, ("train",), ds.train_transforms(), ds.Normalisation(mean, std),
        seed=settings.seed, exclude=exclude, limit=settings.limit_train,
    )  # fmt: skip
    if len(data) == 0:
        raise ValueError(f"{prepared_dir}: no prepared train clips for the QAT fine-tune")
    return DataLoader(data, batch_size=settings.batch_size, shuffle=True, collate_fn=ds.collate)


def quantize_qat(
    checkpoint_path: str | Path,
    prepared_dir: str | Path,
    out: str | Path,
    settings: QATSettings | None = None,
    exclude=(),
    progress: bool = True,
) -> QATResult:
    """Checkpoint -> QAT fine-tune -> INT8 QDQ ONNX at ``out``. A run's word head goes into
    the INT8 model too, as the FP32 export has it (the package's decoder reads it); the
    fine-tune is CTC only, so the head is quantized as it is, not retrained."""
    from mouthmap.compress.export import WithWordHead
    from mouthmap.train.trainer import load_for_inference, word_head

    s = settings or QATSettings()
    t0 = time.perf_counter()
    model, state = load_for_inference(checkpoint_path)
    head = word_head(state)
    if head is not None:
        model = WithWordHead(model, head).eval()
    norm = state["normalisation"]
    loader = train_loader(prepared_dir, norm["mean"], norm["std"], s, exclude)
    prepared = prepare(model)
    losses = fine_tune(prepared, loader, s, progress)
    converted = convert(prepared)
    path = export_quantized(converted, out, word_head=head is not None)
    return QATResult(
        path, len(losses), time.perf_counter() - t0, losses, _max_abs_diff(converted, path)
    )
