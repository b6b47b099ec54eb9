"""Streaming serving without servers: streamed ROIs equal offline ROIs, the stream engine's
partials, finals, limits and clean-up, the generated Triton repository, frame checks.

The engine tests give it a stand-in encoder (frame k's pixel value says which symbol it
shows) and hand it batches of requests as Triton's sequence batcher does, so they test the
code around the model: what a client is told, in which order, and what is freed.
The real model, decoder and Triton are in ``test_serving_triton.py``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from _serving_fixtures import clip
from mouthmap import alphabet
from mouthmap.data import media, roi
from mouthmap.data.mouth import get_localiser
from mouthmap.serving.streams import (
    Request,
    StreamEngine,
    StreamError,
    StreamLimits,
    normalise,
)

# -- streamed ROIs == offline ROIs ------------------------------------------------------------


def _stream_rois(frames: np.ndarray, **kw) -> tuple[np.ndarray, int]:
    from mouthmap.serving.roi_stream import StreamingRoiExtractor

    ex = StreamingRoiExtractor(**kw)
    parts, lag = [], 0
    for i, f in enumerate(frames):
        parts.append(ex.push(f))
        lag = max(lag, i + 1 - ex.emitted)
    parts.append(ex.finish())
    return np.concatenate(parts), lag


@pytest.mark.parametrize("code", ["bbaf2n", "pric5a"])
def test_rois_made_frame_by_frame_equal_the_offline_rois(code):
    frames = media.probe_and_decode_video(clip(code)).frames
    offline, _ = roi.extract_mouth_rois(frames, get_localiser("mediapipe"))
    streamed, lag = _stream_rois(frames)
    assert np.array_equal(streamed, offline)
    assert lag == 3  # a frame's ROI is final 3 frames later (the centred 7-frame smoothing)


def test_rois_equal_offline_across_frames_without_a_face():
    frames = media.probe_and_decode_video(clip("lgaz8p")).frames.copy()
    frames[:6] = 128  # grey frames at the start (as 9 GRID clips have) and a gap mid-clip
    frames[30:41] = 128
    offline, track = roi.extract_mouth_rois(frames, get_localiser("mediapipe"))
    assert not track.found[:6].any() and not track.found[30:41].any()
    streamed, lag = _stream_rois(frames)
    assert np.array_equal(streamed, offline)
    assert lag > 3  # the gap is held back until the mouth is seen again


def test_frames_of_another_size_and_non_rgb_frames_are_refused():
    from mouthmap.serving.roi_stream import StreamingRoiExtractor

    frames = media.probe_and_decode_video(clip("bbaf2n")).frames[:3]
    ex = StreamingRoiExtractor()
    ex.push(frames[0])
    with pytest.raises(ValueError, match="360x288"):
        ex.push(frames[1][:200, :300])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        ex.push(frames[1].astype(np.float32))


def test_a_camera_without_a_face_does_not_fill_the_memory():
    from mouthmap.serving.roi_stream import NoMouthError, StreamingRoiExtractor

    ex = StreamingRoiExtractor(max_pending=20)
    wall = np.full((288, 360, 3), 90, np.uint8)
    with pytest.raises(NoMouthError, match="no mouth found in the last 21 frames"):
        for _ in range(40):
            ex.push(wall)


# -- the stream engine ------------------------------------------------------------------------

META = {
    "input": {"height": 88},
    "normalisation": {"mean": 0.5, "std": 0.25},
    "files": {"lm": None},
}


def _rois(symbols: str) -> np.ndarray:
    """One 96x96 frame per character; its pixel value encodes the symbol (blank: '_')."""
    idx = [0 if c == "_" else alphabet.SYMBOLS.index(c) for c in symbols]
    return np.stack([np.full((96, 96), 8 * i, np.uint8) for i in idx])


def _fake_encode(video: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B, 1, T, H, W) -> (B, T, C): each frame's pixel value picks its symbol."""
    pixel = np.rint((video[:, 0, :, 0, 0] * 0.25 + 0.5) * 255 / 8).astype(int)
    logp = np.full((*pixel.shape, alphabet.NUM_CLASSES), -20.0, np.float32)
    b, t = np.indices(pixel.shape)
    logp[b, t, pixel] = 0.0
    return logp


