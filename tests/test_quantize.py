"""INT8 for the edge: PTQ, QAT and dynamic quantization of a package, the choice of the
deployable model, the benchmark and the mobile artefacts, as a user of the CLI meets them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import sample_clip, write_params
from mouthmap.cli import app
from mouthmap.package import DEFAULT_PACKAGE

runner = CliRunner()


def _cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def _weight_bytes(path: Path) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def _conv_ranks(path: Path) -> list[int]:
    """The rank of every convolution's input (5: a Conv3d), from ORT's shape inference."""
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(onnx.load(str(path))).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.input, *graph.value_info]}
    return [ranks.get(n.input[0], -1) for n in graph.node if n.op_type == "Conv"]


@pytest.fixture(scope="module")
def int8_params(prepared_sample, tiny_package, tmp_path_factory) -> Path:
    """params.yaml for quantizing a copy of the tiny package (QAT kept to two short batches)."""
    root = tmp_path_factory.mktemp("int8")
    return write_params(
        root,
        data={"prepared_dir": str(prepared_sample / "prepared")},
        package={"dir": str(tiny_package)},
        quantize={"out_dir": str(root / "int8"), "calibration_clips": 6, "qat_limit_train": 4,
                  "qat_batch_size": 2},
    )  # fmt: skip


@pytest.fixture(scope="module")
def quantized(int8_params, tiny_package) -> tuple[Path, dict]:
    """The tiny package quantized every way (a copy: the session's package stays FP32)."""
    from mouthmap import stages
    from mouthmap.config import load_params

    ckpt = tiny_package.parent / "runs" / "train" / "best.pt"
    return stages.quantize_model(load_params(int8_params), checkpoint_path=ckpt, progress=False)


def test_int8_variants_are_valid_smaller_and_take_any_clip_length(quantized, tiny_package):
    from mouthmap.runtime.runner import OnnxRunner

    root, report = quantized
    fp32 = tiny_package / "model_fp32.onnx"
    assert set(report["methods"]) == {"ptq", "qat", "dynamic"}
    for method, expect in [("ptq", "QuantizeLinear"), ("qat", "QuantizeLinear"),
                           ("dynamic", "DynamicQuantizeLinear")]:  # fmt: skip
        path = root / f"model_int8_{method}.onnx"
        onnx.checker.check_model(str(path), full_check=True)
        assert expect in _ops(path), method
        # the tiny model's weights are a small part of its file; they shrink about 4x
        assert path.stat().st_size < fp32.stat().st_size, method
        assert _weight_bytes(path) < 0.4 * _weight_bytes(fp32), method
        # generated short names (shorten_names), only the inputs and outputs keep theirs
        assert all(len(n.name) <= 6 for n in onnx.load(str(path)).graph.node), method
        run = OnnxRunner(path)
        for frames in (23, 75):  # the time axis stayed dynamic, the batch too
            out = run.run(np.zeros((2, 1, frames, 88, 88), np.float32), np.array([frames, 9]))
            assert out.shape == (2, frames, 28) and np.isfinite(out).all()
    # the Conv3d stem is exported as the equal Conv2d over stacked frames: ORT and NNAPI have
    # fast (INT8) 2-D kernels, none for 3-D; every INT8 variant quantizes it
    for f in ("model_fp32.onnx", "model_int8_ptq.onnx", "model_int8_qat.onnx"):
        ranks = _conv_ranks(root / f)
        assert ranks and 5 not in ranks, (f, ranks)


def _float_ops_at_run_time(path: Path, tmp_path: Path) -> dict[str, int]:
    """Conv nodes ONNX Runtime still runs in float once it has fused the QDQ
    groups into integer kernels (read from the graph it optimizes for this CPU, with the
    runner's optimizer settings)."""
    import collections

    import onnxruntime as ort

    from mouthmap.runtime.runner import NO_QDQ_PROPAGATION

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / f"optimized_{path.name}")
    cpu = ["CPUExecutionProvider"]
    ort.InferenceSession(str(path), opts, providers=cpu, disabled_optimizers=NO_QDQ_PROPAGATION)
    graph = onnx.load(opts.optimized_model_filepath).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    return {op: ops[op] for op in ("Conv", "FusedConv") if ops[op]}


def test_every_convolution_of_the_int8_models_runs_on_integer_kernels(quantized, tmp_path):
    """A Conv left in float between DQ and Q costs time: the QAT export once kept 18 of the
    student's 71 (each one whose input feeds two branches) and ran 1.5x slower than PTQ."""
    root, _ = quantized
    for method in ("ptq", "qat"):
        path = root / f"model_int8_{method}.onnx"
        assert _float_ops_at_run_time(path, tmp_path) == {}, method


