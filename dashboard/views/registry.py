"""Registry: the champion and challenger of the MLflow registry, every version's gate
figures and lineage."""

import pandas as pd
import streamlit as st
from views._common import settings

from mouthmap.dashboard.reports import load_registry

S = settings()
st.title("Model registry")


@st.cache_data(ttl=10, show_spinner="Asking the MLflow registry…")
def view(uri):
    return load_registry(uri)


v = view(S.mlflow)
if v.unavailable:
    with st.container(key="registry-empty"):
        st.info(v.unavailable)
    st.markdown(
        "Start the local registry with `mouthmap stack up` (MLflow on 127.0.0.1:5000), or "
        "start the dashboard with `mouthmap dashboard --mlflow-uri URL`. Versions are added by "
        "`mouthmap registry register PACKAGE` or the training pipeline."
    )
    st.stop()

st.caption(f"registered model `{v.model}` at {v.uri}")
if not v.rows:
    with st.container(key="registry-empty"):
        st.info("The registry has no versions yet: `mouthmap registry register PACKAGE`.")
    st.stop()

by_version = {r["version"]: r for r in v.rows}
cols = st.columns(2)
for col, (label, ver) in zip(
    cols, (("Champion", v.champion), ("Challenger", v.challenger)), strict=True
):
    with col, st.container(border=True, key=f"registry-{label.lower()}"):
        st.subheader(f"{label}: v{ver}" if ver else f"{label}: none")
        row = by_version.get(int(ver)) if ver else None
        if row:
            a, b = st.columns(2)
            a.metric(
                "gate WER", f"{row['WER %']}%" if row["WER %"] is not None else "not gated",
                help="measured by the gate (mlops/gate.yaml) on its own set of clips",
            )  # fmt: skip
            b.metric(
                "model card WER",
                f"{row['card WER %']}%" if row["card WER %"] is not None else "–",
                help="the package's own evaluation (its README / model card)",
            )
            c, d = st.columns(2)
            c.metric("latency / clip", f"{row['latency ms']} ms" if row["latency ms"] else "–")
            d.metric("model.onnx", f"{row['size MB']} MB" if row["size MB"] else "–")
            gate_on = f"gate WER on {row['gate set']}" if row["gate set"] else "not gated yet"
            card_on = (f"model card WER on {row['card set']}" if row["card set"]
                       else "no model card figure (the package holds no evaluation)")  # fmt: skip
            st.caption(f"{gate_on} · {card_on}")
            st.caption(
                f"commit {row['git commit'] or '–'} · pipeline run "
                f"{row['pipeline run'] or '–'} · registered {row['registered']}"
            )

st.subheader("All versions")
df = pd.DataFrame(v.rows)
with st.container(key="registry-table"):
    st.dataframe(df, hide_index=True, width="stretch")
st.caption(
    "WER % and CER % are the gate's (on the clips in 'gate set'); card WER % is the package's "
    "own evaluation (on the clips in 'card set'). The two sets differ, so do the figures."
)
gated = df.dropna(subset=["WER %"])
if len(gated):
    st.subheader("Gate figures per version")
    st.bar_chart(gated.set_index("version")[["WER %", "CER %"]], stack=False)
st.caption(
    "Promote with `mouthmap registry promote --version N` (runs the gate); undo with "
    "`mouthmap registry rollback`. See docs/runbook.md."
)
