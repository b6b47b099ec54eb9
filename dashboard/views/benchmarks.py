"""Benchmarks: the latest `mouthmap bench` report (every way of running the student)."""

import time

import pandas as pd
import streamlit as st
from views._common import settings

from mouthmap.dashboard.reports import bench_rows, load_bench

S = settings()
st.title("Benchmarks")

try:
    b = load_bench(S.reports)
except ValueError as e:
    st.error(str(e))
    st.stop()
if b is None:
    with st.container(key="bench-empty"):
        st.info(
            f"No benchmark report yet ({S.reports / 'bench' / 'bench.json'}): run "
            "`mouthmap bench` (or `mouthmap bench --quick` for a smoke run)."
        )
    st.stop()

r = b.report
m = r.get("machine", {})
st.caption(
    f"{b.json_path} · {time.strftime('%Y-%m-%d %H:%M', time.localtime(b.modified))} · "
    f"{m.get('cpu', '?')} ({m.get('cores', '?')} cores) · ONNX Runtime {m.get('onnxruntime', '?')}"
    f" · load average at start {', '.join(f'{x:.1f}' for x in m.get('load_average') or [])}"
)
with st.container(key="bench-table"):
    st.dataframe(pd.DataFrame(bench_rows(r)), hide_index=True, width="stretch")
if r.get("targets"):
    st.subheader("Targets")
    t = pd.DataFrame(r["targets"])
    t["met"] = t["met"].map({True: "yes", False: "NO", None: "n/a"})
    st.dataframe(t[["target", "detail", "met"]], hide_index=True, width="stretch")
if b.plot is not None:
    st.subheader("Size, latency and accuracy")
    with st.container(key="bench-plot"):
        st.image(str(b.plot))
for note in r.get("notes", []):
    st.caption(f"• {note}")
if b.markdown:
    with st.expander("bench.md"):
        st.markdown(b.markdown)
