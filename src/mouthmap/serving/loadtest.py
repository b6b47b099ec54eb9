"""Load test of the streaming service on loopback (`mouthmap loadtest`), bounded in time.

Phases, each against a Triton this module starts on free loopback ports and stops:

1. **latency**: ``streams`` concurrent streams, each playing clips in real time (25 fps,
   one request per ``chunk`` frames), as many clips as fit in ``duration_s``;
   first-partial latency (the request that completed the first partial's frames sent ->
   that partial back) and final latency (END request sent -> final transcript back),
   p50/p95.
2. **throughput, batching on** and 3. **off** (``max_batch_size`` 1 in the stream model's
   sequence batcher and the encoder's dynamic batcher): ``throughput_streams`` concurrent
   streams sending as fast as the server answers (the next clip starts when the last one's
   final transcript is back); completed clips per second, side by side in one run.

The mouth ROIs of every clip are made once, before the phases, with the same streaming
extractor the clients use: ROI extraction runs on each user's device in this design, so
the load on the server is ROIs, and the load generator (on the same cores) must not eat
the server's CPU by re-tracking faces. Every final transcript is compared with the
offline ``Transcriber`` (`mouthmap transcribe`) result of its clip; a mismatch, an error
or a timeout counts as a failed stream. The report says what else ran on the machine
(load average before and after each phase) and whether the server or a stub crashed
(its health, and crash signatures in its log).
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.package import ModelPackage

ISSUE_TARGETS = {"final_p95_ms": 150.0, "batching_speedup": 2.0, "failed_streams": 0}


@dataclass(frozen=True)
class LoadTestSettings:
    streams: int = 8
    throughput_streams: int = 16
    duration_s: float = 20.0  # per phase; streams running at the end are finished, not cut
    chunk: int = 8
    fps: float = 25.0
    partial_every: int = 8
    queue_delay_us: int = 2000  # the whole-clip encoder's dynamic batcher
    stream_queue_delay_us: int = 0  # the stream model's sequence batcher
    max_batch_size: int = 16
    stream_instances: int = 1
    batch_mode: str = "exact"
    final_timeout_s: float = 30.0
    phases: tuple[str, ...] = ("latency", "batching", "no_batching")


PHASES = ("latency", "batching", "no_batching")

# what a crashed Triton or Python-backend stub leaves in the server log
CRASH_SIGNS = (
    "Segmentation fault", "Signal (11)", "Signal (6)", "std::bad_alloc", "lock_exception",
    "terminate called", "Stub process", "is not healthy", "core dumped",
)  # fmt: skip


@dataclass
class StreamRecord:
    clip: str
    ok: bool
    text: str | None
    expected: str
    first_partial_ms: float | None
    final_ms: float | None
    error: str = ""
    final_server_ms: float | None = None  # of final_ms, spent in the model (not queued)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def prepare_clips(
    package: ModelPackage, videos: list[Path], log: Callable[[str], None] = print
) -> list[dict]:
    """ROIs (the client-side streaming extractor) and the offline transcript of each clip."""
    from mouthmap.runtime.transcriber import Transcriber
    from mouthmap.serving.frames import video_frames
    from mouthmap.serving.roi_stream import StreamingRoiExtractor

    offline = Transcriber(package)
    out = []
    for v in videos:
        _, frames = video_frames(v)
        ex = StreamingRoiExtractor.for_package(package.meta)
        parts = [ex.push(f) for f in frames]
        parts.append(ex.finish())
        rois = np.concatenate(parts)
        out.append({"clip": v.name, "rois": rois, "expected": offline.transcribe(v).text})
    log(f"prepared {len(out)} clips (ROIs + offline transcripts)")
    return out


def run_one(url: str, clip: dict, chunk: int, fps: float | None, timeout: float) -> StreamRecord:
    """One clip as one stream; ``fps`` paces the requests like a live camera (None: flat out)."""
    from mouthmap.serving.client import TritonStream

    rois = clip["rois"]
    rec = StreamRecord(clip["clip"], False, None, clip["expected"], None, None)
    try:
        with TritonStream(url) as stream:
            t0 = time.monotonic()
            end_sent = None
            sent_at: dict[int, float] = {}  # frames sent so far -> when that request went out
            for i in range(0, len(rois), chunk):
                if fps:
                    wait = t0 + (i + chunk) / fps - time.monotonic()  # the chunk's last frame
                    if wait > 0:
                        time.sleep(wait)
                last = i + chunk >= len(rois)
                stream.send(rois[i : i + chunk], end=last)
                now = time.monotonic()
                sent_at[min(i + chunk, len(rois))] = now
                if last:
                    end_sent = now
            final = first = None
            deadline = time.monotonic() + timeout
            while final is None:
                try:
                    ev = stream.events.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    rec.error = f"no final transcript within {timeout:g} s"
                    return rec
                if ev.kind == "partial" and first is None:
                    first = ev
                elif ev.kind == "final":
                    final = ev
                elif ev.kind == "error":
                    rec.error = f"[{ev.code}] {ev.text}"
                    return rec
            stream.wait_all(5.0)
        rec.text = final.text
        rec.final_ms = 1000 * (final.at - end_sent)
        rec.final_server_ms = final.server_ms
        if first is not None and first.frames in sent_at:  # from the request it answers
            rec.first_partial_ms = 1000 * (first.at - sent_at[first.frames])
        rec.ok = rec.text == rec.expected
        if not rec.ok:
            rec.error = f"transcript {rec.text!r} differs from offline {rec.expected!r}"
    except Exception as e:  # a broken connection is a failed stream, not a crashed test
        rec.error = f"{type(e).__name__}: {e}"
    return rec


def run_phase(
    url: str, clips: list[dict], streams: int, duration_s: float, chunk: int,
    fps: float | None, timeout: float,
) -> tuple[list[StreamRecord], float]:  # fmt: skip
    """``streams`` workers, each streaming clips back to back until ``duration_s`` is up."""
    records: list[StreamRecord] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    stop_at = t0 + duration_s

    def worker(k: int) -> None:
        i = k
        if fps:  # spread the real-time streams' starts over one chunk period
            time.sleep((k / max(streams, 1)) * chunk / fps)
        while time.monotonic() < stop_at:
            rec = run_one(url, clips[i % len(clips)], chunk, fps, timeout)
            with lock:
                records.append(rec)
            i += streams

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + timeout + 60)
    return records, time.monotonic() - t0


def _model_stats(metrics: str, model: str = "mouthmap_stream") -> dict[str, float]:
    """Requests and executions (batches) of one model from Triton's Prometheus metrics."""

    def value(name: str) -> float:
        m = re.search(rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', metrics, re.M)
        return float(m.group(1)) if m else 0.0

    req = value("nv_inference_request_success")
    execs = value("nv_inference_exec_count")
    return {
        "requests": req,
        "executions": execs,
        "mean_batch": round(req / execs, 2) if execs else 0,
    }


def _counters(metrics: str) -> dict[str, float]:
    """The stream model's own ``mouthmap_*_total`` counters, summed over its instances."""
    out: dict[str, float] = {}
    for m in re.finditer(r"^mouthmap_(\w+)_total\{[^}]*\} (\S+)$", metrics, re.M):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def crash_lines(log_text: str) -> list[str]:
    """Lines of a Triton log that say the server or a Python-backend stub crashed."""
    return [line.strip() for line in log_text.splitlines() if any(s in line for s in CRASH_SIGNS)]


def load_average() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def _summary(records: list[StreamRecord], wall: float, frames_per_clip: float) -> dict[str, Any]:
    done = [r for r in records if r.ok]
    finals = [r.final_ms for r in records if r.final_ms is not None]
    firsts = [r.first_partial_ms for r in records if r.first_partial_ms is not None]
    in_model = [r.final_server_ms for r in records if r.final_server_ms is not None]
    return {
        "streams": len(records),
        "completed": len(done),
        "failed": len(records) - len(done),
        "errors": sorted({r.error for r in records if r.error})[:10],
        "wall_s": round(wall, 1),
        "clips_per_s": round(len(done) / wall, 2) if wall else 0.0,
        "frames_per_s": round(len(done) * frames_per_clip / wall, 1) if wall else 0.0,
        "first_partial_ms": {"p50": _pct(firsts, 50), "p95": _pct(firsts, 95)},
        "final_ms": {"p50": _pct(finals, 50), "p95": _pct(finals, 95)},
        "final_in_model_ms": {"p50": _pct(in_model, 50), "p95": _pct(in_model, 95)},
        "streams_with_partial": len(firsts),
    }


def run_loadtest(
    package: ModelPackage,
    videos: list[Path],
    settings: LoadTestSettings | None = None,
    log: Callable[[str], None] = print,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """All phases; returns the report (also what :func:`write_report` writes). Repositories
    and server logs go to a temporary directory, or to ``work_dir`` (kept) when given."""
    import datetime
    import os

    from mouthmap.serving.repository import RepoOptions, build_repo
    from mouthmap.serving.server import TritonServer, metrics_text
    from mouthmap.serving.streams import StreamLimits

    s = settings or LoadTestSettings()
    unknown = set(s.phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phase(s) {sorted(unknown)}: use {', '.join(PHASES)}")
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    clips = prepare_clips(package, videos, log)
    frames_per_clip = float(np.mean([len(c["rois"]) for c in clips]))
    limits = StreamLimits(
        max_streams=max(64, 2 * s.throughput_streams), partial_every=s.partial_every
    )
    base = RepoOptions(
        max_batch_size=s.max_batch_size, queue_delay_us=s.queue_delay_us, limits=limits,
        stream_queue_delay_us=s.stream_queue_delay_us, stream_instances=s.stream_instances,
        batch_mode=s.batch_mode,
    )  # fmt: skip
    configs = {
        "latency": (base, s.streams, s.fps),
        "batching": (base, s.throughput_streams, None),
        "no_batching": (
            replace(base, max_batch_size=1, dynamic_batching=False),
            s.throughput_streams,
            None,
        ),
    }
    phases: dict[str, Any] = {}
    keep = contextlib.nullcontext(str(work_dir)) if work_dir else None
    with keep or tempfile.TemporaryDirectory(prefix="mouthmap-loadtest-") as tmp:
        for name in s.phases:
            opts, n, fps = configs[name]
            repo = build_repo(package, Path(tmp) / f"repo-{name}", opts)
            server = TritonServer(Path(tmp) / f"state-{name}")
            ep = server.up(repo, 0, 0, 0, timeout=180)
            try:
                warm = run_one(ep.grpc, clips[0], s.chunk, None, s.final_timeout_s)  # load, JIT
                if not warm.ok:
                    log(f"{name}: warm-up stream failed: {warm.error}")
                m0 = metrics_text(ep.metrics_port)
                load0 = load_average()
                mode = f"real time ({fps:g} fps)" if fps else "as fast as answered"
                log(f"{name}: {n} concurrent streams, {mode}, {s.duration_s:g} s "
                    f"(load average {load0[0]}) ...")  # fmt: skip
                records, wall = run_phase(ep.grpc, clips, n, s.duration_s, s.chunk, fps,
                                          s.final_timeout_s)  # fmt: skip
                load1 = load_average()
                crashed = not server.healthy()
                m1 = m0 if crashed else metrics_text(ep.metrics_port)
                signs = crash_lines(server.proc.log_file.read_text(errors="replace"))
                summary = _summary(records, wall, frames_per_clip)
                summary["server_crashed"] = crashed or bool(signs)
                summary["crash_log"] = signs[:10]
                if summary["server_crashed"]:
                    log(f"{name}: the Triton server or a stub crashed; log tail:\n"
                        f"{server.proc.log_tail(12)}")  # fmt: skip
                for key, model in (("stream_model", "mouthmap_stream"),
                                   ("encoder", "mouthmap_encoder")):  # fmt: skip
                    a, b = _model_stats(m0, model), _model_stats(m1, model)
                    req, ex = b["requests"] - a["requests"], b["executions"] - a["executions"]
                    summary[key] = {"requests": int(req), "executions": int(ex),
                                    "mean_batch": round(req / ex, 2) if ex else 0.0}  # fmt: skip
                c0, c1 = _counters(m0), _counters(m1)
                summary["partials_sent"] = int(c1.get("partials", 0) - c0.get("partials", 0))
                summary["partials_shed"] = int(
                    c1.get("partials_shed", 0) - c0.get("partials_shed", 0)
                )
                summary["load_average"] = {"before": load0, "after": load1}
                summary["concurrent_streams"] = n
                summary["max_batch_size"] = opts.max_batch_size if opts.dynamic_batching else 1
                phases[name] = summary
                log(f"{name}: {summary['completed']}/{summary['streams']} streams ok, "
                    f"final p95 {summary['final_ms']['p95']} ms, {summary['clips_per_s']} clips/s, "
                    f"mean stream batch {summary['stream_model']['mean_batch']}, "
                    f"load average {load1[0]}")  # fmt: skip
            finally:
                server.down()
    report: dict[str, Any] = {
        "package": str(package.root),
        "package_name": package.meta.get("name"),
        "started": started,
        "cpus": os.cpu_count(),
        "clips": len(clips),
        "frames_per_clip": frames_per_clip,
        "settings": asdict(s),
        "phases": phases,
        "failed_streams": sum(p["failed"] for p in phases.values()),
        "server_crashes": [n for n, p in phases.items() if p.get("server_crashed")],
        "targets": ISSUE_TARGETS,
    }
    if "batching" in phases and "no_batching" in phases and phases["no_batching"]["clips_per_s"]:
        report["batching_speedup"] = round(
            phases["batching"]["clips_per_s"] / phases["no_batching"]["clips_per_s"], 2
        )
    return report


def _fmt(v: Any) -> str:
    return "–" if v is None else str(v)


def write_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "loadtest.json", out / "loadtest.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    p = report["phases"]
    st = report["settings"]
    lines = [
        f"# Load test: {report['package_name']} ({report['clips']} clips, "
        f"{report['frames_per_clip']:.0f} frames each)",
        "",
        f"{report.get('started', '')}, {report.get('cpus', '?')} CPUs; "
        f"{st['duration_s']:g} s per phase, chunks of {st['chunk']} frames, a partial every "
        f"{st['partial_every']} frames, {st['stream_instances']} stream-model instance(s), "
        f"batch mode {st['batch_mode']}, max batch {st['max_batch_size']}.",
    ]
    if report.get("command"):
        lines += ["", f"`{report['command']}`"]
    lines += [
        "",
        "| phase | streams | ok / total | first partial p50 / p95 ms | final p50 / p95 ms "
        "| of it in the model p50 / p95 ms | clips/s | frames/s | mean batch "
        "| partials sent / shed | load avg before → after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, ph in p.items():
        la = ph.get("load_average", {})
        im = ph.get("final_in_model_ms", {})
        load = f"{_fmt((la.get('before') or [None])[0])} → {_fmt((la.get('after') or [None])[0])}"
        lines.append(
            f"| {name} | {ph['concurrent_streams']} | {ph['completed']} / {ph['streams']} | "
            f"{_fmt(ph['first_partial_ms']['p50'])} / {_fmt(ph['first_partial_ms']['p95'])} | "
            f"{_fmt(ph['final_ms']['p50'])} / {_fmt(ph['final_ms']['p95'])} | "
            f"{_fmt(im.get('p50'))} / {_fmt(im.get('p95'))} | {ph['clips_per_s']} | "
            f"{ph['frames_per_s']} | {ph['stream_model']['mean_batch']} | "
            f"{ph.get('partials_sent', 0)} / {ph.get('partials_shed', 0)} | {load} |"
        )
    t = report["targets"]
    lines += ["", "| target (2 cores) | measured | met |", "| --- | --- | --- |"]
    if "latency" in p:
        v = p["latency"]["final_ms"]["p95"]
        ok = v is not None and v <= t["final_p95_ms"]
        n = p["latency"]["concurrent_streams"]
        lines.append(f"| final p95 <= {t['final_p95_ms']:g} ms at {n} streams | {_fmt(v)} ms | "
                     f"{'yes' if ok else 'no'} |")  # fmt: skip
    if "batching_speedup" in report:
        v = report["batching_speedup"]
        n = p["batching"]["concurrent_streams"]
        lines.append(f"| batching >= {t['batching_speedup']:g}x batch size 1 at {n} streams | "
                     f"{v}x | {'yes' if v >= t['batching_speedup'] else 'no'} |")  # fmt: skip
    f = report["failed_streams"]
    lines.append(f"| failed streams = 0 | {f} | {'yes' if f == 0 else 'no'} |")
    crashes = report.get("server_crashes") or []
    lines.append(f"| server crashes = 0 | {len(crashes)} | {'yes' if not crashes else 'no'} |")
    if crashes:
        lines += ["", f"**The Triton server or a stub crashed during: {', '.join(crashes)}**"]
        for name in crashes:
            lines += [f"- {name}: {line}" for line in p[name].get("crash_log", [])[:3]]
    errors = sorted({e for ph in p.values() for e in ph["errors"]})
    if errors:
        lines += ["", "Errors:", *[f"- {e}" for e in errors]]
    lines += [
        "",
        "Latencies are measured at the client: first partial from the request that completed "
        'its frames, final from the END request (the last frame); "in the model" is the '
        "part from the batch's start to the response (the rest is queueing and transport). "
        "clips/s counts streams whose final transcript equals the offline `mouthmap "
        "transcribe`; mean batch is the stream model's requests per execution.",
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
