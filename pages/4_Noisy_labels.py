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
from gda_core.evaluation.flagging import MODEL_ONLY_SIGNALS, flag_summary_label
from gda_core.evaluation.noisy import NEEDS_CLASSES
from gda_core.inputs.noise import NOISE_KINDS
from gda_core.registry import GROUPINGS, METHODS
from gda_core.requests import SIGNALS, FlagRequest, NoisyConfig, PruneConfig
from gda_core.runs.review import ReviewSession, review_for_flags, review_sessions
from gda_core.viz.figures import image_grid_figure, noisy_detection_figure, pruning_figure

#: the version of the review this browser tab last showed (a write from a stale view is refused)
SEEN = "review_seen_version"
FLAG_DEFAULTS = {"flag_method": "grad-dot", "flag_grouping": "per-example", "flag_groups": 150,
                 "flag_signal": "neighbours", "bulk_confidence": 0.9}

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
if split.train.true_labels is not None:
    st.info(f"**{shown_data}** is a noisy demo: "
            f"{int((split.train.labels.numpy() != split.train.true_labels).sum())} of its {n_train} training labels "
            "were flipped on purpose. The truth is kept, so each review below is scored as you go.")
st.caption("Flagged first: by default (**neighbours**, from the final model alone) training points whose nearest "
           "training neighbours in the model's layer inputs mostly carry another label; or those with the largest "
           "**self-influence** (how much up-weighting a point lowers its own loss: the model bends to fit it, as it "
           "must for a wrong label), or whose up-weighting most **raises a held-out loss** (negative influence on "
           "validation). Grouped runs score groups first and re-score the best groups point by point.")

# ------------------------------------------------------------------------------- flagging
columns = st.columns(4)
columns[0].selectbox("Signal", list(SIGNALS), key="flag_signal")
model_only = st.session_state["flag_signal"] in MODEL_ONLY_SIGNALS  # no method or grouping is used
columns[1].selectbox("Method", list(METHODS), key="flag_method", disabled=model_only)
columns[2].selectbox("Grouping", list(GROUPINGS), key="flag_grouping", disabled=model_only)
grouping = GROUPINGS[st.session_state["flag_grouping"]]
st.session_state["flag_groups"] = min(max(2, int(st.session_state["flag_groups"])), n_train)  # e.g. after a smaller data set
if grouping.fixed_group_count:
    columns[3].markdown(f"Groups (K): **{grouping.fixed_count_name}**")
else:
    columns[3].number_input("Groups (K)", min_value=2, max_value=n_train, step=10, key="flag_groups",
                            disabled=model_only)
if st.button("Flag training points", type="primary"):
    # a model-only signal uses no method: one canonical request, so that it is cached once
    state.submit_request("flag", lambda: FlagRequest(data=data, model=arch, signal=st.session_state["flag_signal"], **(
        {"method": "grad-dot", "grouping": "per-example"} if model_only else
        {"method": st.session_state["flag_method"], "grouping": st.session_state["flag_grouping"],
         "n_groups": None if grouping.fixed_group_count else int(st.session_state["flag_groups"])})), slot="flag")
if state.show_job("flag", "Flagging") is not None:
    st.session_state["flag_run"] = st.session_state["job:flag"]


def decide(name: str, action: str, train_index: int | None = None, label: int | None = None,
           proposal: dict[int, int] | None = None) -> None:
    """A button's callback: one decision (or one bulk action), written against the version this tab showed."""
    session = ReviewSession(state.store(), name)
    session.version = st.session_state.get(SEEN, session.version)
    try:
        if action == "undo":
            session.undo()
        elif action == "bulk":
            session.relabel_many(proposal)
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
    if split.train.true_labels is not None:
        show_review_score(session.score(split.train.true_labels))

    bulk, bulk_button = st.columns([2, 1])
    threshold = bulk.slider("Bulk relabel: model confidence at least", 0.5, 1.0, step=0.01, key="bulk_confidence",
                            help="Relabel, in one step (one Undo cancels it), every undecided flagged point where the "
                                 "model predicts another class than the given one with at least this confidence.")
    proposal = session.bulk_relabel_proposal(predicted, confidence, threshold)
    bulk_button.button(f"Relabel {len(proposal)} to the model's class", on_click=decide, args=(name, "bulk"),
                       kwargs={"proposal": proposal}, disabled=not proposal, key="bulk_relabel",
                       help="Each point gets the class the model predicts for it")

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
    downloads = st.columns(4)
    downloads[0].download_button("Download decisions (CSV)", session.decisions_csv(),
                                 file_name=f"{file_stem}-decisions.csv", mime="text/csv")
    downloads[1].download_button("Download cleaned labels (CSV)", session.labels_csv(),
                                 file_name=f"{file_stem}-cleaned-labels.csv", mime="text/csv")
    # the cleaned data set itself, made only when asked for (it rewrites every row)
    downloads[2].download_button("Download cleaned data (CSV)", lambda: session.cleaned_csv(state.raw_rows()),
                                 file_name=f"{file_stem}-cleaned.csv", mime="text/csv",
                                 help="Every row with its label after the review; upload it again as a data file")
    downloads[3].download_button("Download cleaned data (NPZ)", lambda: session.cleaned_npz(state.raw_rows()),
                                 file_name=f"{file_stem}-cleaned.npz", mime="application/octet-stream",
                                 help="The same rows as an .npz (X, y, class_names, image_shape), as uploads use")


