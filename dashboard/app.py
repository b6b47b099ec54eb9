"""MouthMap dashboard (Streamlit). Start it with `mouthmap dashboard`.

The pages only lay out what `mouthmap.dashboard` and `mouthmap.explain` compute.
"""

import streamlit as st

st.set_page_config(page_title="MouthMap", page_icon=":material/record_voice_over:", layout="wide")

pages = [
    st.Page("views/read.py", title="Read lips", icon=":material/record_voice_over:", default=True),
    st.Page("views/registry.py", title="Registry", icon=":material/sell:", url_path="registry"),
    st.Page(
        "views/benchmarks.py", title="Benchmarks", icon=":material/speed:", url_path="benchmarks"
    ),
    st.Page("views/drift.py", title="Drift", icon=":material/monitoring:", url_path="drift"),
]
st.navigation(pages).run()
