"""Read lips: a sample clip, an upload or the webcam -> the video with the mouth ROI, the
live transcript, the per-frame character probabilities and Grad-CAM of a chosen word."""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st
from views._common import analysis, explainer, roi_video, settings, transcriber

from mouthmap.dashboard import inputs, live
from mouthmap.runtime.transcriber import TranscribeError

S = settings()
st.title("MouthMap: read lips from silent video")

# --- the model ---------------------------------------------------------------------------
with st.sidebar:
    st.subheader("Model")
    st.caption(f"package `{S.model}` · decoder `{S.decoder}`")
try:
    tr = transcriber(str(S.model), S.decoder, S.threads)
except Exception as e:  # no package: nothing else on this page can work
    st.error(f"Cannot load the model package {S.model}: {e}")
    st.info("Start the dashboard with `mouthmap dashboard --model PACKAGE_DIR`.")
    st.stop()

ex = explainer(str(S.model), str(S.checkpoint) if S.checkpoint else None)
with st.sidebar:
    if isinstance(ex, str):
        st.caption(f"Grad-CAM: off ({ex})")
    else:
        st.caption(f"Grad-CAM checkpoint `{ex.checkpoint}`")


@st.cache_data(ttl=15, show_spinner=False)
def triton_status(url: str | None) -> tuple[str | None, str]:
    return live.find_triton(url)


triton_url, triton_note = triton_status(S.triton)
with st.sidebar:
    st.subheader("Live transcript")
    if triton_url:
        st.success(f"streaming through {triton_note}")
    else:
        st.info(f"local ONNX Runtime: {triton_note}")

# --- the clip ------------------------------------------------------------------------------
source = st.radio(
    "Clip", ["Sample clip", "Upload a video", "Webcam"], horizontal=True, key="source"
)
path: Path | None = None
truth: str | None = None
name = ""
if source == "Sample clip":
    samples = inputs.list_samples(S.samples)
    if not samples:
        st.warning(f"No sample clips under {S.samples}/video.")
    else:
        labels = {f"{s.code} — {s.truth or '?'}": s for s in samples}
        chosen = labels[st.selectbox("GRID sample clip (speaker s1)", list(labels), key="sample")]
        path, truth, name = chosen.video, chosen.truth, chosen.code
        st.caption("GRID corpus, CC BY 4.0: Cooke, Barker, Cunningham, Shao (2006).")
elif source == "Upload a video":
    up = st.file_uploader(
        "A video of one speaker's face (mp4, avi, mov, webm, mkv; "
        f"up to {inputs.MAX_UPLOAD_MB} MB)",
        key="upload",
    )
    if up is not None:
        try:
            path, name = inputs.save_upload(up.name, up.getvalue()), up.name
        except ValueError as e:
            st.error(str(e))
else:
    import os

    from mouthmap.dashboard.webcam import webcam_recorder

    auto = os.environ.get("MOUTHMAP_DASHBOARD_WEBCAM_AUTO") == "1"  # tests: fake camera
    clip = webcam_recorder(key="webcam", autostart=auto, autorecord=auto)
    if clip is not None:
        path, name = clip, "webcam clip"

if path is None:
    st.stop()

data = path.read_bytes()
digest = hashlib.sha256(data).hexdigest()
args = (str(path), digest, str(S.model), S.decoder, S.threads, name)
try:
    with st.spinner("Finding the mouth in every frame and reading the lips…"):
        a = analysis(*args)
except TranscribeError as e:
    with st.container(key="clip-error"):
        st.error(str(e))
    st.stop()

left, right = st.columns([3, 2])
with left:
    st.subheader("Video, mouth ROI marked")
    st.video(roi_video(*args), loop=True, autoplay=True, muted=True)
    st.caption(
        f"{len(a.frames)} frames, {a.seconds:.2f} s at {a.fps:g} fps · mouth found in "
        f"{100 * a.mouth_found:.0f}% of frames (green: found, orange: filled in) · "
        f"read in {a.elapsed_ms:.0f} ms"
    )
    for note in a.notes:
        st.warning(note)

