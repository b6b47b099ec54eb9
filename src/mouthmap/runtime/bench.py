"""``mouthmap bench``: every way of running the student side by side, plus the teacher.

One command, one machine, the same clips: PyTorch FP32 eager, ONNX Runtime FP32, ORT INT8
(static PTQ, QAT, dynamic) and the teacher (PyTorch FP32 eager). Per variant: file size,
parameters, latency per clip (p50/p95) at 1 and 2 threads, throughput at batch 8, peak RSS
and WER on the test split (greedy, and the package's beam+LM decoder, which reads the
model's word head where it has one). Latency and WER are measured in this process;
peak RSS in a fresh child process per variant (see :func:`peak_rss`), because a process's
peak only grows and would otherwise carry every earlier variant. This module imports no
torch at the top so that the ORT children do not pay for it.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CLIP_SECONDS_PER_FRAME = 1 / 25


@dataclass
class Variant:
    name: str
    kind: str  # "torch" (a checkpoint, or a registered model name when untrained) | "onnx"
    source: str  # checkpoint path, model name or ONNX path
    trained: bool = True  # False: random weights; size and speed only, no WER
    note: str = ""


@dataclass
class BenchSettings:
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 20  # timed runs per latency figure (after ``warmup``)
    warmup: int = 3
    frames: int = 75  # one 3 s GRID clip at 25 fps
    batch: int = 8
    batch_repeats: int = 3
    test_clips: int | None = None  # None: the whole test split
    beam: bool = True
    rss: bool = True


@dataclass
class Row:
    name: str
    kind: str
    source: str
    trained: bool
    note: str
    bytes: int
    parameters: int
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # threads -> p50/p95
    throughput_clips_s: float | None = None
    throughput_threads: int | None = None
    peak_rss_mb: float | None = None
    wer_greedy: float | None = None
    wer_beam: float | None = None
    test_clips: int | None = None


# --- loading -------------------------------------------------------------------------------


def _load_torch(v: Variant):
    """(model in eval mode, normalisation dict or None, word head or None) for a torch
    variant, from one read of its checkpoint."""
    from mouthmap.models import build_model
    from mouthmap.train.trainer import load_for_inference, word_head

    if v.trained:
        model, state = load_for_inference(v.source)
        return model, state.get("normalisation"), word_head(state)
    return build_model(v.source).eval(), None, None


def _forward(
    v: Variant,
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], Any, Any, Any]:
    """``(video, lengths) -> log_probs`` for the variant, the loaded object, the input
    normalisation of a checkpoint (None: the package's) and its word head (None: none, or an
    ONNX variant, whose graph carries it)."""
    if v.kind == "onnx":
        from mouthmap.runtime.runner import OnnxRunner

        runner = OnnxRunner(v.source)
        return runner.run, runner, None, None
    import torch

    model, norm, head = _load_torch(v)

    def run(video: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(video), torch.from_numpy(lengths)).numpy()

    return run, model, norm, head


def _size_and_parameters(v: Variant, loaded: Any) -> tuple[int, int]:
    """Bytes of the deployable file (ONNX) or of the FP32 state dict (PyTorch), and the
    parameters (ONNX: the elements of its float and integer weights)."""
    if v.kind == "onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(v.source).graph
        params = sum(
            numpy_helper.to_array(i).size
            for i in graph.initializer
            if len(i.dims) >= 1 and i.data_type != onnx.TensorProto.INT64
        )
        return Path(v.source).stat().st_size, int(params)
    import torch

    buf = io.BytesIO()
    torch.save(loaded.state_dict(), buf)
    return buf.getbuffer().nbytes, sum(p.numel() for p in loaded.parameters())


# --- timing --------------------------------------------------------------------------------


def _percentiles(times: list[float]) -> dict[str, float]:
    ms = 1000 * np.asarray(times)
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))}


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _threaded(v: Variant, loaded: Any, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    """The variant's forward pinned to ``threads`` intra-op threads."""
    if v.kind == "onnx":
        from mouthmap.runtime.runner import OnnxRunner

        return OnnxRunner(v.source, threads=threads).run
    import torch

    def run(video: np.ndarray, lengths: np.ndarray):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            return loaded(torch.from_numpy(video), torch.from_numpy(lengths))

    return run


