"""The transcript as it appears while the clip plays: through the Triton stream when a
server runs (`mouthmap serve up` / `mouthmap stack up`), else from local ONNX Runtime.

Both yield :class:`~mouthmap.serving.client.StreamEvent`: ``partial`` every few frames
(greedy over the frames so far), then one ``final`` (the package's own decoder), the same
protocol as the stream model, so the page treats them alike.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import numpy as np

from mouthmap.serving.client import StreamClientError, StreamEvent

__all__ = ["TRITON_ENV", "find_triton", "local_events", "triton_events"]

TRITON_ENV = "MOUTHMAP_TRITON_URL"  # host:port of Triton's gRPC endpoint
PARTIAL_EVERY = 8  # frames, as the stream model


def find_triton(url: str | None = None, timeout: float = 2.0) -> tuple[str | None, str]:
    """A Triton gRPC endpoint serving ``mouthmap_stream``, and a line saying how it was
    found or why none was: ``url``, else ``$MOUTHMAP_TRITON_URL``, else the local stack's."""
    source = "given"
    if not url:
        url, source = os.environ.get(TRITON_ENV), f"${TRITON_ENV}"
    if not url:
        try:
            from mouthmap.serving.server import TritonServer
            from mouthmap.stack import default_state_dir

            ep = TritonServer(default_state_dir()).endpoint()
        except Exception as e:  # a broken state dir must not break the page
            return None, f"no Triton found ({type(e).__name__}: {e})"
        if ep is None:
            return None, "no Triton server running (start one with `mouthmap serve up`)"
        url, source = ep.grpc, "the local stack"
    try:
        from mouthmap.serving.client import server_prepare

        server_prepare(url, timeout=timeout)
    except (StreamClientError, Exception) as e:  # unreachable, no stream model
        return None, f"Triton at {url} ({source}) is not usable: {e}"
    return url, f"Triton at {url} ({source})"


def local_events(
    transcriber, rois: np.ndarray, every: int = PARTIAL_EVERY, fps: float | None = None
) -> Iterator[StreamEvent]:
    """Partial transcripts over growing prefixes of the clip, then the final one; paced at
    ``fps`` (real time) when given, else as fast as it runs."""
    from mouthmap.decode.greedy import greedy_decode

    start = time.monotonic()
    n = len(rois)
    for end in range(every, n, every):
        if fps:
            time.sleep(max(0.0, start + end / fps - time.monotonic()))
        t0 = time.perf_counter()
        text = greedy_decode(transcriber.log_probs(rois[:end]))
        yield StreamEvent("partial", text, end, 1000 * (time.perf_counter() - t0), time.monotonic())
    if fps:
        time.sleep(max(0.0, start + n / fps - time.monotonic()))
    t0 = time.perf_counter()
    text = transcriber.decode(transcriber.log_probs(rois))
    yield StreamEvent("final", text, n, 1000 * (time.perf_counter() - t0), time.monotonic())


def triton_events(
    rois: np.ndarray,
    url: str,
    chunk: int = PARTIAL_EVERY,
    fps: float | None = None,
    timeout: float = 30.0,
) -> Iterator[StreamEvent]:
    """The clip's ROIs over one Triton stream in chunks (paced at ``fps`` when given); the
    server's events as they arrive. Ends after the final event or the first error."""
    from mouthmap.serving.client import TritonStream

    stream = TritonStream(url)
    start = time.monotonic()
    done = False

    def arrived() -> Iterator[StreamEvent]:
        for i in range(0, len(rois), chunk):
            end = min(i + chunk, len(rois))
            if fps:
                time.sleep(max(0.0, start + end / fps - time.monotonic()))
            stream.send(rois[i:end], end=end == len(rois))
            yield from stream.arrived()
        yield from stream.arrived(deadline=time.monotonic() + timeout)

    try:
        for ev in arrived():
            yield ev
            if ev.kind in ("final", "error"):
                done = True
                return
        raise StreamClientError(f"no final transcript within {timeout:g} s", "timeout")
    finally:
        if not done:
            with contextlib.suppress(Exception):
                stream.abort()
        stream.close()