with right:
    st.subheader("Transcript")
    live_box = st.empty()
    done = st.session_state.setdefault("live_done", {})
    key = (digest, str(S.model), S.decoder)
    replay = st.button("Replay live", key="replay")
    if key not in done or replay:
        used = "local ONNX Runtime"
        events = None
        if triton_url:
            events, used = live.triton_events(a.rois, triton_url, fps=S.live_fps), triton_note
        final = None
        try:
            for ev in (
                events if events is not None else live.local_events(tr, a.rois, fps=S.live_fps)
            ):
                if ev.kind == "error":
                    raise RuntimeError(f"{ev.code}: {ev.text}")
                live_box.markdown(
                    f"### {'' if ev.kind == 'final' else '… '}{ev.text or '∅'}\n"
                    f"<small>{ev.kind} after {ev.frames} frames</small>",
                    unsafe_allow_html=True,
                )
                if ev.kind == "final":
                    final = ev.text
        except Exception as e:  # the server went away mid-stream: read locally instead
            if events is None:
                raise
            st.warning(f"Triton stream failed ({e}); read locally instead.")
            used, final = "local ONNX Runtime", a.text
        done[key] = (final if final is not None else a.text, used)
    final, used = done[key]
    with live_box.container(key="final-transcript"):
        st.markdown(f"### {final or '∅ (nothing read)'}")
    st.caption(f"final transcript via {used}; decoder {a.decoder}")
    if final != a.text:
        st.caption(f"local model read: “{a.text}” (the timeline and saliency explain this one)")
    if truth:
        from mouthmap.evaluation.metrics import cer, wer

        st.markdown(f"**Truth:** {truth}")
        st.metric(
            "WER",
            f"{100 * wer([truth], [a.text]):.1f}%",
            help=f"CER {100 * cer([truth], [a.text]):.1f}%",
        )

# --- probability timeline and saliency -----------------------------------------------------
from mouthmap.explain.timeline import timeline_figure  # noqa: E402

st.subheader("Per-frame character probabilities")
sal = None
word = None
if a.spans:
    words = [f"{s.index + 1}. {s.word}" for s in a.spans]
    word = st.selectbox(
        "Word to explain (Grad-CAM)", range(len(words)), format_func=lambda i: words[i], key="word"
    )
if word is not None and not isinstance(ex, str):
    from mouthmap.explain.gradcam import explain_word, spatial_layers

    @st.cache_resource(show_spinner=False)
    def layers(checkpoint: str):
        return spatial_layers(ex.model)

    choices = layers(str(ex.checkpoint))
    names = [f"{n} ({h}×{w})" for n, h, w in choices]
    layer_i = st.selectbox(
        "Feature layer",
        range(len(choices)),
        index=len(choices) - 1,
        format_func=lambda i: names[i],
        key="layer",
        help="the last one is the front end's last convolutional "
        "features (Grad-CAM's usual choice); earlier ones are finer",
    )

    @st.cache_resource(max_entries=16, show_spinner="Checking the checkpoint against the ONNX…")
    def parity_of(digest: str, model: str, checkpoint: str) -> float:
        return ex.check_parity(tr.package, a.rois)  # raises when they are different models

    @st.cache_resource(max_entries=32, show_spinner="Computing Grad-CAM…")
    def saliency(digest: str, model: str, text: str, word: int, layer: str):
        return explain_word(
            ex.model,
            a.rois,
            tr.package.mean,
            tr.package.std,
            text,
            word,
            crop=tr.crop,
            layer=layer,
            log_probs=a.log_probs,
        )

    try:
        parity = parity_of(digest, str(S.model), str(ex.checkpoint))
        sal = saliency(digest, str(S.model), a.text, word, choices[layer_i][0])
    except Exception as e:
        st.error(f"Grad-CAM failed: {e}")
fig = timeline_figure(
    a.log_probs,
    a.spans,
    a.fps,
    highlight=word,
    frame_weight=sal.frame_weight if sal is not None else None,
)
st.pyplot(fig, clear_figure=True)

st.subheader("Grad-CAM saliency over the mouth ROI")
if isinstance(ex, str):
    st.info(f"Saliency needs the PyTorch checkpoint behind the package: {ex}")
elif not a.spans:
    st.info("Nothing was read, so there is no word to explain.")
elif sal is not None:
    from mouthmap.explain.overlay import encode_gif, heat_overlay

    over = heat_overlay(a.rois, sal.cam)
    c1, c2 = st.columns(2)
    with c1, st.container(key="saliency"):
        st.image(encode_gif(over, a.fps), caption="whole clip, looping", width=288)
    with c2:
        t = st.slider("Frame", 0, len(over) - 1, sal.peak_frame, key="frame")
        st.image(
            over[t],
            width=288,
            caption=f"frame {t} ({t / a.fps:.2f} s)"
            + (" · inside the word" if sal.span.start <= t < sal.span.end else ""),
        )
    st.caption(
        f"“{sal.span.word}”: frames {sal.span.start}–{sal.span.end - 1}, "
        f"log P(word | its frames) = {sal.score:.2f}; gradient at `{sal.layer}` "
        f"({sal.map_size[0]}×{sal.map_size[1]} maps), one weight per channel and frame, all "
        f"frames on one scale. Checkpoint ↔ ONNX max |Δ log-prob| {parity:.1e}."
    )
