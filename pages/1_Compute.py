"""Compute: choose a method, a grouping and a group count; run it as a job with progress."""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import streamlit as st

from gda_app import state
from gda_app.markup import escape
from gda_core.attribution.costs import cost_advice, cost_rows
from gda_core.registry import EXECUTORS, GROUPINGS, METHODS
from gda_core.requests import AttributionRequest

#: method options that tune memory use, not results: kept out of the advanced panel
HIDDEN_OPTIONS = {"chunk_examples", "cache_bytes"}

state.page_setup("Compute")
st.title("Compute group scores")
split = state.data_split()
n_train = len(split.train)
st.caption(f"Data set **{escape(state.describe(st.session_state['data']))}** ({n_train} training points), model "
           f"**{escape(state.describe(st.session_state['model']))}**. Change them on the Home page.")

left, middle, right = st.columns(3)
left.selectbox("Method", list(METHODS), key="method", format_func=lambda name: name,
               help="\n\n".join(f"**{name}**: {cls.description}" for name, cls in METHODS.items()))
middle.selectbox("Grouping", list(GROUPINGS), key="grouping",
                 help="\n\n".join(f"**{name}**: {cls.description}" for name, cls in GROUPINGS.items()))
grouping = GROUPINGS[st.session_state["grouping"]]
max_groups = max(2, min(1000, n_train // 2))
st.session_state["n_groups"] = min(max(2, int(st.session_state["n_groups"])), max_groups)
if grouping.fixed_group_count:
    right.markdown(f"Groups (K): **{grouping.fixed_count_name}**, fixed by this grouping.")
else:
    right.slider("Groups (K)", min_value=2, max_value=max_groups, key="n_groups",
                 help="More groups keep more fidelity and cost more; choose the grouping 'per-example' for K = N.")

n_groups = None if grouping.fixed_group_count else int(st.session_state["n_groups"])
with st.expander("What will it cost? (measured on this model)"):
    split_now, _ = state.inputs()
    costs = state.gradient_costs()
    st.caption(f"Every method starts with gradients of the {n_train} training and {len(split_now.test)} test "
               f"points; here one per-example pass, timed on {costs[0].sample_size} training points and scaled. "
               "TracIn makes one pass per checkpoint, TRAK one per ensemble member. A grouped run still "
               "passes over every point, but the method then works with K group gradients instead of N: "
               "that is where grouping saves time and memory. Last-layer mode differentiates the head only.")
    st.dataframe(pd.DataFrame(cost_rows(costs, n_train, len(split_now.test),
                                        n_groups if st.session_state["grouping"] != "per-example" else None)),
                 hide_index=True, key="cost_table")
advice = cost_advice(costs, n_train, len(split_now.test))
if advice and st.session_state["grouping"] == "per-example":
    st.warning(advice)

method_class = METHODS[st.session_state["method"]]
defaults = method_class.Options()
with st.expander("Advanced options"):
    st.caption(f"{method_class.description}. Empty damping means the method's data-driven default.")
    options = {}
    columns = st.columns(3)
    shown = [f for f in dataclasses.fields(defaults) if f.name not in HIDDEN_OPTIONS]
    for index, option in enumerate(shown):
        column, value = columns[index % 3], getattr(defaults, option.name)
        if option.name == "parameters" and split.train.is_text:
            value = "last-1"  # a text model's full gradient is too big: its last layer and head
        widget_key = f"option:{st.session_state['method']}:{option.name}"
        if isinstance(value, bool):
            options[option.name] = column.checkbox(option.name, value=value, key=widget_key)
        elif isinstance(value, int):
            options[option.name] = column.number_input(option.name, value=value, step=1, key=widget_key)
        elif isinstance(value, float) or value is None:
            # An optional option's type is in its annotation ("int | None"); empty text is None.
            parse = next((kind for name, kind in (("int", int), ("float", float)) if name in str(option.type)), str)
            text = column.text_input(option.name, value="" if value is None else f"{value:g}", key=widget_key)
            try:
                options[option.name] = parse(text) if text.strip() else None
            except ValueError:
                column.error(escape(f"{option.name}: {text!r} is not {'a whole number' if parse is int else 'a number'}"))
                options[option.name] = value
        elif isinstance(value, str):
            options[option.name] = column.text_input(option.name, value=value, key=widget_key)
    changed = {name: value for name, value in options.items() if value != getattr(defaults, name)}
    st.caption("parameters: all, head, last-K (a text model's last K encoder layers and its head) or lora.")
    st.caption("Where the job runs. Ray shards the training side over a cluster's workers; the scores "
               "and the cache entry are the same as a local run's.")
    left, right = st.columns([1, 2])
    left.selectbox("Executor", list(EXECUTORS), key="executor",
                   help="\n\n".join(f"**{name}**: {cls.description}" for name, cls in EXECUTORS.items()))
    ray_address = right.text_input("Ray address", key="ray_address", disabled=st.session_state["executor"] != "ray",
                                   placeholder="empty: a local Ray for the job; 'auto': the cluster `ray start` made")

if st.button("Compute", type="primary"):
    state.submit_request("attribute", lambda: AttributionRequest(
        data=st.session_state["data"], model=st.session_state["model"], method=st.session_state["method"],
        grouping=st.session_state["grouping"],
        n_groups=n_groups,
        test_size=None, method_options=changed, executor=st.session_state["executor"],
        ray_address=(ray_address.strip() or None) if st.session_state["executor"] == "ray" else None), slot="attribute")

run = state.show_job("attribute", "Attribution")
if run is not None:
    st.session_state["result_key"] = run.key
    summary = run.summary
    columns = st.columns(4)
    columns[0].metric("Groups", summary.get("n_groups"))
    columns[1].metric("Test points scored", summary.get("n_test"))
    columns[2].metric("Attribution time", f"{summary.get('seconds', 0):.2f} s")
    score, score_name = summary.get("model_test_score", 0.0), summary.get("model_score_name", "accuracy")
    columns[3].metric(f"Model test {score_name}", f"{score:.1%}" if score_name == "accuracy" else f"{score:.3f}")
    sizes = summary.get("group_sizes")
    if sizes:
        st.caption(f"Group sizes: largest {sizes['largest']}, median {sizes['median']:g}, smallest "
                   f"{sizes['smallest']}, {sizes['singletons']} singleton{'s' if sizes['singletons'] != 1 else ''}.")
    if summary.get("group_size_warning"):
        st.warning(f"This grouping is lopsided: {summary['group_size_warning']}.")
    st.page_link("pages/2_Explore.py", label="See the groups on the map", icon=":material/scatter_plot:")

st.subheader("Finished runs")
runs = state.finished_runs("attribute")
if not runs:
    st.write("No finished runs for this data set and model yet: press **Compute**.")
else:
    table = pd.DataFrame([{
        "method": run.params.get("method"), "grouping": run.params.get("grouping"),
        "groups": run.summary.get("n_groups"), "test points": run.summary.get("n_test"),
        "attribution s": run.summary.get("seconds"), "job s": round(run.seconds or 0, 2),
        "options": run.params.get("method_options") or "", "finished": time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(run.finished or run.created)), "key": run.key,
    } for run in runs])
    st.dataframe(table, hide_index=True, key="runs_table")
    labels = {run.key: f"{run.params.get('method')} / {run.params.get('grouping')} / K={run.summary.get('n_groups')} "
                       f"({run.key[:8]})" for run in runs}
    if st.session_state.get("result_key") not in labels:
        st.session_state["result_key"] = runs[0].key
    st.session_state["pick_run"] = st.session_state["result_key"]
    st.selectbox("Run shown on the Explore page", list(labels), format_func=labels.get, key="pick_run",
                 on_change=lambda: st.session_state.update(result_key=st.session_state["pick_run"]))
