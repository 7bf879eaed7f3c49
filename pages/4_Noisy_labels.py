"""Noisy labels: flag suspicious training points, review them (keep / relabel / skip, undo,
export), and see how well flagging finds labels flipped on purpose, and what pruning does.

UI only: flagging, evaluation and pruning run as jobs (gda_core.evaluation), decisions live in the
store (gda_core.runs.review), figures come from gda_core.viz."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from gda_app import state
from gda_app.examples_view import show_points, show_sentence
from gda_app.markup import escape
from gda_core.errors import GDAError
from gda_core.evaluation.noisy import NEEDS_CLASSES
from gda_core.registry import GROUPINGS, METHODS
from gda_core.requests import SIGNALS, FlagRequest, NoisyConfig, PruneConfig
from gda_core.runs.review import ReviewSession, review_for_flags, review_sessions
from gda_core.viz.figures import image_grid_figure, noisy_detection_figure, pruning_figure

#: the version of the review this browser tab last showed (a write from a stale view is refused)
SEEN = "review_seen_version"
FLAG_DEFAULTS = {"flag_method": "grad-dot", "flag_grouping": "per-example", "flag_groups": 150,
                 "flag_signal": "self-influence"}

state.page_setup("Noisy labels")
for name, default in FLAG_DEFAULTS.items():
    st.session_state[name] = st.session_state.get(name, default)
st.title("Noisy labels")
split, model = state.inputs()
try:
    split.train.require_classes("the Noisy labels page", NEEDS_CLASSES["noisy-label evaluation"])
except GDAError as error:
    st.info(escape(error))
    st.stop()
data, arch = st.session_state["data"], st.session_state["model"]
data_name, model_name = state.describe(data), state.describe(arch)  # uploads by their file names
shown_data, shown_model = escape(data_name), escape(model_name)  # as markdown
file_stem = f"{Path(data_name).stem}-{Path(model_name).stem}"
n_train = len(split.train)
st.caption("Flagged first: training points with the largest **self-influence** (how much up-weighting a point "
           "lowers its own loss: the model bends to fit it, as it must for a wrong label), or those whose "
           "up-weighting most **raises a held-out loss** (negative influence on validation). Grouped runs score "
           "groups first and re-score the best groups point by point.")

# ------------------------------------------------------------------------------- flagging
columns = st.columns(4)
columns[0].selectbox("Method", list(METHODS), key="flag_method")
columns[1].selectbox("Grouping", list(GROUPINGS), key="flag_grouping")
grouping = GROUPINGS[st.session_state["flag_grouping"]]
st.session_state["flag_groups"] = min(max(2, int(st.session_state["flag_groups"])), n_train)  # e.g. after a smaller data set
if grouping.fixed_group_count:
    columns[2].markdown(f"Groups (K): **{grouping.fixed_count_name}**")
else:
    columns[2].number_input("Groups (K)", min_value=2, max_value=n_train, step=10, key="flag_groups")
columns[3].selectbox("Signal", list(SIGNALS), key="flag_signal")
if st.button("Flag training points", type="primary"):
    state.submit_request("flag", lambda: FlagRequest(
        data=data, model=arch, method=st.session_state["flag_method"], grouping=st.session_state["flag_grouping"],
        n_groups=None if grouping.fixed_group_count else int(st.session_state["flag_groups"]),
        signal=st.session_state["flag_signal"]), slot="flag")
if state.show_job("flag", "Flagging") is not None:
    st.session_state["flag_run"] = st.session_state["job:flag"]


def decide(name: str, action: str, train_index: int | None = None, label: int | None = None) -> None:
    """A button's callback: one decision, written against the version this tab showed."""
    session = ReviewSession(state.store(), name)
    session.version = st.session_state.get(SEEN, session.version)
    try:
        if action == "undo":
            session.undo()
        elif action == "relabel":
            session.relabel(train_index, label)
        else:
            getattr(session, action)(train_index)
    except GDAError as error:
        st.session_state["review_error"] = str(error)


