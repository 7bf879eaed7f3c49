"""Explore: the training points on a 2-D map; the most helpful and most harmful groups of a
chosen test point; a drill-down into one group's members; a box or lasso selection of training
points; and two test points compared side by side. UI only: every number comes from gda_core
(jobs in the store for anything that costs a gradient)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import streamlit as st

from gda_app import state
from gda_app.examples_view import show_points, show_sentence
from gda_app.map_events import apply_map_event
from gda_app.markup import escape
from gda_core.attribution.grouping import GIANT_GROUP_SHARE
from gda_core.attribution.pipeline import compare_test_points, search_test_points, top_groups
from gda_core.requests import AttributionRequest, EmbeddingRequest, MembersRequest, PointStatsRequest
from gda_core.runs.review import review_for_selection, review_sessions, review_states
from gda_core.viz.figures import MAP_COLOURS, SIGN_NOTE, embedding_map_figure, group_scores_figure, image_grid_figure

MAP_KEY = "map"
#: how many member images and selected points are drawn (the tables hold all of them)
SHOWN_IMAGES = 32
COLOUR_NAMES = {"group": "group", "class": "class label", "score": "group score for this test point",
                "self-influence": "self-influence", "loss": "training loss", "review": "flagged / reviewed"}

state.page_setup("Explore")
for name, default in {"drill_group": None, "selected_points": [], "compare_index": None}.items():
    st.session_state[name] = st.session_state.get(name, default)
st.title("Explore")
split, model = state.inputs()
data, arch = st.session_state["data"], st.session_state["model"]
train_labels = split.train.labels.cpu().numpy()
train_names = split.train.label_texts()  # once: 100k points would make every lookup a pass
class_names = split.train.class_names
regression = not class_names

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
n_scored, n_groups = len(scores), scores.shape[1]
group_sizes = np.bincount(group_labels, minlength=n_groups)
if st.session_state["drill_group"] is not None and st.session_state["drill_group"] >= n_groups:
    st.session_state["drill_group"] = None  # a group of another run

# ---- what the map's selection event says: a test point clicked, a training point clicked
# (drill into its group), or a box / lasso over training points (the selection)
apply_map_event(st.session_state.get(MAP_KEY), st.session_state, group_labels=group_labels,
                test_trace=st.session_state.get("_test_trace"))
st.session_state["test_index"] = min(int(st.session_state["test_index"]), n_scored - 1)

# ---- the test point: by index, or searched by label, prediction and misclassification
predicted, confidence = state.test_predictions()
test_labels = split.test.labels.cpu().numpy()[:n_scored]
label_names, predicted_names = split.test.label_texts(), split.test.label_texts(predicted)
left, middle, right = st.columns([1, 3, 2])
left.number_input("Test point", min_value=0, max_value=n_scored - 1, step=1, key="test_index")
with middle:
    if regression:  # the worst predictions stand in for the misclassified points
        errors = np.abs(predicted[:n_scored] - test_labels)
        matches, found = np.argsort(-errors, kind="stable")[:20], "worst-predicted"
    else:
        search = st.columns(3)
        label_choice = search[0].selectbox("Label", [None, *range(len(class_names))], key="search_label",
                                           format_func=lambda c: "any" if c is None else class_names[c])
        prediction_choice = search[1].selectbox("Prediction", [None, *range(len(class_names))],
                                                key="search_prediction",
                                                format_func=lambda c: "any" if c is None else class_names[c])
        only_wrong = search[2].checkbox("Misclassified only", value=True, key="search_wrong")
        matches = search_test_points(test_labels, predicted[:n_scored], label=label_choice,
                                     prediction=prediction_choice, misclassified=only_wrong)
        found = "matching"
    if st.session_state.get("pick_wrong") not in {None, *matches.tolist()}:
        st.session_state["pick_wrong"] = None  # the search changed under it
    st.selectbox(
        f"Or one of the {len(matches)} {found} test points", [None, *matches.tolist()], key="pick_wrong",
        format_func=lambda i: "-" if i is None else f"#{i}: label {label_names[i]}, predicted {predicted_names[i]}",
        on_change=lambda: st.session_state.update(test_index=st.session_state["pick_wrong"])
        if st.session_state["pick_wrong"] is not None else None)
index = int(st.session_state["test_index"])
certainty = "" if confidence is None else f" ({confidence[index]:.0%})"
right.markdown(f"Test point **#{index}**: label **{escape(label_names[index])}**, model predicts "
               f"**{escape(predicted_names[index])}**{certainty}. Or click a grey cross on the map.")
st.caption(f"Scores: **{run.params['method']}** on **{run.params['grouping']}** groups (K = {n_groups}; "
           f"sizes {group_sizes.max()} / {np.median(group_sizes):g} / {group_sizes.min()}, largest / median / "
           f"smallest). {SIGN_NOTE}")

# ---- per-point columns (loss, self-influence) and review states, where computed
stats_request = PointStatsRequest(data=data, model=arch, method=run.params["method"],
                                  method_options=run.params.get("method_options", {}))
stats_runs = [r for r in state.finished_runs("point-stats") if r.params.get("method") == stats_request.method
              and r.params.get("method_options", {}) == stats_request.method_options]
point_stats = state.store().load(stats_runs[0].key) if stats_runs else None
reviews = [name for name, _ in review_sessions(state.store(), data=data, model=arch)]

st.radio("Colour the map by", MAP_COLOURS, key="map_colour", horizontal=True,
         format_func=lambda c: "target value" if c == "class" and regression else COLOUR_NAMES[c])
colour = st.session_state["map_colour"]
point_values = None
if colour in ("self-influence", "loss"):
    if point_stats is None:
        st.info(f"Colouring by {COLOUR_NAMES[colour]} needs each training point's loss and "
                f"{stats_request.method} self-influence (one per-example pass, then cached).")
        if st.button("Compute loss and self-influence", type="primary"):
            state.submit("point-stats", state.request_json(stats_request), slot="point-stats")
        if state.show_job("point-stats", "Loss and self-influence") is not None:
            st.rerun()
        colour = "group"
    else:
        point_values = {"self-influence": point_stats["self_influence"], "loss": point_stats["loss"]}
states = None
if colour == "review":
    if reviews:
        states = review_states(state.store(), len(split.train), reviews)
    else:
        st.info("No flagged or reviewed points yet: flag them on the Noisy labels page, or send a selection "
                "to the review below.")
        colour = "group"

ranking = top_groups(scores, group_labels, train_labels, class_names, index)
giant = [row["group"] for kind in ("helpful", "harmful") for row in ranking[kind]
         if row["size"] > GIANT_GROUP_SHARE * len(group_labels)]

# ---- the drill-down's job: one group's members scored one by one (cached per group)
drill_group = st.session_state["drill_group"]
drill = None
if drill_group is not None:
    fields = {f.name for f in dataclasses.fields(MembersRequest)}
    members_request = MembersRequest(**{k: v for k, v in run.params.items() if k in fields}, group=int(drill_group))
    done = [r for r in state.finished_runs("members") if r.params == {**run.params, "group": int(drill_group)}]
    if done:
        drill = state.store().load(done[0].key)
        drill_linear = done[0].summary.get("method_info", {}).get("gradient_linear", True)
    elif st.session_state.get("_drill_submitted") != (run.key, drill_group):
        st.session_state["_drill_submitted"] = (run.key, drill_group)
        state.submit("members", state.request_json(members_request), slot="members")

figure = embedding_map_figure(
    embedding["train"], train_labels, class_names, group_labels, group_scores=scores[index],
    helpful=[row["group"] for row in ranking["helpful"]], harmful=[row["group"] for row in ranking["harmful"]],
    test_xy=embedding["test"][:n_scored], test_labels=test_labels, selected_test=index, colour=colour,
    point_values=point_values, review_states=states,
    drill=None if drill is None else (drill["members"], drill["scores"][index]),
    title=f"Training points by group ({maps[0].summary.get('embedder', embedder).upper()} map); "
          "rings: the chosen test point's most helpful (green) and harmful (red) groups")
st.session_state["_test_trace"] = next(i for i, trace in enumerate(figure.data) if trace.name.startswith("test points"))
st.plotly_chart(figure, key=MAP_KEY, on_select="rerun", selection_mode=("points", "box", "lasso"))
fitted_on = maps[0].summary.get("fitted_on")
st.caption("Click a training point to drill into its group; draw a box or a lasso (toolbar) to select points."
           + (f" Groups {', '.join(map(str, giant))} hold more than a quarter of the points each and get no ring."
              if giant else "")
           + (f" The map was fitted on {fitted_on} of {len(group_labels)} points; the rest were placed on it."
              if fitted_on and fitted_on < len(group_labels) else ""))


def show_members(container, rows: np.ndarray, titles: list[str], key: str) -> None:
    """The first few of some training points as images (image data; sentences are in the tables)."""
    if split.train.images is not None and len(rows):
        show_points(container, split.train, rows[:SHOWN_IMAGES], titles[:SHOWN_IMAGES], key=key)


def point_table(rows: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Index, label, prediction, group, the group's score for the test point, and loss and
    self-influence where computed, for some training points."""
    predicted_train, _ = state.train_predictions()
    table = {"training point": rows, "label": train_names[rows],
             "prediction": split.train.label_texts(predicted_train)[rows], "group": group_labels[rows],
             "group score": scores[index][group_labels[rows]]}
    if point_stats is not None:
        table |= {"loss": point_stats["loss"][rows], "self-influence": point_stats["self_influence"][rows]}
    if split.train.texts is not None:
        table["text"] = [str(split.train.texts[r]) for r in rows]
    return pd.DataFrame(table | (extra or {}))


