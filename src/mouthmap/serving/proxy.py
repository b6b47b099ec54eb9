"""WebSocket proxy for browsers (`mouthmap proxy`): camera frames in, transcripts out as
JSON, each connection bridged to its own Triton gRPC stream.

Protocol (``ws://HOST:PORT/ws?token=TOKEN``; the page at ``/`` speaks it):

1. client: ``{"type": "start", "width": W, "height": H, "format": "jpeg" | "rgb" | "rgba",
   "fps": 25}``; server: ``{"type": "ready", "limits": {...}}``
2. client: one binary message per frame (a JPEG, or raw W*H*3 RGB / W*H*4 RGBA bytes)
3. server, while frames arrive: ``{"type": "partial", "text": ..., "frames": n}``
4. client: ``{"type": "end"}``; server: ``{"type": "final", "text", "frames", "server_ms"}``,
   then it closes the socket (code 1000)

Errors are ``{"type": "error", "code": ..., "message": ...}``. A bad frame (undecodable,
wrong size, too large, too fast) is dropped with an error and the stream goes on, up to
``max_bad_frames``; a wrong token, a stream over its length limit or a silent client end
the connection (close code 1008), with the error sent first. The mouth ROIs are made
here, with the served package's settings, on a shared thread pool; one client's frames
never hold up another's, and each client's rate is capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket  # at module level: FastAPI reads the annotations
from fastapi.responses import HTMLResponse, JSONResponse, Response

log = logging.getLogger(__name__)

FORMATS = {"jpeg": None, "rgb": 3, "rgba": 4}


@dataclass(frozen=True)
class ProxySettings:
    triton_url: str = "127.0.0.1:8001"
    token: str = ""
    max_fps: float = 30.0  # sustained frame rate per client (1 s of burst allowed)
    max_seconds: float = 60.0  # longest stream, in seconds of frames at the declared fps
    max_frame_bytes: int = 4_000_000
    max_side: int = 1920
    min_side: int = 32
    max_bad_frames: int = 10
    max_connections: int = 32
    chunk: int = 8  # ROIs per gRPC request
    start_timeout_s: float = 10.0
    idle_timeout_s: float = 10.0  # no message for this long ends the connection
    final_timeout_s: float = 30.0
    workers: int = 4  # threads decoding frames and locating mouths, shared by all clients

    def limits(self) -> dict[str, Any]:
        keys = ("max_fps", "max_seconds", "max_frame_bytes", "max_side", "max_bad_frames")
        return {k: v for k, v in asdict(self).items() if k in keys}


class ClientError(Exception):
    def __init__(self, code: str, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.fatal = code, fatal


# start-of-frame markers (baseline, progressive, ...) carry the image size; C4, C8 and CC are
# other segments that share the range
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """A JPEG's (width, height) read from its frame header, without decoding a pixel; None
    when ``data`` holds no frame header before its image data."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or image data before any frame header
            return None
        if marker in _SOF:
            if i + 9 > len(data):
                return None
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(
                data[i + 5 : i + 7], "big"
            )
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_frame(data: bytes, fmt: str, width: int, height: int) -> np.ndarray:
    """One frame message -> (H, W, 3) uint8 RGB, or :class:`ClientError` saying what is wrong."""
    import cv2

    channels = FORMATS[fmt]
    if channels is not None:
        want = width * height * channels
        if len(data) != want:
            raise ClientError(
                "bad_frame",
                f"{len(data)} bytes; a {width}x{height} {fmt} frame has {want}",
            )
        arr = np.frombuffer(data, np.uint8).reshape(height, width, channels)
        return np.ascontiguousarray(arr[..., :3])
    # the size a JPEG declares is checked before decoding: a few hundred bytes can declare
    # 8000x8000 pixels, which a decoder would allocate (192 MB) before any check after it
    size = jpeg_size(data)
    if size is None:
        raise ClientError("bad_frame", f"{len(data)} bytes that are not a JPEG image")
    if size != (width, height):
        raise ClientError(
            "bad_frame",
            f"a {size[0]}x{size[1]} image; the stream was started as {width}x{height}",
        )
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ClientError("bad_frame", f"{len(data)} bytes that are not a JPEG image")
    if img.shape[:2] != (height, width):
        raise ClientError(
            "bad_frame",
            f"a {img.shape[1]}x{img.shape[0]} image; the stream was started as {width}x{height}",
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class Session:
    """One browser connection: its frame checks, ROI extractor and Triton stream."""

    def __init__(self, ws: Any, settings: ProxySettings, pool: ThreadPoolExecutor, prepare: dict):
        self.ws, self.s, self.pool, self.prepare = ws, settings, pool, prepare
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.stream = None
        self.extractor = None
        self.frames = self.bad = 0
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.final_sent = self.failed = False

    async def send(self, obj: dict) -> None:
        with contextlib.suppress(Exception):  # the browser may be gone already
            await self.ws.send_text(json.dumps(obj))

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def _in_pool(self, fn, *args):
        return await self.loop.run_in_executor(self.pool, fn, *args)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> None:
        from mouthmap.serving.client import TritonStream
        from mouthmap.serving.roi_stream import StreamingRoiExtractor

        start = await self._start_message()
        self.width, self.height, self.fmt = start["width"], start["height"], start["format"]
        self.fps = float(start.get("fps") or 25.0)
        self.max_frames = int(self.s.max_seconds * self.fps)
        self.extractor = await self._in_pool(lambda: StreamingRoiExtractor(**self.prepare))

        def on_event(ev) -> None:  # gRPC thread -> event loop
            self.loop.call_soon_threadsafe(self.events.put_nowait, ev)

        self.stream = await self._in_pool(
            lambda: TritonStream(self.s.triton_url, on_event=on_event)
        )
        await self.send({"type": "ready", "limits": self.s.limits()})
        self.t0 = time.monotonic()
        pump = asyncio.create_task(self._pump())
        try:
            await self._receive()
            if self.stream.ended and not self.final_sent:
                await asyncio.wait_for(self._until_final(), self.s.final_timeout_s)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            if not self.stream.ended:
                with contextlib.suppress(Exception):
                    await self._in_pool(self.stream.abort)  # the server frees its state now
            await self._in_pool(self.stream.close)

    async def _start_message(self) -> dict:
        try:
            msg = await asyncio.wait_for(self.ws.receive_text(), self.s.start_timeout_s)
            start = json.loads(msg)
        except TimeoutError:
            raise ClientError("no_start", "no start message within the time limit", True) from None
        except (ValueError, KeyError, RuntimeError):
            raise ClientError(
                "bad_start", 'the first message must be JSON {"type": "start", ...}', True
            ) from None
        if not isinstance(start, dict) or start.get("type") != "start":
            raise ClientError("bad_start", 'the first message must be {"type": "start"}', True)
        fmt = start.get("format", "jpeg")
        if fmt not in FORMATS:
            raise ClientError("bad_start", f"format {fmt!r}: use one of {list(FORMATS)}", True)
        try:
            w, h = int(start["width"]), int(start["height"])
            fps = float(start.get("fps", 25))
        except (KeyError, TypeError, ValueError):
            raise ClientError("bad_start", "start needs integer width and height", True) from None
        lo, hi = self.s.min_side, self.s.max_side
        if not (lo <= w <= hi and lo <= h <= hi):
            raise ClientError("bad_start", f"{w}x{h}: each side must be {lo}..{hi} pixels", True)
        if not 1 <= fps <= 60:
            raise ClientError("bad_start", f"fps {fps:g}: must be 1..60", True)
        start.update(width=w, height=h, format=fmt, fps=fps)
        return start

    async def _receive(self) -> None:
        while not self.stream.ended:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), self.s.idle_timeout_s)
            except TimeoutError:
                raise ClientError(
                    "idle", f"no frame for {self.s.idle_timeout_s:g} s; stream ended", True
                ) from None
            if msg["type"] == "websocket.disconnect":
                raise _Disconnected()
            if msg.get("bytes") is not None:
                try:
                    await self._frame(msg["bytes"])
                except ClientError as e:
                    if e.fatal:
                        raise
                    self.bad += 1
                    await self.error(e.code, f"frame {self.frames + self.bad}: {e}")
                    if self.bad > self.s.max_bad_frames:
                        raise ClientError(
                            "too_many_bad_frames", f"more than {self.s.max_bad_frames} bad frames",
                            True,
                        ) from None  # fmt: skip
            elif msg.get("text") is not None:
                await self._control(msg["text"])

    async def _control(self, text: str) -> None:
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            kind = None
        if kind == "end":
            rest = await self._in_pool(self.extractor.finish)
            self._queue(rest)
            await self._flush(end=True)
        else:
            await self.error("bad_message", 'text messages must be {"type": "end"}')

    async def _frame(self, data: bytes) -> None:
        if len(data) > self.s.max_frame_bytes:
            raise ClientError(
                "frame_too_large", f"{len(data)} bytes; at most {self.s.max_frame_bytes}"
            )
        elapsed = time.monotonic() - self.t0
        if self.frames + 1 > self.s.max_fps * (elapsed + 1.0):
            raise ClientError("too_fast", f"more than {self.s.max_fps:g} frames per second")
        if self.frames + 1 > self.max_frames:
            raise ClientError(
                "too_long", f"longer than {self.s.max_seconds:g} s ({self.max_frames} frames)",
                True,
            )  # fmt: skip
        rgb = await self._in_pool(decode_frame, data, self.fmt, self.width, self.height)
        self.frames += 1
        try:
            rois = await self._in_pool(self.extractor.push, rgb)
        except ValueError as e:  # NoMouthError: nothing in view for too long
            raise ClientError("no_mouth", str(e), True) from None
        self._queue(rois)
        if self.n_pending >= self.s.chunk:
            await self._flush(end=False)

    def _queue(self, rois: np.ndarray) -> None:
        if len(rois):
            self.pending.append(rois)
            self.n_pending += len(rois)

    async def _flush(self, end: bool) -> None:
        arr = np.concatenate(self.pending) if self.pending else np.zeros((0, 96, 96), np.uint8)
        self.pending, self.n_pending = [], 0
        self.stream.send(arr, end=end)  # non-blocking: gRPC's own thread writes it

    async def _pump(self) -> None:
        while True:
            ev = await self.events.get()
            await self.send(ev.as_dict())
            if ev.kind == "final":
                self.final_sent = True
            if ev.kind == "error":
                self.failed = True
                with contextlib.suppress(Exception):
                    await self.ws.close(code=1011)

    async def _until_final(self) -> None:
        while not (self.final_sent or self.failed):
            await asyncio.sleep(0.01)


