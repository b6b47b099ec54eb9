"""Per-stream state of the streaming model, its limits, and the decoding it shares with
``mouthmap transcribe``. Plain Python: the Triton model (``backend/stream.py``) is a thin
shell around :class:`StreamEngine`, and the unit tests drive the engine directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.runtime.transcriber import MIN_FRAMES
from mouthmap.serving.protocol import ROI_SIZE

log = logging.getLogger(__name__)

Encoder = Callable[[np.ndarray, np.ndarray], np.ndarray]  # video (1,1,T,H,W), lengths -> (1,T,C)


@dataclass(frozen=True)
class StreamLimits:
    """What one stream may do; all enforced by the server, whatever the client says."""

    max_streams: int = 64  # open streams at once; more are refused (a clear error)
    max_frames: int = 1500  # 60 s at 25 fps: longer streams are ended with an error
    max_chunk_frames: int = 250  # frames in one request
    idle_timeout_s: float = 10.0  # a stream silent this long is ended and its state freed
    max_duration_s: float = 300.0  # wall-clock life of a stream, idle or not
    partial_every: int = 8  # frames between partial transcripts (0: no partials)
    partial_window: int = 250  # partials decode at most the last N frames (bounded cost)
    shed_partials: int = 1  # 1: skip a due partial while another encoder call is in flight

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"stream limit {f.name} must not be negative")

    @classmethod
    def from_params(cls, params: dict[str, str]) -> StreamLimits:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in params:
                kw[f.name] = type(getattr(cls(), f.name))(float(params[f.name]))
        return cls(**kw)

    def as_params(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


class StreamError(Exception):
    """A request the stream model refuses; ``code`` is stable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.args[0]}"


def load_meta(package_dir: str | Path) -> dict[str, Any]:
    """``mouthmap.json`` of a package or of the slimmed copy in a served repository."""
    return json.loads((Path(package_dir) / "mouthmap.json").read_text())


def make_decoder(meta: dict[str, Any], package_dir: str | Path, name: str) -> Callable:
    """The decoder ``mouthmap transcribe`` builds for this package (same class, same
    settings from ``mouthmap.json``), as a ``log_probs (T, C) -> text`` function."""
    if name == "greedy":
        from mouthmap.decode.greedy import greedy_decode

        return greedy_decode
    if name != "beam":
        raise ValueError(f"unknown decoder {name!r}: use greedy or beam")
    from mouthmap.decode.beam import BeamDecoder

    lm = meta.get("files", {}).get("lm")
    beam = BeamDecoder(Path(package_dir) / lm if lm else None, **meta.get("decoder", {}))
    return beam.decode


def normalise(rois: np.ndarray, crop: int, mean: float, std: float) -> np.ndarray:
    """(T, 96, 96) uint8 ROIs -> (1, 1, T, crop, crop) float32, as the offline transcriber."""
    off = (rois.shape[1] - crop) // 2
    x = rois[:, off : off + crop, off : off + crop].astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - mean) / std)[None, None], dtype=np.float32)


@dataclass
class Event:
    """What the engine sends back on a request's response sender."""

    text: str = ""
    frames: int = 0
    final: bool = False
    server_ms: float = 0.0
    error: StreamError | None = None


@dataclass
class StreamState:
    cid: int
    started: float
    last_seen: float
    rois: np.ndarray = field(default_factory=lambda: np.zeros((0, 96, 96), np.uint8))
    n: int = 0
    pending: list[tuple[Any, float]] = field(default_factory=list)  # (sender, arrival)
    ended: bool = False
    scheduled: bool = False
    last_partial: int = 0

    def append(self, chunk: np.ndarray) -> None:
        need = self.n + len(chunk)
        if need > len(self.rois):  # grow geometrically: appends stay O(1) amortised
            grown = np.empty((max(need, 2 * len(self.rois), 64), *chunk.shape[1:]), np.uint8)
            grown[: self.n] = self.rois[: self.n]
            self.rois = grown
        self.rois[self.n : need] = chunk
        self.n = need