def drill_into(group: int) -> None:
    st.session_state["drill_group"] = group


helpful_tab, harmful_tab, drill_tab, selection_tab, compare_tab = st.tabs(
    ["Most helpful groups", "Most harmful groups", "Drill into a group", "Selection", "Compare two test points"])
for tab, kind, title in ((helpful_tab, "helpful", "Most helpful groups"),
                         (harmful_tab, "harmful", "Most harmful groups")):
    with tab:
        bars = st.plotly_chart(group_scores_figure(ranking[kind], title), key=f"{kind}_scores", on_select="rerun",
                               selection_mode="points")
        clicked = (bars or {}).get("selection", {}).get("points", []) if bars else []
        if clicked and (kind, clicked[0].get("point_index")) != st.session_state.get("_applied_bar"):
            st.session_state["_applied_bar"] = (kind, clicked[0].get("point_index"))
            drill_into(int(ranking[kind][int(clicked[0]["point_index"])]["group"]))
            st.rerun()
        for row in ranking[kind][:3]:
            st.markdown(f"Group {row['group']}: score {row['score']:.3g}, {row['size']} points, "
                        f"{escape(row['description'])} (first {len(row['members'])} shown)")
            st.button(f"Drill into group {row['group']}", key=f"drill:{kind}:{row['group']}",
                      on_click=drill_into, args=(int(row["group"]),))
            members = np.array(row["members"])
            show_points(st, split.train, members, [f"#{m} '{train_names[m]}'" for m in members],
                        key=f"{kind}_members_{row['group']}")

