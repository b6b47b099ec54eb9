"""Per-stream state of the streaming model, its limits, and the decoding it shares with
``mouthmap transcribe``. Plain Python: the Triton model (``backend/stream.py``) is a thin
shell around :class:`StreamEngine`, and the unit tests drive the engine directly.

The engine works on *batches* of requests, the way Triton's sequence batcher (``oldest``
strategy) hands them to the model: at most one request of each stream per batch, many
streams per batch. Everything for a batch happens in one call, on one thread: append the
new ROIs, run the encoder for the streams that ended (final transcripts, sent first) and
for those due a partial, decode, respond. There is no thread pool and no call to another
model (see ``backend/stream.py`` for why).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mouthmap.runtime.transcriber import MIN_FRAMES
from mouthmap.serving.batching import Run, run_batch
from mouthmap.serving.protocol import ROI_SIZE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamLimits:
    """What one stream may do; all enforced by the server, whatever the client says."""

    max_streams: int = 64  # open streams per model instance; more are refused (a clear error)
    max_frames: int = 1500  # 60 s at 25 fps: longer streams are ended with an error
    max_chunk_frames: int = 250  # frames in one request
    idle_timeout_s: float = 10.0  # a stream silent this long is ended and its state freed
    max_duration_s: float = 300.0  # wall-clock life of a stream, idle or not
    partial_every: int = 8  # frames between partial transcripts (0: no partials)
    partial_window: int = 250  # partials decode at most the last N frames (bounded cost)
    partial_budget_ms: float = 100.0  # encoder time a batch may spend on partials (0: no cap)
    shed_busy: float = 0.8  # skip partials while the instance was busier than this share
    #                         of the last second (0: never skip); finals are never skipped

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
    settings from ``mouthmap.json``), as a ``(log_probs (T, C), word log-probs (T, K) or
    None) -> text`` function."""
    if name == "greedy":
        from mouthmap.decode.greedy import greedy_decode

        return lambda log_probs, word_log_probs=None: greedy_decode(log_probs)
    if name != "beam":
        raise ValueError(f"unknown decoder {name!r}: use greedy or beam")
    from mouthmap.decode.beam import BeamDecoder

    lm = meta.get("files", {}).get("lm")
    beam = BeamDecoder(Path(package_dir) / lm if lm else None, **meta.get("decoder", {}))
    return lambda log_probs, word_log_probs=None: beam.decode(
        log_probs, word_log_probs=word_log_probs
    )


def normalise(rois: np.ndarray, crop: int, mean: float, std: float) -> np.ndarray:
    """(T, 96, 96) uint8 ROIs -> (1, 1, T, crop, crop) float32, as the offline transcriber."""
    off = (rois.shape[1] - crop) // 2
    x = rois[:, off : off + crop, off : off + crop].astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - mean) / std)[None, None], dtype=np.float32)


@dataclass
class Request:
    """One request of a stream as the model received it (``error``: it could not be read)."""

    sender: Any
    cid: int
    start: bool = False
    end: bool = False
    rois: Any = None
    abort: bool = False
    error: StreamError | None = None


@dataclass
class Event:
    """What the engine sends back on a request's response sender."""

    text: str = ""
    frames: int = 0
    final: bool = False
    server_ms: float = 0.0
    error: StreamError | None = None


class StreamState:
    """The ROIs of one open stream (grown geometrically: appends are O(1) amortised)."""

    def __init__(self, cid: int, now: float) -> None:
        self.cid, self.started, self.last_seen = cid, now, now
        self.rois = np.zeros((0, ROI_SIZE, ROI_SIZE), np.uint8)
        self.n = 0
        self.ended = False
        self.last_partial = 0

    def append(self, chunk: np.ndarray) -> None:
        need = self.n + len(chunk)
        if need > len(self.rois):
            grown = np.empty((max(need, 2 * len(self.rois), 64), *chunk.shape[1:]), np.uint8)
            grown[: self.n] = self.rois[: self.n]
            self.rois = grown
        self.rois[self.n : need] = chunk
        self.n = need

    def free(self) -> None:
        self.rois = self.rois[:0]