def test_short_names_shrink_a_model_and_leave_its_outputs_bit_for_bit(tiny_package, tmp_path):
    import onnxruntime as ort

    from mouthmap.compress.export import strip_debug_info

    fp32 = tiny_package / "model_fp32.onnx"
    short = tmp_path / "short.onnx"
    shutil.copy(fp32, short)
    strip_debug_info(short, short_names=True)
    assert short.stat().st_size < fp32.stat().st_size
    io = [
        [v.name for v in [*g.input, *g.output]]
        for g in (onnx.load(str(p)).graph for p in (fp32, short))
    ]
    assert io[0] == io[1]  # the package's contract (video, lengths -> log_probs, words)
    feeds = {"video": np.random.default_rng(0).random((2, 1, 30, 88, 88), dtype=np.float32),
             "lengths": np.array([30, 21])}  # fmt: skip
    cpu = ["CPUExecutionProvider"]
    before, after = (
        ort.InferenceSession(str(p), providers=cpu).run(None, feeds) for p in (fp32, short)
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_int8_log_probs_follow_fp32_on_real_clips(quantized, prepared_sample):
    """A 1-epoch model's transcripts are mostly empty, so equal transcripts would prove little.
    Instead: how each symbol's log-prob moves over time (its mean per clip removed: a collapsed
    INT8 model keeps only that) must be followed by INT8: the centred INT8 log-probs correlate
    with the centred FP32 ones (PTQ; QAT also changes the weights). The tiny model's variation
    is small (about 1e-3), so INT8 noise is of the same order; a collapsed or scrambled model
    would correlate near 0."""
    from mouthmap.compress.clips import load_clips
    from mouthmap.package import ModelPackage
    from mouthmap.runtime.runner import OnnxRunner

    root, report = quantized
    pkg = ModelPackage.load(root)
    clips = load_clips(prepared_sample / "prepared", "val", pkg.mean, pkg.std)
    fp32 = OnnxRunner(pkg.fp32_path)
    ref = np.concatenate([(x := fp32.clip(c.frames)) - x.mean(0) for c in clips]).ravel()
    run = OnnxRunner(root / "model_int8_ptq.onnx")
    got = np.concatenate([(y := run.clip(c.frames)) - y.mean(0) for c in clips]).ravel()
    corr = float(np.corrcoef(ref, got)[0, 1])
    assert corr > 0.6, corr
    # QAT fine-tunes the weights first, so its outputs move away from FP32 by design; its
    # ONNX must still run what the converted PyTorch model computes
    qat = report["methods"]["qat"]
    assert qat["torch_vs_onnx_max_abs_diff"] < 0.05
    for method in ("ptq", "qat"):
        c = report["methods"][method]["comparison"]
        assert c["frame_agreement"] > 0.8 and c["clips"] == len(clips)


def test_the_better_int8_becomes_model_onnx_and_transcribe_runs_it(quantized, tmp_path):
    from mouthmap.package import ModelPackage
    from mouthmap.runtime.runner import OnnxRunner
    from mouthmap.runtime.transcriber import Transcriber

    root, report = quantized
    pkg = ModelPackage.load(root)
    chosen = report["chosen"]
    assert chosen in ("ptq", "qat") and pkg.meta["quantization"]["chosen"] == chosen
    assert pkg.model_path.read_bytes() == (root / f"model_int8_{chosen}.onnx").read_bytes()
    assert _weight_bytes(pkg.fp32_path) > 2.5 * _weight_bytes(pkg.model_path)

    rois = np.random.default_rng(0).integers(0, 255, (30, 96, 96), dtype=np.uint8)
    default = Transcriber(root, decoder="greedy").log_probs(rois)
    int8 = Transcriber(root, decoder="greedy", model_file=f"model_int8_{chosen}.onnx")
    fp32 = Transcriber(root, decoder="greedy", model_file="model_fp32.onnx")
    assert np.array_equal(default, int8.log_probs(rois))
    assert not np.array_equal(default, fp32.log_probs(rois))  # INT8, not FP32, by default
    assert isinstance(int8.runner, OnnxRunner)

    video, _ = sample_clip()
    out = _cli("transcribe", video, "--model", root, "--decoder", "greedy", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["frames"] == 75


def test_choice_goes_to_the_lower_wer_and_never_to_dynamic_when_ptq_or_qat_exist():
    from mouthmap.compress.quantize import choose

    def r(wer_beam, wer_greedy, ms=20.0, size=1000):
        return {"bytes": size, "latency_ms": ms,
                "comparison": {"wer_beam": wer_beam, "wer_greedy": wer_greedy}}  # fmt: skip

    assert choose({"ptq": r(0.30, 0.4), "qat": r(0.25, 0.5, ms=30)}) == "qat"
    assert choose({"ptq": r(0.25, 0.4), "qat": r(0.25, 0.5)}) == "ptq"  # tie: greedy decides
    assert choose({"ptq": r(0.25, 0.4, ms=30), "qat": r(0.25, 0.4, ms=25)}) == "qat"  # then speed
    assert choose({"ptq": r(None, 0.4), "dynamic": r(None, 0.1)}) == "ptq"
    assert choose({"dynamic": r(None, 0.1)}) == "dynamic"


def test_quantize_cli_prints_the_table_and_refuses_bad_input(int8_params, tmp_path, tiny_package):
    out = tmp_path / "ptq_only"
    res = _cli("quantize", "--method", "ptq", "--out", out, "-p", int8_params)
    assert res.exit_code == 0, res.output
    assert "model.onnx <- ptq" in res.output and (out / "model_int8_ptq.onnx").is_file()
    assert not (out / "model_int8_qat.onnx").exists()
    header, ptq_row = res.output.splitlines()[-4:-2]  # method row, then the fp32 row
    assert "ms/clip" in header and ptq_row.split()[0] == "ptq" and float(ptq_row.split()[3]) > 0

    bad = _cli("quantize", "--method", "fp4", "--out", out, "-p", int8_params)
    assert bad.exit_code == 2 and "quantize.method" in bad.output
    no_ckpt = _cli("quantize", "--method", "qat", "--checkpoint", tmp_path / "none.pt",
                   "--out", out, "-p", int8_params)  # fmt: skip
    assert no_ckpt.exit_code == 2 and "none.pt not found" in no_ckpt.output
    not_pkg = _cli("quantize", "--model", tmp_path, "--method", "ptq", "--out", tmp_path / "x",
                   "-p", int8_params)  # fmt: skip
    assert not_pkg.exit_code == 2 and "not a MouthMap model package" in not_pkg.output


def test_qat_starts_from_the_checkpoint_a_released_package_keeps(int8_params, tiny_package,
                                                                  tmp_path):  # fmt: skip
    from mouthmap.package import ModelPackage, keep_checkpoint

    pkg = tmp_path / "released"
    shutil.copytree(tiny_package, pkg)
    # int8_params' train.out_dir holds no best.pt: without a kept checkpoint QAT has none
    lost = _cli("quantize", "--model", pkg, "--method", "qat", "--out", tmp_path / "a",
                "-p", int8_params)  # fmt: skip
    assert lost.exit_code == 2 and "best.pt not found" in lost.output
    keep_checkpoint(ModelPackage.load(pkg), tiny_package.parent / "runs" / "train" / "best.pt")
    res = _cli("quantize", "--model", pkg, "--method", "qat", "--out", tmp_path / "b",
               "-p", int8_params)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "model.onnx <- qat" in res.output and (tmp_path / "b" / "model_int8_qat.onnx").is_file()


def test_unknown_provider_is_refused_and_names_the_known_ones(tiny_package):
    from mouthmap.runtime.runner import OnnxRunner, ProviderError

    with pytest.raises(ProviderError, match="cpu, nnapi, qnn, coreml, cuda"):
        OnnxRunner(tiny_package / "model.onnx", provider="tpu")
    video, _ = sample_clip()
    res = _cli("transcribe", video, "--model", tiny_package, "--provider", "tpu")
    assert res.exit_code == 2 and "unknown execution provider 'tpu'" in res.output


@pytest.mark.parametrize("name", ["coreml", "nnapi"])
def test_a_provider_missing_from_this_build_falls_back_to_cpu_with_a_warning(tiny_package, name):
    from mouthmap.runtime.runner import PROVIDERS, OnnxRunner, ProviderFallbackWarning

    if PROVIDERS[name] in __import__("onnxruntime").get_available_providers():
        pytest.skip(f"this ONNX Runtime build has {name}")
    with pytest.warns(ProviderFallbackWarning, match=rf"{name} .*not in this ONNX Runtime build"):
        run = OnnxRunner(tiny_package / "model.onnx", provider=name)
    assert run.provider == "CPUExecutionProvider"
    assert run.clip(np.zeros((10, 88, 88), np.float32)).shape == (10, 28)


def test_bench_quick_writes_json_markdown_and_plot_with_every_row(
    quantized, int8_params, tiny_package, tmp_path
):
    root, _ = quantized
    student = tiny_package.parent / "runs" / "train" / "best.pt"
    out = tmp_path / "bench"
    res = _cli("bench", "--model", root, "--checkpoint", student, "--quick", "--frames", 25,
               "--out", out, "-p", int8_params)  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((out / "bench.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["PyTorch FP32 (eager)", "ORT FP32", "ORT INT8 static (PTQ)",
                     "ORT INT8 (QAT)", "ORT INT8 dynamic", "Teacher FP32 (eager)"]  # fmt: skip
    for r in report["rows"]:
        assert set(r["latency_ms"]) == {"1", "2"} and r["latency_ms"]["1"]["p50"] > 0
        assert r["throughput_clips_s"] > 0 and r["peak_rss_mb"] > 20 and r["bytes"] > 0
    teacher = report["rows"][-1]
    assert not teacher["trained"] and teacher["wer_greedy"] is None
    assert "untrained teacher architecture" in " ".join(report["notes"])
    assert all(r["wer_greedy"] is not None for r in report["rows"][:-1])
    torch_row, ort_row = report["rows"][0], report["rows"][1]
    assert torch_row["wer_greedy"] == ort_row["wer_greedy"]  # the FP32 ONNX is the same model
    assert teacher["bytes"] > 10 * report["rows"][2]["bytes"]
    md = (out / "bench.md").read_text()
    assert all(n in md for n in names) and "| target |" in md
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not DEFAULT_PACKAGE.is_dir(), reason="no released package under models/")
def test_bench_scores_a_model_with_a_word_head_as_evaluate_does(prepared_sample):
    """The released student reads its word head: bench's beam WER for the deployed INT8 file
    and for the PyTorch checkpoint is the package decoder's, the one `evaluate` reports."""
    from mouthmap.compress.clips import load_clips
    from mouthmap.decode.beam import BeamDecoder
    from mouthmap.evaluation.evaluate import evaluate_package
    from mouthmap.package import ModelPackage
    from mouthmap.runtime import bench

    pkg = ModelPackage.load(DEFAULT_PACKAGE)
    assert pkg.meta["decoder"]["word_weight"] > 0
    prepared = prepared_sample / "prepared"
    clips = load_clips(prepared, "test", pkg.mean, pkg.std, None)
    beam = BeamDecoder(pkg.lm_dir, **pkg.meta["decoder"])
    evaluated = evaluate_package(pkg.root, prepared, ("test",), ("beam",))["test"]["beam"]["wer"]
    for v in (bench.Variant("ORT INT8", "onnx", str(pkg.model_path)),
              bench.Variant("PyTorch FP32", "torch", str(pkg.checkpoint_path))):  # fmt: skip
        run, loaded, _, head = bench._forward(v)
        run_all = bench._with_words(v, loaded, run, head)
        _, words = run_all(clips[0].frames[None, None], np.array([len(clips[0].frames)]))
        assert words is not None and words.shape[-1] == 52, v.name
        scored = bench.measure_wer(run_all, clips, beam)
        if v.kind == "onnx":
            assert scored["wer_beam"] == evaluated


def test_export_mobile_writes_the_ort_model_and_the_nnapi_report(quantized, tmp_path):
    root, _ = quantized
    res = _cli("export-mobile", "--model", root, "--out", tmp_path / "m", "--frames", 30)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "m" / "mobile.json").read_text())
    assert Path(summary["ort_model"]).stat().st_size > 0
    assert summary["nnapi"]["nodes"] > summary["nnapi"]["supported_nodes"] > 0
    assert summary["nnapi"]["conv3d_nodes"] == 0  # the stem runs as a 2-D convolution
    assert "NNAPI" in (tmp_path / "m" / "mobile_usability.txt").read_text()
    fixed = onnx.load(summary["fixed_model"]).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in fixed] == [1, 1, 30, 88, 88]


def test_quantize_params_are_validated(tmp_path):
    from mouthmap.config import ParamsError, load_params

    p = tmp_path / "params.yaml"
    p.write_text("quantize:\n  calibration_clips: 0\n")
    with pytest.raises(ParamsError, match="quantize.calibration_clips"):
        load_params(p)
    p.write_text("quantize:\n  select_split: test\n")
    with pytest.raises(ParamsError, match="quantize.select_split"):
        load_params(p)
