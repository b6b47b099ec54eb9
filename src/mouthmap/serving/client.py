"""gRPC bidirectional streaming client of ``mouthmap_stream`` (`mouthmap stream`).

Raw frames in (a file or a camera), mouth ROIs made here with the package's own settings
(read from the server's model config, so client and model always agree), chunks of ROIs
out over one Triton stream, partial transcripts back while it runs, the final one after
the last chunk.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mouthmap.serving.protocol import (
    FRAMES,
    IS_FINAL,
    ROI_SIZE,
    ROIS,
    SERVER_MS,
    STREAM_MODEL,
    TEXT,
)

_CODE = re.compile(r"\[(?P<code>[a-z_]+)\] (?P<msg>.*)", re.S)


class StreamClientError(RuntimeError):
    """The server refused or ended the stream; ``code`` as sent by the stream model."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class StreamEvent:
    kind: str  # partial | final | error
    text: str = ""
    frames: int = 0
    server_ms: float = 0.0
    at: float = 0.0  # time.monotonic() when it arrived
    code: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"type": self.kind, "text": self.text, "frames": self.frames}
        if self.kind == "final":
            d["server_ms"] = round(self.server_ms, 1)
        if self.kind == "error":
            d = {"type": "error", "code": self.code, "message": self.text}
        return d


def _error_event(err: Exception) -> StreamEvent:
    text = str(err)
    text = re.sub(r"^\[StatusCode\.\w+\]\s*", "", text)
    m = _CODE.search(text)
    if m:
        return StreamEvent("error", m["msg"].strip(), code=m["code"], at=time.monotonic())
    return StreamEvent("error", text.strip(), code="server", at=time.monotonic())


def new_sequence_id() -> int:
    return secrets.randbits(62) + 1  # never 0: Triton reads 0 as "no sequence"


