"""GDA Explorer: the home page. Pick a data set and a model; see what they are.

UI only: every number comes from gda_core, every chart from gda_core.viz.
Run with `make app` (or `streamlit run app.py`).
"""

from __future__ import annotations

import streamlit as st

from gda_app import state
from gda_core.data import BUILTIN_DATASETS
from gda_core.models import accuracy
from gda_core.viz import class_count_figure, image_grid_figure

state.page_setup("Home")

st.title("GDA Explorer")
st.caption("Which parts of the training data shaped this model's predictions? Group attribution "
           "scores K groups of training points at once instead of every point, at a fraction of the cost.")

left, right = st.columns(2)
left.selectbox("Data set", list(BUILTIN_DATASETS), key="data",
               help="Built-in data sets ship with scikit-learn; digits are 8x8 images.")
split = state.data_split()
architectures = ["mlp", "logreg"] + (["cnn"] if split.train.image_shape else [])
if st.session_state["model"] not in architectures:  # e.g. a CNN chosen for images, then tabular data
    st.session_state["model"] = "mlp"
right.selectbox("Model", architectures, key="model",
                help="A demo model of this architecture is trained on the data on first use and cached.")
split, model = state.inputs()

columns = st.columns(5)
columns[0].metric("Training points", len(split.train))
columns[1].metric("Test points", len(split.test))
columns[2].metric("Classes", split.train.n_classes)
columns[3].metric("Features", split.train.n_features)
columns[4].metric("Test accuracy", f"{accuracy(model.module, split.test):.1%}")

if split.train.images is not None:
    st.plotly_chart(image_grid_figure(split.train.images[:16],
                                      [f"label {split.train.class_names[int(y)]}" for y in split.train.labels[:16]]),
                    key="examples")
st.plotly_chart(class_count_figure(split.train), key="class_counts")

st.subheader("Next")
st.page_link("pages/1_Compute.py", label="Compute group scores for this model", icon=":material/calculate:")
st.page_link("pages/2_Explore.py", label="Explore the groups on a map", icon=":material/scatter_plot:")
st.page_link("pages/3_Fidelity.py", label="Fidelity against speed", icon=":material/monitoring:")
st.page_link("pages/4_Noisy_labels.py", label="Find and review noisy labels", icon=":material/rule:")