class Sender:
    def __init__(self, cid: int, log: list, gone: bool = False) -> None:
        self.cid, self.log, self.events, self.closed, self.gone = cid, log, [], 0, gone


class Harness:
    """The engine with a stand-in encoder whose cost (``ms_per_frame``) moves a fake clock."""

    def __init__(
        self, batch_mode: str = "exact", ms_per_frame: float = 0.0, words: int = 0, **limits
    ) -> None:
        """``words``: the encoder also puts out (flat) word log-probs over this many classes,
        like a model exported with its word head."""
        self.now = 0.0
        self.calls: list[tuple[int, ...]] = []  # clips' lengths per encoder call
        self.log: list[tuple[int, str]] = []  # (stream, what) in the order it was sent

        def run(video, lengths):
            self.calls.append(tuple(int(n) for n in lengths))
            self.now += ms_per_frame * int(lengths.sum()) / 1000
            if not words:
                return _fake_encode(video, lengths)
            flat = np.full((*video.shape[:1], video.shape[2], words), -np.log(words), np.float32)
            return _fake_encode(video, lengths), flat

        def send(sender: Sender, ev) -> None:
            if sender.gone:
                raise RuntimeError("Unable to send response: the client is gone")
            sender.events.append(ev)
            kind = "error" if ev.error else "final" if ev.final else "partial"
            self.log.append((sender.cid, kind))
            sender.closed += 1  # every response completes its request (flagged final)

        def close(sender: Sender) -> None:
            if sender.gone:
                raise RuntimeError("gone")
            sender.closed += 1

        self.changes: dict[str, int] = {}
        self.totals: dict[str, int] = {}

        def on_change(what: str, n: int) -> None:
            self.changes[what] = n
            self.totals[what] = self.totals.get(what, 0) + n

        self.engine = StreamEngine(
            META, ".", run, send, close, limits=StreamLimits(**limits), decoder="greedy",
            batch_mode=batch_mode, clock=lambda: self.now, on_change=on_change,
        )  # fmt: skip

    def req(self, cid, rois, start=False, end=False, gone=False, abort=False):
        s = Sender(cid, self.log, gone)
        return s, Request(s, cid, start=start, end=end, rois=rois, abort=abort)

    def batch(self, *reqs) -> list[Sender]:
        """One batch, as the sequence batcher hands it to the model."""
        self.engine.execute([r for _, r in reqs])
        return [s for s, _ in reqs]

    def request(self, cid, rois, start=False, end=False, gone=False, abort=False) -> Sender:
        return self.batch(self.req(cid, rois, start, end, gone, abort))[0]


def test_partials_arrive_while_frames_do_and_the_final_decodes_the_whole_stream():
    h = Harness(partial_every=8)
    text = "_bb_iin__ bbll_uue___ aatt__ ff___ tt_wwoo"  # 42 frames
    rois = _rois(text)
    senders = [h.request(7, rois[i : i + 8], start=i == 0, end=i + 8 >= len(rois))
               for i in range(0, len(rois), 8)]  # fmt: skip
    partials = [e for s in senders for e in s.events if not e.final and e.error is None]
    assert [p.frames for p in partials] == [8, 16, 24, 32, 40]
    assert partials[1].text == "bin blu"  # what the first 16 frames say
    final = senders[-1].events[-1]
    assert final.final and final.frames == 42 and final.text == "bin blue at f two"
    assert all(s.closed == 1 for s in senders)  # every request completed exactly once
    assert h.engine.active == 0 and h.changes["active"] == 0