class BusyMeter:
    """Share of the last ``window`` seconds spent executing batches (the load signal that
    sheds partials: a saturated instance answers finals and completes requests first)."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self.spans: deque[tuple[float, float]] = deque()

    def add(self, t0: float, t1: float) -> None:
        self.spans.append((t0, t1))

    def share(self, now: float, running_since: float | None = None) -> float:
        lo = now - self.window
        while self.spans and self.spans[0][1] <= lo:
            self.spans.popleft()
        busy = sum(min(b, now) - max(a, lo) for a, b in self.spans if b > lo)
        if running_since is not None:
            busy += now - max(running_since, lo)
        return min(1.0, busy / self.window)


class StreamEngine:
    """Streams by correlation id: ROIs in, partial transcripts while they arrive, the final
    transcript (the package's decoder, beam + KenLM) once the stream ends.

    ``run(video, lengths) -> log_probs`` is the encoder (ONNX Runtime in the same process),
    or ``-> (log_probs, word log-probs or None)`` for a model with a word head;
    a batch's clips go through :func:`~mouthmap.serving.batching.run_batch` (``batch_mode``).
    ``send(sender, event)`` delivers one event and completes its request (one response
    per request); ``close(sender)`` completes a request
    with no response (Triton: the empty response flagged final); both may raise when the
    client is gone,
    which ends that stream only. :meth:`execute` and :meth:`expire` take one lock, so the
    callbacks are never called from two threads at once.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        package_dir: str | Path,
        run: Run,
        send: Callable[[Any, Event], None],
        close: Callable[[Any], None],
        limits: StreamLimits | None = None,
        decoder: str = "beam",
        partial_decoder: str = "greedy",
        batch_mode: str = "exact",
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, int], None] | None = None,
        observe: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> None:
        """``observe(rois, log_probs)`` sees every finished stream (the drift monitor)."""
        self.meta = meta
        self.limits = limits or StreamLimits()
        self.run = run
        self.batch_mode = batch_mode
        self._send, self._close = send, close
        self.clock = clock
        self.crop = int(meta["input"]["height"])
        self.mean = float(meta["normalisation"]["mean"])
        self.std = float(meta["normalisation"]["std"])
        self.decode_final = make_decoder(meta, package_dir, decoder)
        self.decode_partial = make_decoder(meta, package_dir, partial_decoder)
        self.lock = threading.RLock()
        self.streams: dict[int, StreamState] = {}
        self._ended: OrderedDict[int, str] = OrderedDict()  # recent ends, for clear errors
        self.busy = BusyMeter()
        self.on_change = on_change or (lambda what, n: None)
        self.observe = observe

    # -- a batch ---------------------------------------------------------------------------
    def execute(self, requests: list[Request]) -> None:
        """Answer a batch of requests (of different streams): finals first, then partials
        within the batch's budget, then complete the rest."""
        with self.lock:
            t0 = self.clock()
            finals: list[tuple[StreamState, Any]] = []
            partials: list[tuple[StreamState, Any]] = []
            rest: list[Any] = []
            for r in requests:
                kind, st = self._accept(r, t0)
                if kind == "final":
                    finals.append((st, r.sender))
                elif kind == "partial":
                    partials.append((st, r.sender))
                elif kind == "ack":
                    rest.append(r.sender)
            try:
                self._finals(finals, t0)
                rest += self._partials(partials, t0)
                for sender in rest:
                    self._finish(sender)
            finally:
                self.busy.add(t0, self.clock())

    def _accept(self, r: Request, now: float) -> tuple[str, StreamState | None]:
        """Validate one request and add its ROIs: ``final``, ``partial`` (due), ``ack``, or
        ``done`` (already answered: an error, an abort, a too-short stream)."""
        try:
            if r.error is not None:
                raise r.error
            chunk = self._check_rois(r.rois)
            st = self._stream_for(r.cid, r.start, now)
            if r.abort:
                self._drop(st, "aborted by the client")
                self.on_change("aborted", 1)
                self._finish(r.sender)
                return "done", None
            if st.ended:
                raise StreamError("ended", f"stream {r.cid} already received its END request")
            if st.n + len(chunk) > self.limits.max_frames:
                why = self._too_long(st.n + len(chunk))
                self._drop(st, why)
                self.on_change("failed", 1)
                raise StreamError("too_long", why)
        except StreamError as e:
            self.on_change("rejected", 1)
            self._reply_error(r.sender, e)
            return "done", None
        st.append(chunk)
        st.last_seen = now
        self.on_change("frames", len(chunk))
        if r.end:
            st.ended = True
            self._drop(st, "it ended normally", free=False)
            if st.n < MIN_FRAMES:
                self.on_change("failed", 1)
                n = st.n
                st.free()
                self._reply_error(r.sender, StreamError(
                    "too_short", f"only {n} frames ({n / 25:.2f} s); need at least {MIN_FRAMES}"
                ))  # fmt: skip
                return "done", None
            return "final", st
        every = self.limits.partial_every
        due = every and st.n >= max(every, MIN_FRAMES) and st.n - st.last_partial >= every
        return ("partial" if due else "ack"), st

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
            st = StreamState(cid, now)
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

    # -- work ----------------------------------------------------------------------------------
    def _groups(self, items: list) -> list[list]:
        """Encoder calls: one per clip (``exact``: as offline, bit for bit) or one fused call."""
        if self.batch_mode == "padded":
            return [items] if items else []
        return [[it] for it in items]

    def _encode(self, rois: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Each clip's (log-probs, word log-probs or None)."""
        videos = [normalise(r, self.crop, self.mean, self.std) for r in rois]
        lengths = [np.array([len(r)], np.int64) for r in rois]
        outs = run_batch(self.run, videos, lengths, self.batch_mode)
        return [
            (o[0][0], None if o[1] is None else o[1][0]) if isinstance(o, tuple) else (o[0], None)
            for o in outs
        ]

    def _finals(self, finals: list[tuple[StreamState, Any]], t0: float) -> None:
        for group in self._groups(finals):
            try:
                logps = self._encode([st.rois[: st.n] for st, _ in group])
            except Exception as e:  # the model failed: these streams end with the reason
                log.exception("encoder failed on %d final(s)", len(group))
                for st, sender in group:
                    self._failed(st, sender, e)
                continue
            for (st, sender), (logp, words) in zip(group, logps, strict=True):
                try:
                    text = self.decode_final(logp, words)
                except Exception as e:
                    log.exception("stream %s: decoder failed", st.cid)
                    self._failed(st, sender, e)
                    continue
                ms = 1000 * (self.clock() - t0)
                if self.observe is not None:
                    try:
                        self.observe(st.rois[: st.n], logp)
                    except Exception:  # monitoring never fails a stream
                        log.exception("stream %s: observer failed", st.cid)
                n = st.n
                st.free()
                if self._deliver(st, sender, Event(text=text, frames=n, final=True, server_ms=ms)):
                    self.on_change("completed", 1)

    def _partials(self, due: list[tuple[StreamState, Any]], t0: float) -> list[Any]:
        """Partials for as many due streams as the load allows (the longest-waiting first);
        returns the senders still to complete (those whose partial was skipped)."""
        lim = self.limits
        skipped: list[Any] = []
        if not due:
            return skipped
        if lim.shed_busy and self.busy.share(self.clock(), t0) > lim.shed_busy:
            self.on_change("partials_shed", len(due))
            return [sender for _, sender in due]
        due = sorted(due, key=lambda item: item[0].n - item[0].last_partial, reverse=True)
        groups = self._groups(due)
        p0 = self.clock()
        for i, group in enumerate(groups):
            if lim.partial_budget_ms and i and 1000 * (self.clock() - p0) > lim.partial_budget_ms:
                rest = [it for g in groups[i:] for it in g]
                self.on_change("partials_shed", len(rest))
                return skipped + [sender for _, sender in rest]
            live = [(st, s) for st, s in group if self.streams.get(st.cid) is st]
            skipped += [s for st, s in group if self.streams.get(st.cid) is not st]
            if not live:
                continue
            spans = [(max(0, st.n - lim.partial_window) if lim.partial_window else 0, st.n)
                     for st, _ in live]  # fmt: skip
            try:
                logps = self._encode(
                    [st.rois[lo:hi] for (st, _), (lo, hi) in zip(live, spans, strict=True)]
                )
            except Exception as e:
                log.exception("encoder failed on %d partial(s)", len(live))
                for st, sender in live:
                    self._failed(st, sender, e)
                continue
            for (st, sender), (logp, words) in zip(live, logps, strict=True):
                text = self.decode_partial(logp, words)
                st.last_partial = st.n
                ev = Event(text=text, frames=st.n, server_ms=1000 * (self.clock() - t0))
                if self._deliver(st, sender, ev):
                    self.on_change("partials", 1)
        return skipped

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
        if self.streams.get(st.cid) is st:
            self._drop(st, "its client disconnected")
        st.free()
        self.on_change("disconnected", 1)

    def _failed(self, st: StreamState, sender: Any, err: Exception) -> None:
        self._drop(st, f"the server failed on this stream: {err}")
        self.on_change("failed", 1)
        self._reply_error(sender, StreamError("internal", f"the server failed: {err}"))

    def _finish(self, sender: Any) -> bool:
        try:
            self._close(sender)
            return True
        except Exception:
            return False

    def _reply_error(self, sender: Any, err: StreamError) -> None:
        try:
            self._send(sender, Event(error=err))  # completes the request too
        except Exception:
            self._finish(sender)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _remember(self, cid: int, why: str) -> None:
        self._ended[cid] = why
        while len(self._ended) > 4096:
            self._ended.popitem(last=False)

    def _drop(self, st: StreamState, why: str, free: bool = True) -> None:
        if self.streams.get(st.cid) is st:
            del self.streams[st.cid]
            self.on_change("active", len(self.streams))
        self._remember(st.cid, why)
        if free:
            st.free()

    def expire(self) -> list[int]:
        """End streams idle longer than ``idle_timeout_s`` or older than ``max_duration_s``
        (a client that vanished, a stream that never ends). Returns their ids. Their requests
        were all answered already (a batch completes every request it gets)."""
        lim = self.limits
        out = []
        with self.lock:
            now = self.clock()
            for st in list(self.streams.values()):
                if lim.idle_timeout_s and now - st.last_seen > lim.idle_timeout_s:
                    why = f"idle for more than {lim.idle_timeout_s:g} s; ended by the server"
                elif lim.max_duration_s and now - st.started > lim.max_duration_s:
                    why = f"open for more than {lim.max_duration_s:g} s; ended by the server"
                else:
                    continue
                self._drop(st, why)
                out.append(st.cid)
            if out:
                self.on_change("expired", len(out))
                self.on_change("failed", len(out))
        return out

    @property
    def active(self) -> int:
        with self.lock:
            return len(self.streams)