class StreamEngine:
    """Streams by correlation id: ROIs in, partial transcripts while they arrive, the final
    transcript (the package's decoder, beam + KenLM) once the stream ends.

    ``send(sender, event)`` delivers one event and ``close(sender)`` completes a request
    (Triton: the empty response flagged final); both may raise when the client is gone,
    which ends that stream only. Work runs on ``submit`` (a thread pool in Triton), one job
    per stream at a time, so many streams keep the encoder's dynamic batcher busy.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        package_dir: str | Path,
        encode: Encoder,
        send: Callable[[Any, Event], None],
        close: Callable[[Any], None],
        submit: Callable[[Callable[[], None]], Any],
        limits: StreamLimits | None = None,
        decoder: str = "beam",
        partial_decoder: str = "greedy",
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, int], None] | None = None,
        observe: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        """``observe(rois, log_probs)`` sees every finished stream (the drift monitor)."""
        self.meta = meta
        self.limits = limits or StreamLimits()
        self.encode = encode
        self._send, self._close, self._submit = send, close, submit
        self.clock = clock
        self.crop = int(meta["input"]["height"])
        self.mean = float(meta["normalisation"]["mean"])
        self.std = float(meta["normalisation"]["std"])
        self.decode_final = make_decoder(meta, package_dir, decoder)
        self.decode_partial = make_decoder(meta, package_dir, partial_decoder)
        self._decode_lock = threading.Lock()  # pyctcdecode is pure Python: no gain in parallel
        self.lock = threading.Lock()
        self.streams: dict[int, StreamState] = {}
        self._in_flight = 0  # encoder calls running or waiting (partials and finals)
        self._ended: OrderedDict[int, str] = OrderedDict()  # recent ends, for clear errors
        self.on_change = on_change or (lambda what, n: None)
        self.observe = observe

    # -- requests --------------------------------------------------------------------------
    def accept(
        self, sender: Any, cid: int, start: bool, end: bool, rois: Any, abort: bool = False
    ) -> None:
        """One request of a stream: validate, append, schedule the stream's next job."""
        now = self.clock()
        try:
            chunk = self._check_rois(rois)
            with self.lock:
                st = self._stream_for(cid, start, now)
                if abort:
                    self._drop(st, "aborted by the client")
                    self.on_change("aborted", 1)
                    raise _Done()
                if st.ended:
                    raise StreamError("ended", f"stream {cid} already received its END request")
                if st.n + len(chunk) > self.limits.max_frames:
                    self._fail(st, "too_long", self._too_long(st.n + len(chunk)))
                    raise StreamError("too_long", self._too_long(st.n + len(chunk)))
                st.append(chunk)
                st.last_seen = now
                st.pending.append((sender, now))
                st.ended = end
                schedule = not st.scheduled
                st.scheduled = True
            self.on_change("frames", len(chunk))
            if schedule:
                self._submit(lambda: self._run(st))
        except _Done:
            self._finish(sender)
        except StreamError as e:
            self.on_change("rejected", 1)
            self._reply_error(sender, e)

    def _too_long(self, n: int) -> str:
        lim = self.limits.max_frames
        return f"stream longer than {lim} frames ({lim / 25:.0f} s at 25 fps): got {n}; ended"

    def _check_rois(self, rois: Any) -> np.ndarray:
        if rois is None:
            raise StreamError("bad_input", "the request has no ROIS tensor")
        arr = np.asarray(rois)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (ROI_SIZE, ROI_SIZE):
            raise StreamError(
                "bad_input",
                f"ROIS must be uint8 [n, 96, 96] mouth crops, got {arr.dtype} {list(arr.shape)}",
            )
        if len(arr) > self.limits.max_chunk_frames:
            raise StreamError(
                "chunk_too_large",
                f"{len(arr)} frames in one request; at most {self.limits.max_chunk_frames}",
            )
        return arr

    def _stream_for(self, cid: int, start: bool, now: float) -> StreamState:
        if start:
            if cid in self.streams:  # a restarted id: the old stream is abandoned
                self._drop(self.streams[cid], "restarted with the same id")
            if len(self.streams) >= self.limits.max_streams:
                raise StreamError(
                    "busy", f"the server has {len(self.streams)} open streams (its limit); retry"
                )
            st = StreamState(cid=cid, started=now, last_seen=now)
            self.streams[cid] = st
            self._ended.pop(cid, None)
            self.on_change("started", 1)
            self.on_change("active", len(self.streams))
            return st
        st = self.streams.get(cid)
        if st is None:
            why = self._ended.get(cid, "it was never started (send START first) or has expired")
            raise StreamError("unknown_stream", f"stream {cid} is not open: {why}")
        return st

    # -- work --------------------------------------------------------------------------------
    def _run(self, st: StreamState) -> None:
        """The stream's job: answer every pending request, then give the stream back."""
        while True:
            with self.lock:
                if self.streams.get(st.cid) is not st:  # dropped meanwhile (error, expiry)
                    pending, st.pending = st.pending, []
                    st.scheduled = False
                    done = True
                else:
                    pending, st.pending = st.pending, []
                    n, ended, done = st.n, st.ended, False
                    if not pending:
                        st.scheduled = False
                        return
            if done:
                for sender, _ in pending:
                    self._finish(sender)
                return
            try:
                if ended:
                    self._final(st, n, pending)
                    return
                self._maybe_partial(st, n, pending)
            except Exception as e:  # the model or decoder failed: end this stream only
                log.exception("stream %s failed", st.cid)
                with self.lock:
                    self._fail(st, "internal", f"the server failed on this stream: {e}")
                for sender, _ in pending:
                    self._reply_error(sender, StreamError("internal", str(e)))
                return

    def _maybe_partial(self, st: StreamState, n: int, pending: list) -> None:
        every = self.limits.partial_every
        sender, arrival = pending[-1]
        due = every and n >= max(every, MIN_FRAMES) and n - st.last_partial >= every
        if due and self.limits.shed_partials and self._busy():
            due = False  # best effort: the encoder is busy, the next request tries again
            self.on_change("partials_shed", 1)
        if due:
            lo = max(0, n - self.limits.partial_window) if self.limits.partial_window else 0
            logp = self._encode(st.rois[lo:n])
            with self._decode_lock:
                text = self.decode_partial(logp)
            st.last_partial = n
            ms = 1000 * (self.clock() - arrival)
            if not self._deliver(st, sender, Event(text=text, frames=n, server_ms=ms)):
                return
            self.on_change("partials", 1)
        for s, _ in pending:
            if not self._finish(s):
                self._gone(st)
                return

    def _final(self, st: StreamState, n: int, pending: list) -> None:
        sender, arrival = pending[-1]  # the END request: it came last
        for s, _ in pending[:-1]:
            self._finish(s)
        with self.lock:
            self.streams.pop(st.cid, None)
            self._remember(st.cid, "it ended normally")
            self.on_change("active", len(self.streams))
        if n < MIN_FRAMES:
            self.on_change("failed", 1)
            self._reply_error(
                sender,
                StreamError(
                    "too_short", f"only {n} frames ({n / 25:.2f} s); need at least {MIN_FRAMES}"
                ),
            )
            return
        logp = self._encode(st.rois[:n])
        with self._decode_lock:
            text = self.decode_final(logp)
        ms = 1000 * (self.clock() - arrival)
        if self.observe is not None:
            try:
                self.observe(st.rois[:n], logp)
            except Exception:  # monitoring never fails a stream
                log.exception("stream %s: observer failed", st.cid)
        st.rois = st.rois[:0]
        if self._deliver(st, sender, Event(text=text, frames=n, final=True, server_ms=ms)):
            self._finish(sender)
            self.on_change("completed", 1)

    def _encode(self, rois: np.ndarray) -> np.ndarray:
        video = normalise(rois, self.crop, self.mean, self.std)
        with self.lock:
            self._in_flight += 1
        try:
            return self.encode(video, np.array([[len(rois)]], np.int64))[0]
        finally:
            with self.lock:
                self._in_flight -= 1

    def _busy(self) -> bool:
        """Another stream's encoder call is in flight or waiting in this engine."""
        with self.lock:
            return self._in_flight > 0

    # -- delivery -------------------------------------------------------------------------------
    def _deliver(self, st: StreamState, sender: Any, event: Event) -> bool:
        try:
            self._send(sender, event)
            return True
        except Exception as e:  # the client went away: free the stream, others carry on
            log.info("stream %s: client gone (%s)", st.cid, e)
            self._gone(st)
            return False

    def _gone(self, st: StreamState) -> None:
        with self.lock:
            if self.streams.get(st.cid) is st:
                self._drop(st, "its client disconnected")
        self.on_change("disconnected", 1)

    def _finish(self, sender: Any) -> bool:
        try:
            self._close(sender)
            return True
        except Exception:
            return False

    def _reply_error(self, sender: Any, err: StreamError) -> None:
        with contextlib.suppress(Exception):
            self._send(sender, Event(error=err))
        self._finish(sender)

    # -- bookkeeping (callers hold self.lock) ---------------------------------------------------
    def _remember(self, cid: int, why: str) -> None:
        self._ended[cid] = why
        while len(self._ended) > 4096:
            self._ended.popitem(last=False)

    def _drop(self, st: StreamState, why: str) -> None:
        if self.streams.get(st.cid) is st:
            del self.streams[st.cid]
        self._remember(st.cid, why)
        st.rois = st.rois[:0]
        self.on_change("active", len(self.streams))

    def _fail(self, st: StreamState, code: str, why: str) -> None:
        self._drop(st, why)
        self.on_change("failed", 1)
        pending, st.pending = st.pending, []
        for sender, _ in pending:  # requests still waiting on this stream get the reason
            self._reply_error(sender, StreamError(code, why))

    def expire(self) -> list[int]:
        """End streams idle longer than ``idle_timeout_s`` or older than ``max_duration_s``
        (a client that vanished, a stream that never ends). Returns their ids."""
        now = self.clock()
        lim = self.limits
        out = []
        with self.lock:
            for st in list(self.streams.values()):
                if st.scheduled:  # being worked on: its requests are answered first
                    continue
                if lim.idle_timeout_s and now - st.last_seen > lim.idle_timeout_s:
                    why = f"idle for more than {lim.idle_timeout_s:g} s; ended by the server"
                elif lim.max_duration_s and now - st.started > lim.max_duration_s:
                    why = f"open for more than {lim.max_duration_s:g} s; ended by the server"
                else:
                    continue
                self._fail(st, "expired", why)
                out.append(st.cid)
        if out:
            self.on_change("expired", len(out))
        return out

    @property
    def active(self) -> int:
        with self.lock:
            return len(self.streams)


class _Done(Exception):
    """Internal: the request is answered without a job (abort)."""