def test_a_batch_of_streams_gets_finals_first_then_partials_and_every_request_completed():
    h = Harness(partial_every=8)
    h.batch(*(h.req(cid, _rois("a" * 8), start=True) for cid in (1, 2, 3)))
    assert h.calls == [(8,), (8,), (8,)]  # exact mode: one encoder call per clip, as offline
    h.log.clear()
    s1, s2, s3 = h.batch(h.req(1, _rois("b" * 8)), h.req(2, _rois("c" * 8), end=True),
                         h.req(3, _rois("d" * 8)))  # fmt: skip
    assert h.log == [(2, "final"), (1, "partial"), (3, "partial")]
    assert s2.events[-1].text == "ac" and s1.events[-1].text == "ab"
    assert (s1.closed, s2.closed, s3.closed) == (1, 1, 1)
    assert h.engine.active == 2


def test_a_padded_batch_runs_the_encoder_once_for_all_its_streams():
    h = Harness(batch_mode="padded", partial_every=8)
    first = h.batch(*(h.req(cid, _rois("a" * (8 + cid)), start=True) for cid in (1, 2, 3)))
    assert [sorted(c) for c in h.calls] == [[9, 10, 11]]  # one call, each clip its own length
    assert [s.events[-1].text for s in first] == ["a", "a", "a"]
    h.calls.clear()
    ends = h.batch(*(h.req(cid, _rois("_" + "xyz"[cid - 1] * 7), end=True) for cid in (1, 2, 3)))
    assert [sorted(c) for c in h.calls] == [[17, 18, 19]]
    assert [s.events[-1].text for s in ends] == ["ax", "ay", "az"]


@pytest.mark.parametrize("batch_mode", ["exact", "padded"])
def test_a_model_with_a_word_head_hands_each_stream_its_own_word_log_probs(batch_mode):
    """The final (and partial) decoders get the word head's output with the log-probs, cut
    to each stream's frames also when streams share a padded encoder call."""
    h = Harness(batch_mode=batch_mode, partial_every=0, words=52)
    seen = []
    h.engine.decode_final = lambda lp, w: seen.append((lp.shape, w.shape)) or "text"
    senders = h.batch(*(h.req(cid, _rois("a" * (8 + cid)), start=True, end=True)
                        for cid in (1, 2)))  # fmt: skip
    assert sorted(seen) == [((9, alphabet.NUM_CLASSES), (9, 52)),
                            ((10, alphabet.NUM_CLASSES), (10, 52))]  # fmt: skip
    assert [s.events[-1].text for s in senders] == ["text", "text"]


def test_a_stream_over_its_length_limit_is_ended_with_a_clear_error_and_freed():
    h = Harness(max_frames=20)
    h.request(1, _rois("a" * 16), start=True)
    s = h.request(1, _rois("b" * 8))
    err = s.events[-1].error
    assert err.code == "too_long" and "longer than 20 frames" in str(err) and s.closed == 1
    assert h.engine.active == 0
    later = h.request(1, _rois("c" * 8))  # the client goes on sending: told why, not crashed
    assert later.events[-1].error.code == "unknown_stream"
    assert "longer than 20 frames" in str(later.events[-1].error)


def test_requests_for_unknown_or_finished_streams_are_refused_with_the_reason():
    h = Harness()
    s = h.request(5, _rois("ab"))
    assert s.events[-1].error.code == "unknown_stream" and "send START" in str(s.events[-1].error)
    h.request(6, _rois("a" * 10), start=True, end=True)
    again = h.request(6, _rois("a"))
    assert "ended normally" in str(again.events[-1].error)


def test_bad_rois_are_refused_naming_the_expected_shape_and_the_stream_goes_on():
    h = Harness()
    h.request(3, _rois("a" * 8), start=True)
    for bad in (np.zeros((4, 90, 90), np.uint8), np.zeros((4, 96, 96), np.float32), None):
        s = h.request(3, bad)
        assert s.events[-1].error.code == "bad_input" and s.closed == 1
        if bad is not None:
            assert "uint8 [n, 96, 96]" in str(s.events[-1].error)
    unreadable = Sender(3, h.log)
    h.engine.execute([Request(unreadable, 0, error=StreamError("bad_input", "no START"))])
    assert unreadable.events[-1].error.code == "bad_input" and unreadable.closed == 1
    end = h.request(3, _rois("b" * 8), end=True)
    assert end.events[-1].final and end.events[-1].frames == 16