class _Disconnected(Exception):
    pass


def create_app(settings: ProxySettings):
    """The FastAPI app: ``/`` (the page), ``/ws`` (the stream), ``/healthz``."""
    app = FastAPI(title="MouthMap streaming proxy", docs_url=None, redoc_url=None)
    pool = ThreadPoolExecutor(settings.workers, "mouthmap-proxy")
    state = {"active": 0, "prepare": None}
    web = Path(str(resources.files("mouthmap.serving").joinpath("web")))

    async def prepare() -> dict:
        if state["prepare"] is None:
            from mouthmap.serving.client import server_prepare

            loop = asyncio.get_running_loop()
            state["prepare"] = await loop.run_in_executor(pool, server_prepare, settings.triton_url)
        return state["prepare"]

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse((web / "index.html").read_text())

    @app.get("/app.js")
    async def script() -> Response:
        return Response((web / "app.js").read_text(), media_type="text/javascript")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        try:
            await prepare()
            return JSONResponse(
                {"ok": True, "triton": settings.triton_url, "active": state["active"]}
            )
        except Exception as e:
            return JSONResponse({"ok": False, "error": str(e)}, status_code=503)

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket, token: str = "") -> None:
        await ws.accept()
        s = Session(ws, settings, pool, {})
        if not secrets.compare_digest(token.encode(), settings.token.encode()):
            await s.error("unauthorized", "missing or wrong token")
            await ws.close(code=1008)
            return
        if state["active"] >= settings.max_connections:
            await s.error("busy", f"the proxy serves {settings.max_connections} streams; retry")
            await ws.close(code=1013)
            return
        state["active"] += 1
        try:
            s.prepare = await prepare()
            await s.run()
            await ws.close(code=1000)
        except ClientError as e:
            await s.error(e.code, str(e))
            with contextlib.suppress(Exception):
                await ws.close(code=1008)
        except _Disconnected:
            pass
        except Exception as e:  # Triton unreachable, a bug: this client only
            log.exception("proxy session failed")
            await s.error("server", f"{type(e).__name__}: {e}")
            with contextlib.suppress(Exception):
                await ws.close(code=1011)
        finally:
            state["active"] -= 1

    return app