class TritonStream:
    """One stream (a Triton sequence) over its own gRPC bidirectional stream."""

    def __init__(
        self,
        url: str,
        model: str = STREAM_MODEL,
        sequence_id: int | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
    ) -> None:
        """``on_event`` is called on gRPC's thread for each event (default: ``self.events``)."""
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.url, self.model = url, model
        self.sequence_id = sequence_id or new_sequence_id()
        self.events: queue.Queue[StreamEvent] = queue.Queue()
        self._emit = on_event or self.events.put
        self.sent = 0  # requests sent
        self.completed = 0  # requests the server has completed (empty final responses)
        self.frames_sent = 0
        self.started = self.ended = False
        self._done = threading.Condition()
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=self._callback)

    def arrived(self, deadline: float | None = None) -> Iterator[StreamEvent]:
        """The events waiting in ``self.events``; with a ``deadline`` (``time.monotonic()``),
        also those that arrive before it."""
        while deadline is None or time.monotonic() < deadline:
            try:
                if deadline is None:
                    ev = self.events.get_nowait()
                else:
                    ev = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return
            yield ev

    def _callback(self, result: Any, error: Any) -> None:
        if error is not None:  # an error completes its request too
            self._emit(_error_event(error))
            with self._done:
                self.completed += 1
                self._done.notify_all()
            return
        response = result.get_response()
        final = response.parameters.get("triton_final_response")
        text = result.as_numpy(TEXT)
        if text is not None:
            is_final = bool(result.as_numpy(IS_FINAL).reshape(-1)[0])
            self._emit(
                StreamEvent(
                    "final" if is_final else "partial",
                    text.reshape(-1)[0].decode("utf-8", "replace"),
                    int(result.as_numpy(FRAMES).reshape(-1)[0]),
                    float(result.as_numpy(SERVER_MS).reshape(-1)[0]),
                    time.monotonic(),
                )
            )
        if final is not None and final.bool_param:
            with self._done:
                self.completed += 1
                self._done.notify_all()

    def _infer(self, rois: np.ndarray, end: bool, abort: bool = False) -> None:
        g = self._grpc
        arr = np.ascontiguousarray(rois, dtype=np.uint8).reshape(1, -1, ROI_SIZE, ROI_SIZE)
        inp = g.InferInput(ROIS, list(arr.shape), "UINT8")  # [1, n, 96, 96]: batch of one
        inp.set_data_from_numpy(arr)
        inputs = [inp]
        if abort:
            flag = g.InferInput("ABORT", [1, 1], "BOOL")
            flag.set_data_from_numpy(np.array([[True]]))
            inputs.append(flag)
        self.client.async_stream_infer(
            self.model,
            inputs,
            sequence_id=self.sequence_id,
            sequence_start=not self.started,
            sequence_end=end,
            enable_empty_final_response=True,
        )
        self.started = True
        self.sent += 1
        self.frames_sent += arr.shape[1]

    def send(self, rois: np.ndarray, end: bool = False) -> None:
        """The next ROIs of the stream, ``(n, 96, 96)`` uint8 (n may be 0 with ``end``)."""
        if self.ended:
            raise StreamClientError("the stream has already ended", "ended")
        self._infer(rois, end)
        self.ended = end

    def abort(self, wait: float = 2.0) -> None:
        """Tell the server to drop this stream now (it frees the state at once); waits up to
        ``wait`` seconds for it to confirm, so closing the channel next cannot cancel it."""
        if self.started and not self.ended:
            self._infer(np.zeros((0, ROI_SIZE, ROI_SIZE), np.uint8), True, abort=True)
            self.ended = True
            self.wait_all(wait)

    def wait_all(self, timeout: float) -> bool:
        """Until every request sent has been completed by the server."""
        with self._done:
            return self._done.wait_for(lambda: self.completed >= self.sent, timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_stream(cancel_requests=True)
        self.client.close()

    def __enter__(self) -> TritonStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def server_prepare(url: str, model: str = STREAM_MODEL, timeout: float = 10.0) -> dict:
    """The ROI settings of the package the server runs (its ``prepare`` parameter)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        cfg = client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
    except InferenceServerException as e:
        raise StreamClientError(
            f"no {model} at {url} ({e.message()}); is `mouthmap serve up` running?", "connect"
        ) from None
    finally:
        client.close()
    return json.loads(cfg["parameters"]["prepare"]["string_value"])


@dataclass
class StreamResult:
    text: str | None  # the final transcript; None when the stream failed
    frames: int  # frames captured
    rois: int  # ROIs sent
    events: list[StreamEvent] = field(default_factory=list)
    first_sent: float | None = None
    end_sent: float | None = None
    error: StreamEvent | None = None

    @property
    def final(self) -> StreamEvent | None:
        return next((e for e in self.events if e.kind == "final"), None)

    @property
    def final_latency_ms(self) -> float | None:
        f = self.final
        return None if f is None or self.end_sent is None else 1000 * (f.at - self.end_sent)

    @property
    def first_partial_ms(self) -> float | None:
        p = next((e for e in self.events if e.kind == "partial"), None)
        return None if p is None or self.first_sent is None else 1000 * (p.at - self.first_sent)


def stream_frames(
    frames: Iterable[np.ndarray],
    url: str,
    *,
    prepare: dict | None = None,
    chunk: int = 8,
    on_event: Callable[[StreamEvent], None] | None = None,
    timeout: float = 60.0,
) -> StreamResult:
    """Raw RGB frames -> ROIs -> the server, chunk by chunk; the final transcript back.

    Stops early (and still asks for the final transcript) on KeyboardInterrupt, so Ctrl+C
    on a webcam stream ends it cleanly.
    """
    from mouthmap.serving.roi_stream import StreamingRoiExtractor

    prepare = prepare if prepare is not None else server_prepare(url)
    extractor = StreamingRoiExtractor(**prepare)
    res = StreamResult(text=None, frames=0, rois=0)
    stream = TritonStream(url)

    def record(ev: StreamEvent) -> None:
        res.events.append(ev)
        if ev.kind == "error" and res.error is None:
            res.error = ev
        if on_event:
            on_event(ev)

    def send(parts: list[np.ndarray], end: bool) -> None:
        arr = np.concatenate(parts) if parts else np.zeros((0, ROI_SIZE, ROI_SIZE), np.uint8)
        if res.first_sent is None:
            res.first_sent = time.monotonic()
        stream.send(arr, end=end)
        res.rois += len(arr)

    try:
        buf: list[np.ndarray] = []
        pending = 0
        try:
            for frame in frames:
                res.frames += 1
                rois = extractor.push(frame)
                if len(rois):
                    buf.append(rois)
                    pending += len(rois)
                if pending >= chunk:
                    send(buf, end=False)
                    buf, pending = [], 0
                for ev in stream.arrived():
                    record(ev)
                if res.error is not None:
                    break
        except KeyboardInterrupt:
            pass
        except Exception:  # a bad frame, no mouth for too long: free the server's state now
            with contextlib.suppress(Exception):
                stream.abort()
            raise
        if res.error is None:
            buf.append(extractor.finish())
            send(buf, end=True)
            res.end_sent = time.monotonic()
            for ev in stream.arrived(deadline=time.monotonic() + timeout):
                record(ev)
                if res.final is not None or res.error is not None:
                    break
            if res.final is None and res.error is None:
                raise StreamClientError(f"no final transcript within {timeout:g} s", "timeout")
        else:
            stream.abort()
    finally:
        stream.close()
    if res.final is not None:
        res.text = res.final.text
    return res
