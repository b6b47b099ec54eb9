"""Pieces shared by the serving tests: a model package whose transcripts differ from clip to
clip, a Triton server per test module, and small helpers.

The tiny test model (one epoch on 14 clips) says the same words for every clip, so a
streamed transcript would equal the offline one even if the stream dropped or garbled
frames. ``varied_package`` re-draws its classifier: a random projection of the tiny
model's *standardised* features (their per-channel mean and spread measured on sample
clips), so the text depends on what the clips show and on every ROI that went in.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from conftest import SAMPLE

CLIPS = ("bbaf2n", "lgaz8p", "pric5a", "sgiv2p", "pgbk6n")


def clip(code: str) -> Path:
    return SAMPLE / "s1" / "video" / f"{code}.mp4"


def make_varied_package(tiny: Path, out: Path, seed: int = 0) -> Path:
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from mouthmap.data import media, roi
    from mouthmap.data.mouth import get_localiser
    from mouthmap.package import ModelPackage, update_meta
    from mouthmap.serving.streams import normalise

    shutil.copytree(tiny, out)
    pkg = ModelPackage.load(out)
    model = onnx.load(pkg.model_path)
    matmul = [n for n in model.graph.node if n.op_type == "MatMul"][-1]
    add = next(n for n in model.graph.node if n.op_type == "Add" and matmul.output[0] in n.input)
    probe = onnx.load(pkg.model_path)
    probe.graph.output.append(
        helper.make_tensor_value_info(matmul.input[0], onnx.TensorProto.FLOAT, None)
    )
    sess = ort.InferenceSession(probe.SerializeToString())
    loc = get_localiser("mediapipe")
    feats = []
    for code in CLIPS[:3]:
        rois, _ = roi.extract_mouth_rois(media.probe_and_decode_video(clip(code)).frames, loc)
        video = normalise(rois, 88, pkg.mean, pkg.std)
        feats.append(sess.run(None, {"video": video, "lengths": np.array([len(rois)])})[1][0])
    f = np.concatenate(feats)
    mean, std = f.mean(0), f.std(0) + 1e-6
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((f.shape[1], 28)).astype(np.float32) * 1.5 / np.sqrt(f.shape[1])
    w /= std[:, None]
    b = -(mean @ w)
    b[0] += 1.0  # some blanks, as a CTC model has
    for path in (pkg.model_path, pkg.fp32_path):
        m = onnx.load(path)
        for init in m.graph.initializer:
            if init.name == matmul.input[1]:
                init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), init.name))
            if init.name in add.input:
                init.CopyFrom(numpy_helper.from_array(b.astype(np.float32), init.name))
        onnx.save(m, path)
    # Grammar rescoring would map this random model's three outputs onto one sentence.
    update_meta(pkg, decoder={**pkg.meta["decoder"], "grammar": False})
    return out


@contextmanager
def triton(repo: Path, state: Path) -> Iterator:
    """A Triton on free loopback ports serving ``repo``; stopped on exit, whatever happens."""
    from mouthmap.serving.server import TritonServer

    server = TritonServer(state)
    try:
        yield server.up(repo, 0, 0, 0, timeout=180)
    finally:
        server.down()


def active_streams(metrics: str) -> float:
    """Sum of ``mouthmap_active_streams`` over the stream model's instances."""
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("mouthmap_active_streams{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def counter(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(f"mouthmap_{name}_total{{")
    )


@contextmanager
def proxy(settings) -> Iterator[str]:
    """The FastAPI WebSocket proxy in a uvicorn thread on a free loopback port -> base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from mouthmap.serving.proxy import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings)
    config = uvicorn.Config(app, "127.0.0.1", port, log_level="warning", ws="websockets-sansio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def write_y4m(video: Path, out: Path) -> Path:
    """A clip as a YUV4MPEG2 file, Chromium's fake camera (its own YUV planes, no re-coding)."""
    import av

    with av.open(str(video)) as c, open(out, "wb") as f:
        stream = c.streams.video[0]
        w, h = stream.codec_context.width, stream.codec_context.height
        rate = stream.average_rate
        f.write(
            f"YUV4MPEG2 W{w} H{h} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode()
        )
        for frame in c.decode(stream):
            f.write(b"FRAME\n" + frame.to_ndarray(format="yuv420p").tobytes())
    return out
