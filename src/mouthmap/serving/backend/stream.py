"""``mouthmap_stream``: the decoupled streaming model. Triton's sequence batcher routes every
request of a stream (one correlation id) to the same instance with START/END flags, so each
instance keeps the state of its own streams. Each request is completed with an empty
response flagged final; the END request's carries the final transcript first.

Concurrency: the work of a stream runs on a small thread pool (decoding overlaps the next
requests), but each instance has at most one BLS call to ``mouthmap_encoder`` in flight,
under one lock with the response sends. Concurrent BLS calls from threads of one Python
stub crash Triton's Python backend (``std::bad_alloc`` / ``boost::interprocess::
lock_exception`` / SIGSEGV in ``libtriton_python.so``; seen here within seconds at 16
streams, and reported upstream as triton-inference-server/server#8882, open through 2.69).
Several instances (``instance_group``, separate processes) give the encoder's dynamic
batcher its concurrent requests instead. KNOWN ISSUE: this lowers the crash rate but does
not remove it: at 16 streams sending flat out, 1 of 4 twelve-second runs still crashed the
server (none at 8 real-time streams so far). All work inside ``execute`` (``workers`` 0)
hung at 16 streams instead. The way out is to run the encoder in this model under the
sequence batcher's own ``oldest`` batching, without BLS (not done).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mouthmap.serving.protocol import (
    ENCODER_MODEL,
    FRAMES,
    IS_FINAL,
    LENGTHS,
    LOG_PROBS,
    ROIS,
    SERVER_MS,
    STREAM_MODEL,
    TEXT,
    VIDEO,
)
from mouthmap.serving.streams import Event, StreamEngine, StreamLimits, load_meta

# One thread of this stub at a time talks to the server (BLS and response sends).
_IPC = threading.RLock()

_COUNTERS = {
    "started": "streams started",
    "completed": "streams that got their final transcript",
    "failed": "streams ended by an error (too long, too short, expired, internal)",
    "expired": "streams ended for idling or living too long",
    "disconnected": "streams whose client went away",
    "aborted": "streams aborted by their client",
    "rejected": "requests refused (bad input, unknown stream, server busy)",
    "partials": "partial transcripts sent",
    "partials_shed": "partials skipped while the encoder was busy (finals come first)",
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


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = Path(args["model_repository"]) / args["model_version"] / "package"
        workers = int(params.get("workers", "0"))
        self.pool = ThreadPoolExecutor(workers, "mouthmap-stream") if workers else None
        self.metrics = _Metrics(args["model_name"], args.get("model_instance_name", "0"))
        self.engine = StreamEngine(
            load_meta(here),
            here,
            encode=self._encode,
            send=self._send,
            close=self._close,
            submit=self.pool.submit if self.pool else _inline,
            limits=StreamLimits.from_params(params),
            decoder=params.get("decoder", "beam"),
            partial_decoder=params.get("partial_decoder", "greedy"),
            on_change=self.metrics,
            observe=_drift_recorder(),
        )
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="mouthmap-reaper", daemon=True)
        self._reaper.start()

    # -- Triton -> engine ------------------------------------------------------------------
    def execute(self, requests: list) -> None:
        # Not under _IPC: holding it here while a worker waits on BLS crashed Triton in
        # every one of 5 runs at 16 streams (1 in 4 without it; see the module docstring).
        for r in requests:
            self._one(r)
        return None

    def _one(self, r) -> None:
        sender = r.get_response_sender()
        try:
            cid = int(r.correlation_id())
            t = pb_utils.get_input_tensor_by_name(r, ROIS)
            rois = t.as_numpy() if t is not None else None
            start, end = _flag(r, "START"), _flag(r, "END")
            abort = _flag(r, "ABORT")
        except Exception as e:  # malformed beyond what Triton's own checks catch
            self._send(sender, Event(error=_error("bad_input", str(e))))
            self._close(sender)
            return
        self.engine.accept(sender, cid, start, end, rois, abort=abort)

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            try:
                with _IPC:
                    self.engine.expire()
            except Exception as e:  # never let the reaper die
                pb_utils.Logger.log_error(f"mouthmap_stream reaper: {e}")

    def finalize(self) -> None:
        self._stop.set()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    # -- engine -> Triton ------------------------------------------------------------------
    @staticmethod
    def _encode(video: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=ENCODER_MODEL,
            requested_output_names=[LOG_PROBS],
            inputs=[pb_utils.Tensor(VIDEO, video), pb_utils.Tensor(LENGTHS, lengths)],
        )
        with _IPC:
            response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{ENCODER_MODEL}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, LOG_PROBS).as_numpy()

    @staticmethod
    def _send(sender, event: Event) -> None:
        if event.error is not None:
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(event.error)))
        else:
            response = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor(TEXT, np.array([event.text.encode()], dtype=np.object_)),
                    pb_utils.Tensor(FRAMES, np.array([event.frames], np.int32)),
                    pb_utils.Tensor(IS_FINAL, np.array([event.final], bool)),
                    pb_utils.Tensor(SERVER_MS, np.array([event.server_ms], np.float32)),
                ]
            )
        with _IPC:
            sender.send(response)

    @staticmethod
    def _close(sender) -> None:
        with _IPC:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _drift_recorder():
    """Per-stream drift features (``mouthmap.monitor``) when ``MOUTHMAP_DRIFT_SINK`` is set."""
    import os

    if not os.environ.get("MOUTHMAP_DRIFT_SINK"):
        return None
    from mouthmap.monitor import record_request

    return lambda rois, log_probs: record_request(rois, log_probs, source=STREAM_MODEL)


def _inline(fn) -> None:
    fn()


def _error(code: str, message: str):
    from mouthmap.serving.streams import StreamError

    return StreamError(code, message)
