"""Cached heavy objects shared by the pages (one per Streamlit server process)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from mouthmap.dashboard.settings import Settings


@st.cache_resource
def settings() -> Settings:
    s = Settings.from_env()
    import torch

    torch.set_num_threads(max(1, s.threads))  # a shared 2-core machine: avoid OMP contention
    return s


@st.cache_resource(show_spinner="Loading the model package…")
def transcriber(model: str, decoder: str, threads: int):
    from mouthmap.runtime.transcriber import Transcriber

    return Transcriber(model, decoder=decoder, threads=threads)


@st.cache_resource(show_spinner="Loading the PyTorch checkpoint for Grad-CAM…")
def explainer(model: str, checkpoint: str | None):
    """The checkpoint behind the package, or the reason there is none (a string)."""
    from mouthmap.explain.checkpoints import CheckpointMismatch, load_explainer
    from mouthmap.package import ModelPackage

    try:
        return load_explainer(ModelPackage.load(model), checkpoint)
    except CheckpointMismatch as e:
        return str(e)


@st.cache_resource(max_entries=8, show_spinner=False)
def analysis(path: str, digest: str, model: str, decoder: str, threads: int, name: str):
    """Analysis of one clip (``digest``: its content hash, so an edited file is re-read)."""
    from mouthmap.dashboard.analysis import analyse_clip

    return analyse_clip(Path(path), transcriber(model, decoder, threads), name=name)


@st.cache_resource(max_entries=16, show_spinner=False)
def roi_video(path: str, digest: str, model: str, decoder: str, threads: int, name: str):
    from mouthmap.explain.overlay import draw_rois, encode_mp4

    a = analysis(path, digest, model, decoder, threads, name)
    return encode_mp4(draw_rois(a.frames, a.boxes, a.found), a.fps)