def review(name: str) -> None:
    session = ReviewSession(state.store(), name)
    st.session_state[SEEN] = session.version
    if "review_error" in st.session_state:
        st.warning(escape(st.session_state.pop("review_error")))
    predicted, confidence = state.train_predictions()
    names = session.class_names
    items = session.items()
    undecided = session.undecided()
    done = len(items) - len(undecided)
    st.progress(done / max(1, len(items)), text=f"{done} of {len(items)} flagged points decided")

    if undecided:
        index = undecided[0]
        given = int(session.labels[index])
        left, right = st.columns([1, 2])
        if split.train.images is not None:
            left.plotly_chart(image_grid_figure(split.train.images[[index]], [f"training point #{index}"], columns=1)
                              .update_layout(height=260), key="current_image")
        right.markdown(f"**Training point #{index}** (rank {[i['train_index'] for i in items].index(index) + 1} "
                       f"of {len(items)})")
        show_sentence(right, split.train, index, "Sentence")
        right.markdown(f"Given label: **{escape(names[given])}** | model predicts **{escape(names[predicted[index]])}** "
                       f"with confidence **{confidence[index]:.0%}**")
        options = list(range(len(names)))
        suggestion = int(predicted[index]) if int(predicted[index]) != given else (given + 1) % len(names)
        new_label = right.selectbox("Relabel to", options, index=suggestion, format_func=lambda c: names[c],
                                    key=f"relabel_to:{index}")
        buttons = right.columns(4)
        buttons[0].button("Keep", shortcut="K", on_click=decide, args=(name, "keep", index),
                          help="The label is right (shortcut K)")
        buttons[1].button("Relabel", shortcut="L", on_click=decide, args=(name, "relabel", index, new_label),
                          help="Use the class chosen above (shortcut L)")
        buttons[2].button("Skip", shortcut="S", on_click=decide, args=(name, "skip", index),
                          help="Not sure: leave the label, mark it seen (shortcut S)")
        buttons[3].button("Undo", shortcut="U", on_click=decide, args=(name, "undo"),
                          disabled=not session.decisions(), help="Cancel the last decision (shortcut U)")
    else:
        st.success("Every flagged point has a decision.")
        st.button("Undo", shortcut="U", on_click=decide, args=(name, "undo"), disabled=not session.decisions())

    upcoming = undecided[1:17]
    if upcoming and (split.train.images is not None or split.train.texts is not None):
        st.caption("Next in the list")
        show_points(st, split.train, upcoming, [f"#{i}: {names[session.labels[i]]}, pred {names[predicted[i]]}"
                                                for i in upcoming], key="upcoming_images")
    table = pd.DataFrame([{
        "rank": rank + 1, "training point": item["train_index"], "given label": names[item["given_label"]],
        "predicted": names[predicted[item["train_index"]]], "confidence": float(confidence[item["train_index"]]),
        "decision": item["decision"].action if item["decision"] else "",
        "new label": (names[item["decision"].new_label] if item["decision"] and item["decision"].new_label is not None
                      else ""),
    } for rank, item in enumerate(items)])
    st.dataframe(table, hide_index=True, key="flagged_table",
                 column_config={"confidence": st.column_config.NumberColumn(format="percent")})
    downloads = st.columns(2)
    downloads[0].download_button("Download decisions (CSV)", session.decisions_csv(),
                                 file_name=f"{file_stem}-decisions.csv", mime="text/csv")
    downloads[1].download_button("Download cleaned labels (CSV)", session.labels_csv(),
                                 file_name=f"{file_stem}-cleaned-labels.csv", mime="text/csv")


st.subheader("Review")
flag_runs = state.finished_runs("flag")
# Each finished flag run is a review of its top points; selections sent from the Explore map are reviews too.
lists = {f"flags:{run.key}": f"{run.params['method']} / {run.params['grouping']} (K={run.summary.get('n_groups')}), "
                             f"{run.params['signal']}" for run in flag_runs}
lists |= {name: f"selection of {info.get('selected', '?')} points from the Explore map"
          for name, info in review_sessions(state.store(), data=data, model=arch) if name.startswith("selection:")}
if not lists:
    st.info(f"No flagged points for {shown_data} / {shown_model} yet: press **Flag training points** (Grad-Dot per example "
            "takes a second; influence functions longer), or run `gda flag` from the command line.")
else:
    chosen = st.session_state.get("flag_run")
    if chosen in {run.key for run in flag_runs}:  # a flag run's key, as a finished job leaves it
        st.session_state["flag_run"] = chosen = f"flags:{chosen}"
    if chosen not in lists:
        st.session_state["flag_run"] = next(iter(lists))
    st.selectbox("Flagged list", list(lists), format_func=lists.get, key="flag_run")
    chosen = st.session_state["flag_run"]
    if chosen.startswith("flags:"):
        review_for_flags(state.store(), chosen.removeprefix("flags:"))  # created on first view
    review(chosen)

# ---------------------------------------------------------------- evaluation and pruning
st.subheader("How well does flagging find wrong labels?")
st.caption("A seeded 10% of the training labels are flipped to another class, the model is retrained on them, "
           "and each ranking is inspected from the top: the fraction of flips found against the fraction inspected. "
           "Baselines: the training loss, Confident Learning (cleanlab) and random inspection.")
n_fit = int(0.9 * n_train)
small_k = min(150, max(2, n_fit // 10))
if st.button("Run a small evaluation", help=f"Grad-Dot self-influence on gradient K-means groups (K = {small_k}), "
                                            "10% flipped labels, with the loss and Confident Learning baselines."):
    # a model file is refused in one line: this retrains from scratch, so it needs an architecture
    state.submit_request("noisy", lambda: NoisyConfig(data=data, model=arch, method="grad-dot",
                                                      grouping="grad-kmeans", n_groups=small_k), slot="noisy")
state.show_job("noisy", "Evaluation")
evaluations = state.finished_runs("noisy")
if evaluations:
    st.plotly_chart(noisy_detection_figure(evaluations[0].summary), key="noisy_figure")
    st.dataframe(pd.DataFrame([{"ranking": r["label"], "AUC": r["auc"],
                                **{f"found at {float(f):.0%}": v for f, v in r["recall_at"].items()},
                                "seconds": r["seconds"]} for r in evaluations[0].summary["rankings"].values()]),
                 hide_index=True, key="noisy_table")
else:
    st.info(f"No evaluation for {shown_data} / {shown_model} yet: press **Run a small evaluation**, or run "
            f"`gda noisy --data {data} --model {arch} ...` (it lands in the same cache).")

st.subheader("Pruning")
st.caption("Remove the groups with the lowest total influence on a held-out validation loss, retrain, and compare "
           "test accuracy with removing random groups.")
if st.button("Run a small pruning", help=f"Grad-Dot on gradient K-means groups (K = {small_k}), removing 10-30% "
                                         "of the training points, 2 seeds."):
    state.submit_request("prune", lambda: PruneConfig(data=data, model=arch, method="grad-dot", grouping="grad-kmeans",
                                                      n_groups=small_k, fractions=(0.1, 0.2, 0.3), seeds=2),
                         slot="prune")
state.show_job("prune", "Pruning")
prunings = state.finished_runs("prune")
if prunings:
    st.plotly_chart(pruning_figure(prunings[0].summary), key="pruning_figure")
else:
    st.info(f"No pruning run for {shown_data} / {shown_model} yet: press **Run a small pruning**, or run `gda prune`.")
