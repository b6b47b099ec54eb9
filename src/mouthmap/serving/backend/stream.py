"""``mouthmap_stream``: the decoupled streaming model, with the encoder inside it.

Triton's sequence batcher (``oldest`` strategy) keeps every stream (one correlation id,
START/END flags) on one instance and hands each instance *batches* of requests from
different streams, at most one request per stream, formed while the instance was busy
(``max_batch_size`` 1: one request at a time). ``execute`` runs the whole batch on the
stub's own thread: the package's ONNX model in ONNX Runtime in this process (one call per
clip, or one fused call: ``batch_mode``), the decoders, the responses. It completes every
request before it returns, with exactly one response each: a partial or the final
transcript, an error, or an empty response, always flagged final.

Why no call to ``mouthmap_encoder``: BLS calls from this stub to another model crashed
Triton 2.51's Python backend under load (``std::bad_alloc`` / ``boost::interprocess::
lock_exception`` / SIGSEGV in ``libtriton_python.so`` within seconds at 16 streams;
triton-inference-server/server#8882). Here nothing crosses between models, and only one
thread of the stub talks to the server at a time: ``execute`` and the idle-stream reaper
share the engine's lock. The whole-clip ``mouthmap_encoder`` model (dynamic batching)
stays in the repository for clients that send complete clips.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mouthmap.serving.protocol import FRAMES, IS_FINAL, ROIS, SERVER_MS, STREAM_MODEL, TEXT
from mouthmap.serving.streams import (
    Event,
    Request,
    StreamEngine,
    StreamError,
    StreamLimits,
    load_meta,
)

_COUNTERS = {
    "started": "streams started",
    "completed": "streams that got their final transcript",
    "failed": "streams ended by an error (too long, too short, expired, internal)",
    "expired": "streams ended for idling or living too long",
    "disconnected": "streams whose client went away",
    "aborted": "streams aborted by their client",
    "rejected": "requests refused (bad input, unknown stream, server busy)",
    "partials": "partial transcripts sent",
    "partials_shed": "partials skipped under load (finals and completions come first)",
    "frames": "mouth-ROI frames received",
}


class _Metrics:
    """Custom Prometheus metrics on Triton's /metrics (absent in stubs without the API)."""

    def __init__(self, model: str, instance: str) -> None:
        self.gauge = None
        self.counters: dict[str, object] = {}
        family = getattr(pb_utils, "MetricFamily", None)
        if family is None:
            return
        labels = {"model": model, "instance": instance}
        g = family(
            name="mouthmap_active_streams",
            description="streams with state held by the server",
            kind=family.GAUGE,
        )
        self._families = [g]
        self.gauge = g.Metric(labels=labels)
        for key, text in _COUNTERS.items():
            f = family(name=f"mouthmap_{key}_total", description=text, kind=family.COUNTER)
            self._families.append(f)
            self.counters[key] = f.Metric(labels=labels)

    def __call__(self, what: str, n: int) -> None:
        if what == "active":
            if self.gauge is not None:
                self.gauge.set(n)
        elif what in self.counters:
            self.counters[what].increment(n)


def _flag(request, name: str) -> bool:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return bool(t is not None and t.as_numpy().reshape(-1)[0])


def _rois(request) -> np.ndarray | None:
    """The request's ROIs without the batch dimension: (1, n, 96, 96) -> (n, 96, 96)."""
    t = pb_utils.get_input_tensor_by_name(request, ROIS)
    if t is None:
        return None
    arr = t.as_numpy()
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise StreamError("bad_input", f"one stream per request: ROIS {list(arr.shape)}")
        arr = arr[0]
    return arr


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from mouthmap.runtime.runner import OnnxRunner

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"]
        threads = int(params.get("ort_threads", "0")) or None
        runner = OnnxRunner(
            here / "model.onnx",
            provider=params.get("provider", "cpu"),
            threads=threads,
            spin=params.get("ort_spin", "0") == "1",
        )
        self.metrics = _Metrics(args["model_name"], args.get("model_instance_name", "0"))
        self.engine = StreamEngine(
            load_meta(here / "package"),
            here / "package",
            run=runner.run_all,  # the log-probs and, with a word head, the word log-probs
            send=self._send,
            close=self._close,
            limits=StreamLimits.from_params(params),
            decoder=params.get("decoder", "beam"),
            partial_decoder=params.get("partial_decoder", "greedy"),
            batch_mode=params.get("batch_mode", "exact"),
            on_change=self.metrics,
            observe=_drift_recorder(),
        )
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="mouthmap-reaper", daemon=True)
        self._reaper.start()

    def execute(self, requests: list) -> None:
        batch = []
        for r in requests:
            sender = r.get_response_sender()
            try:
                batch.append(Request(
                    sender, int(r.correlation_id()), start=_flag(r, "START"),
                    end=_flag(r, "END"), rois=_rois(r), abort=_flag(r, "ABORT"),
                ))  # fmt: skip
            except StreamError as e:
                batch.append(Request(sender, 0, error=e))
            except Exception as e:  # malformed beyond what Triton's own checks catch
                batch.append(Request(sender, 0, error=StreamError("bad_input", str(e))))
        self.engine.execute(batch)
        return None

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.engine.expire()
            except Exception as e:  # never let the reaper die
                pb_utils.Logger.log_error(f"{STREAM_MODEL} reaper: {e}")

    def finalize(self) -> None:
        self._stop.set()

    # -- engine -> Triton (called under the engine's lock) ----------------------------------
    @staticmethod
    def _send(sender, event: Event) -> None:
        if event.error is not None:
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(event.error)))
        else:
            response = pb_utils.InferenceResponse(
                [  # batch dimension first: [1, 1]
                    pb_utils.Tensor(TEXT, np.array([[event.text.encode()]], dtype=np.object_)),
                    pb_utils.Tensor(FRAMES, np.array([[event.frames]], np.int32)),
                    pb_utils.Tensor(IS_FINAL, np.array([[event.final]], bool)),
                    pb_utils.Tensor(SERVER_MS, np.array([[event.server_ms]], np.float32)),
                ]
            )
        # The response and the final flag in one send: sent apart, a client cancelling its
        # stream in between crashed Triton 2.51's gRPC frontend (SIGSEGV / "ASSERTION FAILED:
        # prior > 0" in sync.cc; 1 in ~8 over-long streams closed by their client here).
        sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _close(sender) -> None:
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _drift_recorder():
    """Per-stream drift features (``mouthmap.monitor``) when ``MOUTHMAP_DRIFT_SINK`` is set."""
    if not os.environ.get("MOUTHMAP_DRIFT_SINK"):
        return None
    from mouthmap.monitor import record_request

    return lambda rois, log_probs: record_request(rois, log_probs, source=STREAM_MODEL)