def test_a_full_server_refuses_new_streams_and_keeps_serving_the_open_ones():
    h = Harness(max_streams=2)
    h.request(1, _rois("a" * 8), start=True)
    h.request(2, _rois("a" * 8), start=True)
    refused = h.request(3, _rois("a" * 8), start=True)
    assert refused.events[-1].error.code == "busy"
    assert h.request(1, _rois("b" * 8), end=True).events[-1].text == "ab"
    assert h.request(3, _rois("a" * 8), start=True).closed == 1  # room again


def test_idle_and_never_ending_streams_expire_and_free_their_state():
    h = Harness(idle_timeout_s=5, max_duration_s=30, max_frames=10_000, partial_every=0)
    h.request(1, _rois("a" * 8), start=True)  # goes silent
    h.request(2, _rois("a" * 8), start=True)  # never ends
    for t in range(1, 40):
        h.now = float(t)
        h.request(2, _rois("a"))
        h.engine.expire()
        if t == 6:
            assert 1 not in h.engine.streams and 2 in h.engine.streams
    assert h.engine.active == 0 and h.totals["expired"] == 2
    late = h.request(2, _rois("a"))
    assert "open for more than 30 s" in str(late.events[-1].error)


def test_a_client_that_goes_away_frees_its_stream_and_no_other():
    h = Harness(partial_every=8)
    h.request(1, _rois("a" * 8), start=True)
    h.request(2, _rois("a" * 4), start=True)
    h.request(1, _rois("b" * 8), gone=True)  # its partial cannot be delivered
    assert 1 not in h.engine.streams and h.changes.get("disconnected") == 1
    assert h.request(2, _rois("b" * 8), end=True).events[-1].text == "ab"


def test_abort_frees_the_stream_at_once_and_too_short_streams_are_refused_like_offline():
    h = Harness()
    h.request(1, _rois("a" * 8), start=True)
    s = h.request(1, np.zeros((0, 96, 96), np.uint8), end=True, abort=True)
    assert s.closed == 1 and not s.events and h.engine.active == 0
    short = h.request(2, _rois("abc"), start=True, end=True)
    assert short.events[-1].error.code == "too_short"
    assert "need at least 8" in str(short.events[-1].error)


def test_partials_over_the_batch_budget_are_skipped_longest_waiting_first():
    h = Harness(ms_per_frame=5.0, partial_every=8, partial_budget_ms=150, shed_busy=0)
    h.batch(h.req(1, _rois("a" * 8), start=True), h.req(2, _rois("b" * 4), start=True),
            h.req(3, _rois("c" * 4), start=True))  # fmt: skip
    h.now += 10  # an idle while later
    h.log.clear()
    # frames since the last partial: 1: 8, 2: 12, 3: 36. Stream 3 goes first and its
    # 36-frame partial (180 ms of encoder) spends the budget: the others are skipped, but
    # their requests are completed
    senders = h.batch(h.req(1, _rois("a" * 8)), h.req(2, _rois("b" * 8)), h.req(3, _rois("c" * 32)))
    assert h.log == [(3, "partial")]
    assert all(s.closed == 1 for s in senders) and h.totals["partials_shed"] == 2
    h.now += 10
    h.log.clear()
    again = h.batch(h.req(1, _rois("a" * 8)), h.req(2, _rois("b" * 8)))
    assert h.log == [(2, "partial"), (1, "partial")]  # 100 ms for stream 2, then room for 1
    assert [s.events[-1].text for s in again] == ["a", "b"]


def test_a_saturated_instance_skips_partials_but_never_finals():
    h = Harness(ms_per_frame=20.0, partial_every=8, partial_budget_ms=0, shed_busy=0.8)
    h.request(1, _rois("a" * 8), start=True)  # 160 ms of work: not saturated
    s = h.request(2, _rois("b" * 40), start=True)  # 800 ms: now busy 96% of the last second
    assert len(s.events) == 1
    busy = h.request(1, _rois("c" * 8))
    assert busy.closed == 1 and not busy.events and h.totals["partials_shed"] == 1
    final = h.request(2, _rois("d" * 8), end=True)
    assert final.events[-1].final and final.events[-1].text == "bd"
    h.now += 2.0  # idle again: partials resume
    assert h.request(1, _rois("e" * 8)).events[-1].text == "ace"