def measure_speed(v: Variant, loaded: Any, clip: np.ndarray, s: BenchSettings) -> dict[str, Any]:
    """Latency of one clip at each thread count; throughput of a batch at the most threads."""
    video, lengths = clip[None, None], np.array([len(clip)], dtype=np.int64)
    out: dict[str, Any] = {"latency_ms": {}}
    for n in s.threads:
        run = _threaded(v, loaded, n)
        out["latency_ms"][str(n)] = _percentiles(
            time_calls(lambda run=run: run(video, lengths), s.repeats, s.warmup)
        )
    n = max(s.threads)
    run = _threaded(v, loaded, n)
    batch = np.repeat(video, s.batch, axis=0)
    blen = np.full(s.batch, len(clip), dtype=np.int64)
    t = time_calls(lambda: run(batch, blen), s.batch_repeats, 1)
    out["throughput_clips_s"] = float(s.batch / np.median(t))
    out["throughput_threads"] = n
    return out


# --- peak memory in a child process ----------------------------------------------------------


def peak_rss(v: Variant, s: BenchSettings, timeout: float = 600) -> float:
    """Peak resident memory (MB) of a fresh Python process that loads the variant and runs one
    clip and one batch, as a deployment would: ``ru_maxrss`` of that child. A PyTorch row pays
    for importing torch, an ORT row imports only onnxruntime and numpy."""
    spec = json.dumps({"variant": asdict(v), "frames": s.frames, "batch": s.batch,
                       "threads": max(s.threads)})  # fmt: skip
    code = "from mouthmap.runtime.bench import _rss_child; _rss_child()"
    env = {**os.environ, "OMP_NUM_THREADS": str(max(s.threads))}
    proc = subprocess.run(
        [sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=timeout,
        env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {v.name} failed: {proc.stderr.strip()[-500:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def _rss_child() -> None:
    spec = json.loads(sys.argv[1])
    v = Variant(**spec["variant"])
    rng = np.random.default_rng(0)
    frames, batch = spec["frames"], spec["batch"]
    if v.kind == "onnx":
        from mouthmap.runtime.runner import OnnxRunner

        run = OnnxRunner(v.source, threads=spec["threads"]).run
    else:
        import torch

        torch.set_num_threads(spec["threads"])
        run, _, _, _ = _forward(v)
    for b in (1, batch):
        video = rng.standard_normal((b, 1, frames, 88, 88)).astype(np.float32)
        run(video, np.full(b, frames, dtype=np.int64))
    print(json.dumps({"peak_rss_mb": _peak_kb() * 1024 / 1e6}))


def _peak_kb() -> int:
    """This process's peak RSS in KiB. ``VmHWM`` is the address space's own high-water mark,
    new at ``exec``; ``ru_maxrss`` is not reset by ``exec`` on Linux, so in a child of a large
    process it reports the parent's size at ``fork`` (every row read 1465 MB that way)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# --- accuracy ------------------------------------------------------------------------------


def _with_words(
    v: Variant, loaded: Any, run: Callable[[np.ndarray, np.ndarray], np.ndarray], head: Any
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """``(video, lengths) -> (log_probs, word log-probs or None)``: what the package's decoder
    reads, the word head's output included where the variant has one."""
    if v.kind == "onnx":
        return loaded.run_all
    if head is None:
        return lambda video, lengths: (run(video, lengths), None)
    import torch

    from mouthmap.compress.export import WithWordHead

    both = WithWordHead(loaded, head).eval()

    def run_all(video: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            log_probs, words = both(torch.from_numpy(video), torch.from_numpy(lengths))
        return log_probs.numpy(), words.numpy()

    return run_all


def measure_wer(
    run_all: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    clips: Sequence[Any],
    beam: Any | None,
) -> dict[str, float | None]:
    """Greedy WER, and the beam decoder's (the package's, with the word head it reads)."""
    from mouthmap.decode.greedy import greedy_decode
    from mouthmap.evaluation.metrics import wer

    outs = []
    for c in clips:
        log_probs, words = run_all(c.frames[None, None], np.array([len(c.frames)], np.int64))
        outs.append((log_probs[0], None if words is None else words[0]))
    refs = [c.text for c in clips]
    beam_hyps = None if beam is None else [beam.decode(x, word_log_probs=w) for x, w in outs]
    return {
        "wer_greedy": wer(refs, [greedy_decode(x) for x, _ in outs]),
        "wer_beam": wer(refs, beam_hyps) if beam_hyps is not None else None,
    }


# --- the whole bench -----------------------------------------------------------------------


def variants_for(
    package_dir: str | Path, checkpoint: str | Path | None, teacher: str | Path | None
) -> tuple[list[Variant], list[str]]:
    """The rows to measure for a package (INT8 files it holds), and notes on what is missing."""
    from mouthmap.compress.quantize import FILES
    from mouthmap.package import ModelPackage

    pkg = ModelPackage.load(package_dir)
    notes: list[str] = []
    rows: list[Variant] = []
    if checkpoint is not None:
        rows.append(Variant("PyTorch FP32 (eager)", "torch", str(checkpoint)))
    else:
        notes.append("no --checkpoint: the PyTorch FP32 eager row is missing")
    rows.append(Variant("ORT FP32", "onnx", str(pkg.fp32_path)))
    labels = {
        "ptq": "ORT INT8 static (PTQ)",
        "qat": "ORT INT8 (QAT)",
        "dynamic": "ORT INT8 dynamic",
    }
    chosen = pkg.meta.get("quantization", {}).get("chosen")
    for method, label in labels.items():
        path = pkg.root / FILES[method]
        if path.is_file():
            note = "deployed as model.onnx" if method == chosen else ""
            rows.append(Variant(label, "onnx", str(path), note=note))
        else:
            notes.append(f"no {FILES[method]} in the package (`mouthmap quantize`): row missing")
    if teacher is not None and Path(teacher).is_file():
        rows.append(Variant("Teacher FP32 (eager)", "torch", str(teacher)))
    else:
        why = f"{teacher} does not exist" if teacher else "no --teacher given"
        rows.append(Variant("Teacher FP32 (eager)", "torch", "teacher", trained=False,
                            note="untrained architecture: random weights, WER n/a"))  # fmt: skip
        notes.append(
            f"teacher: {why}; measured the untrained teacher architecture (random weights) for "
            "size, parameters, latency, throughput and memory; its WER is n/a"
        )
    return rows, notes


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    cpu, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
        "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def run_bench(
    package_dir: str | Path,
    prepared_dir: str | Path,
    checkpoint: str | Path | None = None,
    teacher: str | Path | None = None,
    settings: BenchSettings | None = None,
    exclude: Sequence[str] = (),
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure every variant; returns the report that :func:`write_outputs` renders."""
    import torch

    from mouthmap.compress.clips import load_clips
    from mouthmap.package import ModelPackage

    s = settings or BenchSettings()
    pkg = ModelPackage.load(package_dir)
    variants, notes = variants_for(pkg.root, checkpoint, teacher)
    beam = None
    if s.beam and pkg.lm_dir is not None:
        from mouthmap.decode.beam import BeamDecoder

        beam = BeamDecoder(pkg.lm_dir, **pkg.meta.get("decoder", {}))
    clips_by_norm: dict[tuple[float, float], list] = {}

    def test_clips(mean: float, std: float) -> list:
        key = (round(mean, 9), round(std, 9))
        if key not in clips_by_norm:
            clips_by_norm[key] = load_clips(
                prepared_dir, "test", mean, std, s.test_clips, exclude=exclude
            )
        return clips_by_norm[key]

    pkg_clips = test_clips(pkg.mean, pkg.std)
    clip = np.resize(pkg_clips[0].frames, (s.frames, *pkg_clips[0].frames.shape[1:]))
    threads_before = torch.get_num_threads()
    rows = []
    student_params = None
    for v in variants:
        log(f"bench: {v.name}")
        run, loaded, norm, head = _forward(v)
        size, params = _size_and_parameters(v, loaded)
        if v.kind == "torch" and v.trained and v.source == str(checkpoint):
            student_params = params
        row = Row(v.name, v.kind, v.source, v.trained, v.note, size, params)
        speed = measure_speed(v, loaded, clip, s)
        torch.set_num_threads(threads_before)
        row.latency_ms = speed["latency_ms"]
        row.throughput_clips_s = speed["throughput_clips_s"]
        row.throughput_threads = speed["throughput_threads"]
        if v.trained:
            clips = test_clips(norm["mean"], norm["std"]) if norm else pkg_clips
            row.__dict__.update(measure_wer(_with_words(v, loaded, run, head), clips, beam))
            row.test_clips = len(clips)
        if s.rss:
            row.peak_rss_mb = peak_rss(v, s)
        rows.append(row)
    if student_params is not None:  # the student's ONNX rows: the PyTorch count (BN unfolded)
        for r in rows:
            if r.kind == "onnx":
                r.parameters = student_params
    report = {
        "package": str(pkg.root),
        "machine": machine_info(),
        "settings": asdict(s),
        "clip_seconds": s.frames * CLIP_SECONDS_PER_FRAME,
        "rows": [asdict(r) for r in rows],
        "notes": notes,
    }
    report["targets"] = check_targets(report, pkg.meta.get("quantization", {}).get("chosen"))
    return report


# --- targets and outputs ---------------------------------------------------------------------


def _row(report: dict, name: str) -> dict | None:
    return next((r for r in report["rows"] if r["name"] == name), None)


def deployed_row(report: dict, chosen: str | None) -> dict | None:
    """The INT8 row that is ``model.onnx``: the package's choice, else the best INT8 by WER."""
    int8 = [r for r in report["rows"] if "INT8" in r["name"]]
    marked = [r for r in int8 if r["note"].startswith("deployed")]
    if marked:
        return marked[0]
    scored = [r for r in int8 if r["wer_greedy"] is not None and "dynamic" not in r["name"]]
    return min(scored, key=lambda r: r["wer_beam"] or r["wer_greedy"]) if scored else None


def check_targets(report: dict, chosen: str | None = None) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value and whether it was met."""
    int8 = deployed_row(report, chosen)
    torch_fp32 = _row(report, "PyTorch FP32 (eager)")
    ort_fp32 = _row(report, "ORT FP32")
    teacher = _row(report, "Teacher FP32 (eager)")
    out: list[dict[str, Any]] = []

    def add(target: str, value: Any, met: bool | None, detail: str) -> None:
        out.append({"target": target, "value": value, "met": met, "detail": detail})

    if int8 is None:
        add("INT8 model", None, False, "no INT8 variant in the package: run `mouthmap quantize`")
        return out
    p50 = int8["latency_ms"]["1"]["p50"] if "1" in int8["latency_ms"] else None
    add("INT8 student <= 1.5 MB", round(int8["bytes"] / 1e6, 3), int8["bytes"] <= 1.5e6,
        f"{int8['name']}: {int8['bytes'] / 1e6:.3f} MB")  # fmt: skip
    if teacher is not None:
        ratio = teacher["bytes"] / int8["bytes"]
        detail = f"teacher {teacher['bytes'] / 1e6:.2f} MB / INT8 {int8['bytes'] / 1e6:.3f} MB"
        add(">= 20x smaller than the teacher", round(ratio, 1), ratio >= 20, detail)
    if torch_fp32 is not None and p50 is not None and "1" in torch_fp32["latency_ms"]:
        speedup = torch_fp32["latency_ms"]["1"]["p50"] / p50
        add(">= 3x faster than PyTorch FP32 eager (1 thread)", round(speedup, 2), speedup >= 3,
            f"{torch_fp32['latency_ms']['1']['p50']:.1f} ms / {p50:.1f} ms per clip")  # fmt: skip
    if p50 is not None:
        rtf = p50 / 1000 / report["clip_seconds"]
        detail = f"p50 {p50:.1f} ms for {report['clip_seconds']:.0f} s of video (RTF {rtf:.4f})"
        met = p50 <= 30 and report["clip_seconds"] >= 3  # shorter clips cannot show it
        add("<= 30 ms per 3 s clip at 1 thread (RTF <= 0.01)", round(p50, 1), met, detail)
    if ort_fp32 is not None:
        for dec in ("greedy", "beam"):
            a, b = int8[f"wer_{dec}"], ort_fp32[f"wer_{dec}"]
            if a is None or b is None:
                continue
            delta = 100 * (a - b)
            add(f"INT8 WER within 0.5 points of FP32 ({dec})", round(delta, 2), delta <= 0.5,
                f"test WER {100 * a:.1f}% vs {100 * b:.1f}% ({delta:+.1f} points)")  # fmt: skip
    return out


def _fmt(x: float | None, spec: str = ".1f", scale: float = 1.0) -> str:
    return "n/a" if x is None else format(x * scale, spec)


def _percent(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    threads = [str(t) for t in report["settings"]["threads"]]
    head = ["variant", "size (MB)", "params"]
    head += [f"p50 / p95 ms, {t} thr" for t in threads]
    batch = report["settings"]["batch"]
    head += [f"clips/s @ batch {batch}", "peak RSS (MB)", "test WER greedy", "test WER beam"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        cells = [r["name"] + (f" ({r['note']})" if r["note"] else ""),
                 f"{r['bytes'] / 1e6:.2f}", f"{r['parameters'] / 1e6:.2f} M"]  # fmt: skip
        for t in threads:
            lat = r["latency_ms"].get(t)
            cells.append(f"{lat['p50']:.1f} / {lat['p95']:.1f}" if lat else "n/a")
        cells += [_fmt(r["throughput_clips_s"]), _fmt(r["peak_rss_mb"], ".0f"),
                  _percent(r["wer_greedy"]), _percent(r["wer_beam"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    m = report["machine"]
    clips = next((r["test_clips"] for r in report["rows"] if r["test_clips"]), None)
    lines += [
        "",
        f"{report['clip_seconds']:.0f} s clips ({report['settings']['frames']} frames), "
        f"{report['settings']['repeats']} timed runs each; WER on {clips} test clips "
        "(beam: the package's decoder, with the word head where the model has one). "
        f"{m['cpu']} ({m['cores']} cores, AVX2 {'yes' if m['avx2'] else 'no'}, "
        f"VNNI {'yes' if m['vnni'] else 'no'}), ONNX Runtime {m['onnxruntime']}"
        + (f", PyTorch {m['torch']}" if "torch" in m else "")
        + f"; load average at the start {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}.",
        "Peak RSS: a fresh process per variant that loads it and runs one clip and one batch "
        "(PyTorch rows include importing torch).",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    for t in report["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['detail']} | {met} |")
    if report["notes"]:
        lines += ["", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["name"].replace(" (", "\n(") for r in rows]
    y = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.55 * len(rows) + 1.8), sharey=True)
    axes[0].barh(y, [r["bytes"] / 1e6 for r in rows], color="C0")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("size (MB, log scale)")
    height = 0.8 / len(report["settings"]["threads"])
    for i, t in enumerate(str(t) for t in report["settings"]["threads"]):
        vals = [r["latency_ms"].get(t, {}).get("p50", 0) for r in rows]
        axes[1].barh(y + i * height - 0.4 + height / 2, vals, height, label=f"{t} thread(s)")
    axes[1].axvline(30, color="k", ls="--", lw=1, label="30 ms target")
    axes[1].set_xlabel(f"p50 latency per {report['clip_seconds']:.0f} s clip (ms)")
    axes[1].legend(fontsize=8)
    wer = [100 * (r["wer_beam"] if r["wer_beam"] is not None else r["wer_greedy"] or 0)
           for r in rows]  # fmt: skip
    axes[2].barh(y, wer, color="C2")
    for yi, r in zip(y, rows, strict=True):
        if r["wer_greedy"] is None:
            axes[2].text(1, yi, "n/a (untrained)", va="center", fontsize=8)
    axes[2].set_xlabel("test WER (%), beam+LM")
    axes[0].set_yticks(y, names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(f"MouthMap student variants on {report['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m, p = out / "bench.json", out / "bench.md", out / "bench.png"
    j.write_text(json.dumps(report, indent=1) + "\n")
    m.write_text(markdown(report))
    plot(report, p)
    return j, m, p
