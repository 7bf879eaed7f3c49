"""GDA Explorer: the home page (built-in data and demo model, and a first attribution).

UI only: every number comes from gda_core, every chart from gda_core.viz.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from gda_core.data import BUILTIN_DATASETS, load_builtin
from gda_core.engine import AttributionRequest, default_cache_dir, run_attribution, top_groups
from gda_core.errors import GDAError
from gda_core.grouping import GROUPINGS
from gda_core.methods import METHODS
from gda_core.models import accuracy, demo_model
from gda_core.viz import SIGN_NOTE, class_count_figure, group_scores_figure, image_grid_figure

st.set_page_config(page_title="GDA Explorer", layout="wide")


@st.cache_resource(show_spinner="Loading the data set...")
def cached_split(name: str):
    return load_builtin(name)


@st.cache_resource(show_spinner="Training the demo model (first use only, then cached)...")
def cached_model(name: str, arch: str):
    return demo_model(arch, cached_split(name).train, default_cache_dir())


@st.cache_data(show_spinner=False, max_entries=32)
def cached_attribution(request_json: dict):
    return run_attribution(AttributionRequest(**request_json))


st.title("GDA Explorer")
st.caption("Which parts of the training data shaped this model's predictions? "
           "Group attribution scores K groups of training points instead of every point.")

left, right = st.columns(2)
data_name = left.selectbox("Data set", list(BUILTIN_DATASETS), key="data")
split = cached_split(data_name)
architectures = ["mlp", "logreg"] + (["cnn"] if split.train.image_shape else [])
arch = right.selectbox("Model", architectures, key="model")
model = cached_model(data_name, arch)

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

st.header("Attribute")
st.info(SIGN_NOTE)
with st.form("attribution"):
    a, b, c, d = st.columns(4)
    method = a.selectbox("Method", list(METHODS), index=list(METHODS).index("grad-dot"))
    grouping = b.selectbox("Grouping", list(GROUPINGS), index=list(GROUPINGS).index("grad-kmeans"))
    n_groups = c.slider("Groups (K)", min_value=2, max_value=min(500, len(split.train)), value=min(50, len(split.train)))
    test_index = d.number_input("Test point", min_value=0, max_value=len(split.test) - 1, value=0, step=1)
    submitted = st.form_submit_button("Compute")

if submitted:
    fixed = GROUPINGS[grouping].fixed_group_count
    try:
        request = AttributionRequest(data=data_name, model=arch, method=method, grouping=grouping,
                                     n_groups=None if fixed else int(n_groups), test_size=None)
        with st.spinner(f"Computing {method} on {grouping} groups..."):
            st.session_state["result"] = cached_attribution(request.to_json())
        st.session_state["test_index"] = int(test_index)
    except GDAError as error:
        st.error(str(error))

result = st.session_state.get("result")
if result is not None and result.request.data == data_name and result.request.model == arch:
    index = st.session_state.get("test_index", 0)
    label = split.test.class_names[int(split.test.labels[index])]
    st.write(f"**{result.request.method}** on **{result.request.grouping}** (K = {result.groups.n_groups}): "
             f"{result.summary()['seconds']:.2f} s. Test point {index}, label '{label}'.")
    ranking = top_groups(result, split.train.labels.numpy(), split.train.class_names, index)
    helpful, harmful = st.columns(2)
    helpful.plotly_chart(group_scores_figure(ranking["helpful"], "Most helpful groups"), key="helpful")
    harmful.plotly_chart(group_scores_figure(ranking["harmful"], "Most harmful groups"), key="harmful")
    if split.train.images is not None:
        best = ranking["helpful"][0]
        st.plotly_chart(image_grid_figure(split.train.images[np.array(best["members"])],
                                          [f"#{m}" for m in best["members"]]), key="members")
        st.caption(f"Members of group {best['group']}, the most helpful group (first 16).")
elif result is None:
    st.write("Nothing computed yet: choose a method and press **Compute**.")