with drill_tab:
    st.selectbox("Group", [None, *range(n_groups)], key="drill_group",
                 format_func=lambda g: "- (click a training point or a bar)" if g is None else
                 f"group {g}: {group_sizes[g]} points, score {scores[index][g]:.3g}")
    if drill_group is None:
        st.info("Choose a group (click one of its points on the map, a bar of the rankings, or pick it here) "
                "to see which of its members matter for this test point.")
    elif drill is None:
        if state.show_job("members", f"Scoring the members of group {drill_group}") is not None:
            st.rerun()
    else:
        member_scores = drill["scores"][index]
        order = np.argsort(-member_scores, kind="stable")
        ranked = drill["members"][order]
        st.markdown(f"Group **{drill_group}** ({len(ranked)} points) has score **{scores[index][drill_group]:.3g}** "
                    f"for test point #{index}; its members' own scores sum to **{member_scores.sum():.3g}**. "
                    "Members are drawn on the map in their own colours (blue helps, red hurts)."
                    + ("" if drill_linear else f" {run.params['method']} is not gradient-linear: its members' "
                       "scores need not add up to the group's."))
        table = point_table(ranked, {"own score": member_scores[order]})
        st.dataframe(table, hide_index=True, key="members_table")
        show_members(st, ranked, [f"#{m} {s:+.2g}" for m, s in zip(ranked, member_scores[order])], key="members_images")