def show_review_score(score: dict) -> None:
    """The review scored against the kept truth (the noisy demo only)."""
    columns = st.columns(4)
    columns[0].metric("Wrong labels in this list", f"{score['wrong_among_flagged']} of {score['flagged']}",
                      help=f"{score['wrong_labels']} training labels are wrong in all")
    columns[1].metric("Fixed", score["fixed"], help="Relabelled to the true class")
    columns[2].metric("Right decisions", f"{score['right_decisions']} of {score['decided']}",
                      help="Fixed, or kept a right label")
    columns[3].metric("Harm", score["relabelled a right label"] + score["kept a wrong label"],
                      help="Relabelled a right label, or kept a wrong one")


st.subheader("Review")
flag_runs = state.finished_runs("flag")
# Each finished flag run is a review of its top points; selections sent from the Explore map are reviews too.
lists = {f"flags:{run.key}": flag_summary_label(run.summary) for run in flag_runs}
lists |= {name: f"selection of {info.get('selected', '?')} points from the Explore map"
          for name, info in review_sessions(state.store(), data=data, model=arch) if name.startswith("selection:")}
if not lists:
    st.info(f"No flagged points for {shown_data} / {shown_model} yet: press **Flag training points** (the neighbours "
            "signal takes a second; influence functions longer), or run `gda flag` from the command line.")
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
st.caption("A seeded share of the training labels is flipped to another class (uniformly, or to a confusable "
           "partner class), the model is retrained on them, and each ranking is inspected from the top: the fraction "
           "of flips found against the fraction inspected. Rankings: the neighbours signal and the training loss "
           "(final model only), Grad-Dot self-influence, Confident Learning (cleanlab) on the final model's "
           "probabilities and on cross-validated ones (it retrains the model once per fold), and random inspection.")
n_fit = int(0.9 * n_train)
small_k = min(150, max(2, n_fit // 10))
noise_columns = st.columns(2)
noise_columns[0].selectbox("Noise", list(NOISE_KINDS), key="noisy_noise",
                           help="uniform: to any other class; pairs: to a partner class (digits: 1-7, 3-8, 4-9, 5-6, 0-2)")
noise_columns[1].select_slider("Flipped share", [0.05, 0.1, 0.2, 0.3], value=0.1, key="noisy_flip")
if st.button("Run a small evaluation", help="Grad-Dot self-influence per example against every other ranking, "
                                            "with the labels flipped as chosen."):
    # a model file is refused in one line: this retrains from scratch, so it needs an architecture
    state.submit_request("noisy", lambda: NoisyConfig(data=data, model=arch, method="grad-dot", grouping="per-example",
                                                      signal="self-influence", noise=st.session_state["noisy_noise"],
                                                      flip=float(st.session_state["noisy_flip"])), slot="noisy")
state.show_job("noisy", "Evaluation")
evaluations = state.finished_runs("noisy")
if evaluations:
    chosen = evaluations[0]
    st.caption(f"{chosen.params.get('flip', 0.1):.0%} of the labels flipped, {chosen.params.get('noise', 'uniform')} "
               f"noise, seed {chosen.params.get('seed', 0)}: {chosen.summary['n_flipped']} flips among "
               f"{chosen.summary['n_train']} training points.")
    st.plotly_chart(noisy_detection_figure(chosen.summary), key="noisy_figure")
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