def test_stream_errors_carry_a_stable_code_in_their_message():
    assert str(StreamError("busy", "full")) == "[busy] full"


def test_normalise_matches_the_offline_transcriber_arithmetic():
    rois = np.random.default_rng(0).integers(0, 256, (5, 96, 96), dtype=np.uint8)
    x = rois[:, 4:92, 4:92].astype(np.float32) / 255.0
    assert np.array_equal(normalise(rois, 88, 0.4, 0.2)[0, 0], (x - 0.4) / 0.2)


def test_limits_travel_through_model_config_parameters():
    lim = StreamLimits(max_frames=100, idle_timeout_s=2.5)
    assert StreamLimits.from_params(lim.as_params()) == lim
    with pytest.raises(ValueError, match="must not be negative"):
        StreamLimits(max_streams=-1)


# -- batching ---------------------------------------------------------------------------------


def test_a_padded_batch_gives_each_clip_what_it_gets_alone(tiny_package):
    from mouthmap.runtime.runner import OnnxRunner
    from mouthmap.serving.batching import run_batch

    runner = OnnxRunner(tiny_package / "model.onnx", threads=1)
    rng = np.random.default_rng(1)
    videos = [rng.standard_normal((1, 1, t, 88, 88)).astype(np.float32) for t in (20, 75, 41)]
    lengths = [np.array([v.shape[2]], np.int64) for v in videos]
    padded = run_batch(runner.run, videos, lengths, "padded")
    exact = run_batch(runner.run, videos, lengths)
    for v, n, out, same in zip(videos, lengths, padded, exact, strict=True):
        alone = runner.run(v, n)
        assert out.shape == alone.shape
        assert np.abs(out - alone).max() < 1e-4  # rounding only
        assert np.array_equal(same, alone)  # bit for bit: transcripts as offline


# -- the generated repository ----------------------------------------------------------------


def test_the_repository_has_a_batched_encoder_and_a_decoupled_sequence_model(
    tiny_package, tmp_path
):
    from mouthmap.serving.repository import RepoOptions, build_repo, read_manifest

    repo = build_repo(tiny_package, tmp_path / "repo")
    enc = (repo / "mouthmap_encoder" / "config.pbtxt").read_text()
    assert 'backend: "python"' in enc and "dynamic_batching" in enc and "max_batch_size: 16" in enc
    assert (repo / "mouthmap_encoder" / "1" / "model.onnx").read_bytes() == (
        tiny_package / "model.onnx"
    ).read_bytes()
    stream = (repo / "mouthmap_stream" / "config.pbtxt").read_text()
    assert "decoupled: true" in stream and "CONTROL_SEQUENCE_START" in stream
    assert "max_sequence_idle_microseconds: 10000000" in stream
    assert (repo / "mouthmap_stream" / "1" / "package" / "lm" / "lm.arpa").is_file()
    manifest = read_manifest(repo)
    assert manifest["prepare"] == {"localiser": "mediapipe", "size": 96, "scale": 1.8,
                                   "smooth_frames": 7}  # fmt: skip
    assert manifest["lineage"]["training_run_id"]

    one = build_repo(tiny_package, tmp_path / "b1", RepoOptions(dynamic_batching=False))
    assert "dynamic_batching {" not in (one / "mouthmap_encoder" / "config.pbtxt").read_text()


