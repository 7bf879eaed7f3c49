"""GDA Explorer's Streamlit entry (`make app`, or `streamlit run app.py`): the pages, in order,
with the names the sidebar shows. The Home page is pages/0_Home.py; every page is UI only."""

from __future__ import annotations

import pandas  # noqa: F401  # imported once here: two page runs importing it at once saw it half-initialised
import streamlit as st

st.navigation([
    st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/1_Compute.py", title="Compute", icon=":material/calculate:"),
    st.Page("pages/2_Explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page("pages/3_Fidelity.py", title="Fidelity", icon=":material/monitoring:"),
    st.Page("pages/4_Noisy_labels.py", title="Noisy labels", icon=":material/rule:"),
]).run()