with selection_tab:
    selected = np.asarray(st.session_state["selected_points"], dtype=np.int64)
    if not len(selected):
        st.info("Draw a box or a lasso over training points on the map (toolbar above it) to select them.")
    else:
        table = point_table(selected)
        st.markdown(f"**{len(selected)}** training points selected.")
        st.dataframe(table, hide_index=True, key="selection_table")
        show_members(st, selected, [f"#{m} '{train_names[m]}'" for m in selected[:SHOWN_IMAGES]], key="selection_images")
        actions = st.columns(3)
        actions[0].download_button("Export the selection (CSV)", table.to_csv(index=False).encode(),
                                   file_name="selection.csv", mime="text/csv")
        if not regression and actions[1].button("Send to the Noisy-labels review"):
            session = review_for_selection(state.store(), selected, labels=train_labels, class_names=class_names,
                                           source_rows=split.train.indices, data=data, model=arch)
            st.session_state["flag_run"] = session.name
            st.success(f"{len(selected)} points are in the review **{session.name}** (Noisy labels page).")
        if actions[2].button("Clear the selection"):
            st.session_state["selected_points"] = []
            st.rerun()

with compare_tab:
    if st.session_state["compare_index"] is None or st.session_state["compare_index"] >= n_scored:
        st.session_state["compare_index"] = (index + 1) % n_scored
    other = st.number_input("Compare with test point", min_value=0, max_value=n_scored - 1, step=1,
                            key="compare_index")
    comparison = compare_test_points(scores, group_labels, train_labels, class_names, index, int(other))
    st.markdown(f"Spearman correlation of the two test points' scores over all {n_groups} groups: "
                f"**{comparison['spearman']:.2f}**. Shared among the top 5: helpful groups "
                f"{comparison['shared']['helpful'] or 'none'}, harmful groups "
                f"{comparison['shared']['harmful'] or 'none'}.")
    for column, name, test_point in zip(st.columns(2), ("first", "second"), (index, int(other))):
        column.markdown(f"**Test point #{test_point}**: label {escape(label_names[test_point])}, predicted "
                        f"{escape(predicted_names[test_point])}")
        if split.test.images is not None:
            column.plotly_chart(image_grid_figure(split.test.images[test_point:test_point + 1], [f"test #{test_point}"],
                                                  columns=1), key=f"compare_image_{name}", width=160)
        for kind in ("helpful", "harmful"):
            column.plotly_chart(group_scores_figure(comparison[name][kind], f"Most {kind} groups"),
                                key=f"compare_{name}_{kind}")

if split.test.images is not None:
    st.sidebar.plotly_chart(image_grid_figure(split.test.images[index:index + 1], [f"test #{index}"], columns=1),
                            key="test_image")
show_sentence(st.sidebar, split.test, index, f"Test point #{index}")
