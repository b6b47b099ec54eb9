"""Drift: the latest `mouthmap drift check` report (Evidently HTML)."""

import time

import streamlit as st
from views._common import settings

from mouthmap.dashboard.reports import load_drift

S = settings()
st.title("Drift")

d = load_drift(S.reports)
if d is None:
    with st.container(key="drift-empty"):
        st.info(
            f"No drift report yet under {S.reports / 'drift'}: `mouthmap drift check "
            "WINDOW --reference reports/drift/reference.csv` writes "
            "reports/drift/report.html."
        )
    st.stop()

age = d.age_s
when = f"{age / 60:.0f} min ago" if age < 7200 else f"{age / 3600:.0f} h ago"
stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(d.latest.stat().st_mtime))
st.caption(f"latest report: {d.latest} ({stamp}, {when})")
if d.evaluation:
    with st.expander("Monitor evaluation (`mouthmap drift evaluate`)"):
        st.json(d.evaluation, expanded=False)
with st.container(key="drift-report"):
    st.iframe(d.html, height=900)  # Evidently's report runs its own scripts: an iframe
if d.others:
    st.caption("older reports: " + ", ".join(str(p) for p in d.others[:10]))
st.caption("What to do when it drifts: docs/runbook.md#drift-response")