def test_the_cluster_option_uses_tritons_onnx_runtime_backend(tiny_package, tmp_path):
    from mouthmap.serving.repository import RepoOptions, build_repo

    opts = RepoOptions(encoder_backend="onnxruntime", device="gpu")
    repo = build_repo(tiny_package, tmp_path / "repo", opts)
    enc = (repo / "mouthmap_encoder" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in enc and "KIND_GPU" in enc
    assert "reshape: { shape: [ ] }" in enc  # lengths is (B,) in the ONNX model
    assert not (repo / "mouthmap_encoder" / "1" / "model.py").exists()
    with pytest.raises(ValueError, match="needs --encoder-backend onnxruntime"):
        RepoOptions(device="gpu")


def test_build_repo_cli_writes_the_repository_and_refuses_a_non_package(tiny_package, tmp_path):
    from typer.testing import CliRunner

    from mouthmap.cli import app

    run = CliRunner().invoke
    res = run(app, ["serve", "build-repo", str(tiny_package), str(tmp_path / "r"),
                    "--no-dynamic-batching"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "batching off" in res.output
    manifest = json.loads((tmp_path / "r" / "mouthmap-repo.json").read_text())
    assert manifest["options"]["dynamic_batching"] is False
    res = run(app, ["serve", "build-repo", str(tmp_path), str(tmp_path / "x")])
    assert res.exit_code == 2 and "not a MouthMap model package" in res.output


# -- the proxy's frame checks ------------------------------------------------------------------


def test_browser_frames_are_decoded_or_refused_with_what_is_wrong():
    import cv2

    from mouthmap.serving.proxy import ClientError, decode_frame

    rgb = media.probe_and_decode_video(clip("bbaf2n")).frames[10]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out = decode_frame(jpeg.tobytes(), "jpeg", 360, 288)
    assert out.shape == (288, 360, 3) and np.abs(out.astype(int) - rgb).mean() < 3
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    assert np.array_equal(decode_frame(rgba.tobytes(), "rgba", 360, 288), rgb)
    with pytest.raises(ClientError, match="not a JPEG image"):
        decode_frame(b"\x00garbage" * 100, "jpeg", 360, 288)
    with pytest.raises(ClientError, match="a 360x288 image; the stream was started as 320x240"):
        decode_frame(jpeg.tobytes(), "jpeg", 320, 240)
    with pytest.raises(ClientError, match="a 320x240 rgb frame has 230400"):
        decode_frame(b"\x01" * 1000, "rgb", 320, 240)


def test_a_jpeg_declaring_a_huge_image_is_refused_before_it_is_decoded(monkeypatch):
    """689 bytes declaring 8000x8000 pixels: the proxy read the header only, so four such
    clients can no longer push it from 0.4 to 2 GB (issue 42)."""
    import cv2

    from mouthmap.serving import proxy

    rgb = media.probe_and_decode_video(clip("bbaf2n")).frames[10]
    jpeg = bytearray(cv2.imencode(".jpg", cv2.resize(rgb, (16, 16)))[1].tobytes())
    assert proxy.jpeg_size(bytes(jpeg)) == (16, 16)
    sof = next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] == 0xC0)
    jpeg[sof + 5 : sof + 9] = (8000).to_bytes(2, "big") * 2  # height, width
    decoded = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: decoded.append(1))
    with pytest.raises(proxy.ClientError, match="a 8000x8000 image; the stream was started"):
        proxy.decode_frame(bytes(jpeg), "jpeg", 360, 288)
    assert decoded == []  # refused on the header alone
    assert proxy.jpeg_size(b"\xff\xd8\xff\xda\x00\x02") is None  # image data before any header


def test_the_camera_source_reads_rgb_frames_through_opencv():
    from mouthmap.serving.frames import camera_frames, paced, video_frames

    fps, frames = camera_frames(str(clip("bbaf2n")))  # OpenCV opens a file like a device
    got = list(frames)
    assert fps == 25.0 and len(got) == 75 and got[0].shape == (288, 360, 3)
    _, pyav = video_frames(clip("bbaf2n"))
    first = next(pyav)
    assert np.abs(got[0].astype(int) - first).mean() < 4  # RGB order, like the file decoder
    t0 = time.monotonic()
    assert len(list(paced(iter(got[:6]), 50.0))) == 6 and time.monotonic() - t0 >= 0.09
    from mouthmap.data.media import MediaError

    with pytest.raises(MediaError, match="cannot open camera 7"):
        camera_frames(7)
