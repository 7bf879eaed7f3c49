"""Explore: the training points on a 2-D map coloured by group; the most helpful and most
harmful groups of a chosen test point, highlighted and listed with their members."""

from __future__ import annotations

import os

import numpy as np
import streamlit as st

from gda_app import state
from gda_app.examples_view import show_points, show_sentence
from gda_app.markup import escape
from gda_core.attribution.pipeline import top_groups
from gda_core.requests import AttributionRequest, EmbeddingRequest
from gda_core.viz.figures import MAP_COLOURS, SIGN_NOTE, embedding_map_figure, group_scores_figure, image_grid_figure

MAP_KEY = "map"

state.page_setup("Explore")
st.title("Explore")
split, model = state.inputs()
data, arch = st.session_state["data"], st.session_state["model"]

# ---- the attribution run shown: the one chosen on the Compute page, else the newest
runs = {run.key: run for run in state.finished_runs("attribute")}
if st.session_state.get("result_key") not in runs and runs:
    st.session_state["result_key"] = next(iter(runs))
run = runs.get(st.session_state.get("result_key"))
if run is None:
    st.info(f"No group scores computed yet for {escape(state.describe(data))} / {escape(state.describe(arch))}. Compute them "
            "here with Grad-Dot on gradient K-means groups (K = 50), or choose another method on the Compute page.")
    if st.button("Compute group scores", type="primary"):
        request = AttributionRequest(data=data, model=arch, method="grad-dot", grouping="grad-kmeans",
                                     n_groups=min(50, len(split.train)), test_size=None)
        state.submit("attribute", request.to_json(), slot="attribute")
    if state.show_job("attribute", "Attribution") is not None:
        st.rerun()
    st.stop()

# ---- the map: computed once per data set and model in a job (UMAP compiles slowly), then cached
embedder = os.environ.get("GDA_EMBEDDER", "umap")  # tests of other things may use the "pca" stand-in
maps = [m for m in state.finished_runs("embed") if m.params.get("embedder") == embedder]
if not maps:
    st.info(f"The map of the training points is not computed yet ({embedder.upper()} of the model's "
            "hidden features; about a minute the first time, then cached).")
    if st.button("Compute the map", type="primary"):
        state.submit("embed", state.request_json(EmbeddingRequest(data=data, model=arch, embedder=embedder)),
                     slot="embed")
    if state.show_job("embed", "Map") is not None:
        st.rerun()
    st.stop()
embedding = state.store().load(maps[0].key)
result = state.store().load(run.key)
if embedding is None or result is None:  # a file went missing or corrupt: the store says so
    st.error("A stored result could not be read (missing or corrupt); compute it again.")
    st.stop()
scores, group_labels = result["scores"], result["groups"]
n_scored = len(scores)

# ---- the test point: by index, from the misclassified ones, or by a click on the map
selection = st.session_state.get(MAP_KEY)
points = (selection or {}).get("selection", {}).get("points", []) if selection else []
clicked = [p for p in points if p.get("curve_number") == st.session_state.get("_test_trace")]
if clicked and clicked[0].get("point_index") != st.session_state.get("_applied_click"):
    st.session_state["_applied_click"] = clicked[0].get("point_index")
    st.session_state["test_index"] = int(clicked[0]["point_index"])
st.session_state["test_index"] = min(int(st.session_state["test_index"]), n_scored - 1)

predicted, confidence = state.test_predictions()
test_labels = split.test.labels.cpu().numpy()
regression = not split.test.class_names
if regression:  # the worst predictions stand in for the misclassified points
    errors = np.abs(predicted[:n_scored] - test_labels[:n_scored])
    wrong, wrong_kind = np.argsort(-errors, kind="stable")[:20], "worst-predicted"
else:
    wrong, wrong_kind = np.flatnonzero(predicted[:n_scored] != test_labels[:n_scored]), "misclassified"
label_names, predicted_names = split.test.label_texts(), split.test.label_texts(predicted)
left, middle, right = st.columns([1, 2, 2])
left.number_input("Test point", min_value=0, max_value=n_scored - 1, step=1, key="test_index")
middle.selectbox(
    f"Or one of the {len(wrong)} {wrong_kind} test points", [None, *wrong.tolist()], key="pick_wrong",
    format_func=lambda i: "-" if i is None else f"#{i}: label {label_names[i]}, predicted {predicted_names[i]}",
    on_change=lambda: st.session_state.update(test_index=st.session_state["pick_wrong"])
    if st.session_state["pick_wrong"] is not None else None)
index = int(st.session_state["test_index"])
certainty = "" if confidence is None else f" ({confidence[index]:.0%})"
right.markdown(f"Test point **#{index}**: label **{escape(label_names[index])}**, model predicts "
               f"**{escape(predicted_names[index])}**{certainty}. Or click a grey cross on the map.")
st.caption(f"Scores: **{run.params['method']}** on **{run.params['grouping']}** groups "
           f"(K = {run.summary.get('n_groups')}). {SIGN_NOTE}")

st.radio("Colour the map by", MAP_COLOURS, key="map_colour", horizontal=True,
         format_func={"group": "group", "class": "target value" if regression else "class label",
                      "score": "group score for this test point (blue helps, red hurts)"}.get)
ranking = top_groups(scores, group_labels, split.train.labels.cpu().numpy(), split.train.class_names, index)
figure = embedding_map_figure(
    embedding["train"], split.train.labels.cpu().numpy(), split.train.class_names, group_labels,
    group_scores=scores[index], helpful=[row["group"] for row in ranking["helpful"]],
    harmful=[row["group"] for row in ranking["harmful"]], test_xy=embedding["test"][:n_scored],
    test_labels=test_labels[:n_scored], selected_test=index, colour=st.session_state["map_colour"],
    title=f"Training points by group ({maps[0].summary.get('embedder', embedder).upper()} map); "
          "rings: the chosen test point's most helpful (green) and harmful (red) groups")
st.session_state["_test_trace"] = next(i for i, trace in enumerate(figure.data) if trace.name.startswith("test points"))
st.plotly_chart(figure, key=MAP_KEY, on_select="rerun", selection_mode="points")

if split.test.images is not None:
    st.plotly_chart(image_grid_figure(split.test.images[index:index + 1], [f"test #{index}"], columns=1),
                    key="test_image", width=160)
show_sentence(st, split.test, index, f"Test point #{index}")

for tab, kind, title in zip(st.tabs(["Most helpful groups", "Most harmful groups"]), ("helpful", "harmful"),
                            ("Most helpful groups", "Most harmful groups")):
    with tab:
        tab.plotly_chart(group_scores_figure(ranking[kind], title), key=f"{kind}_scores")
        if split.train.images is not None or split.train.texts is not None:
            for row in ranking[kind][:3]:
                tab.markdown(f"Group {row['group']}: score {row['score']:.3g}, {row['size']} points, "
                             f"{row['description']} (first {len(row['members'])} shown)")
                members = np.array(row["members"])
                show_points(tab, split.train, members,
                            [f"#{m} '{split.train.class_names[int(split.train.labels[m])]}'" for m in members],
                            key=f"{kind}_members_{row['group']}")
        else:
            tab.dataframe([{k: v for k, v in row.items()} for row in ranking[kind]], hide_index=True)
