"""Fidelity: how close each method x grouping x K comes to the gold standard, against its time."""

from __future__ import annotations

import dataclasses
import time

import pandas as pd
import streamlit as st
import torch

from gda_app import state
from gda_app.markup import escape
from gda_core.evaluation.sweeps import estimate_sweep_seconds, format_duration
from gda_core.requests import GoldConfig, SweepConfig
from gda_core.viz.figures import GOLD_NAMES, METRIC_NAMES, fidelity_speed_figure

#: a sweep small enough for a demo (its time is estimated from the sizes); `gda fidelity` runs big ones
QUICK_SWEEP = dict(methods=("grad-dot", "if-arnoldi"), groupings=("random", "grad-kmeans"), group_counts=(15,),
                   per_example=True, test_size=50, gold=GoldConfig(kind="lds", n_subsets=20))

state.page_setup("Fidelity")
st.title("Fidelity against speed")
data, arch = st.session_state["data"], st.session_state["model"]
st.caption("Each point is one method on one grouping and group count: its agreement with a gold standard "
           "against the seconds it took. Up and to the left is better. LDS is point-level: every grouping and K "
           "is scored against the same models retrained on random halves of the training *points*, each group's "
           "score spread over its members in equal shares (per-example runs are the case of groups of one). "
           "The group-level LDS (retraining on random halves of the cell's own groups) is in the table beside "
           "the group sizes: one giant group plus singletons is easy to predict at group level. Cosine: "
           "against further training of the final model, per group. *Kept of per-example*: the share of the "
           "method's own per-example scores that the equal shares keep: agreement with the per-example run, with "
           "no gold needed, not fidelity (the largest scores dominate it).")

split, model = state.inputs()
config = SweepConfig(data=data, model=arch, **QUICK_SWEEP)
estimate = estimate_sweep_seconds(config, model, len(split.train), torch.get_num_threads())
if st.button("Run a small sweep", help=f"Grad-Dot and Arnoldi influence, random and gradient K-means groups, "
             f"K = 15 and per-example, against LDS with 20 subsets, on 50 test points. Roughly "
             f"{format_duration(estimate)} here ({torch.get_num_threads()} torch threads; an estimate from the "
             f"sizes, within a factor of two or so)."):
    state.submit("fidelity", dataclasses.asdict(config), slot="fidelity")
st.caption(f"The small sweep takes roughly {format_duration(estimate)} on this machine (estimated from the "
           f"data and model sizes: its LDS gold standard trains 20 subset models per grouping, and the "
           f"point-level ensemble is the per-example one).")
state.show_job("fidelity", "Sweep")

sweeps = state.finished_runs("fidelity")
if not sweeps:
    st.info(f"No sweep for {escape(state.describe(data))} / {escape(state.describe(arch))} yet. Press **Run a small sweep**, or "
            f"run a bigger one from the command line: `gda fidelity --data {data} --model {arch} ...` "
            f"(it lands in the same cache).")
    st.stop()

labels = {run.key: (f"{', '.join(run.params['methods'])} | {', '.join(run.params['groupings'])} | gold "
                    f"{GOLD_NAMES.get(run.params['gold']['kind'], run.params['gold']['kind'])} | "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(run.finished or run.created))}")
          for run in sweeps}
chosen = st.selectbox("Sweep", list(labels), format_func=labels.get, key="sweep")
sweep = next(run for run in sweeps if run.key == chosen).summary
st.plotly_chart(fidelity_speed_figure(sweep), key="fidelity_figure")
st.caption(f"Gold standard: {GOLD_NAMES.get(sweep['gold'], sweep['gold'])}; {sweep['n_train']} training points, "
           f"{sweep['n_test']} test points; timings with {sweep.get('torch_threads')} torch threads.")
metric = sweep["metric"]
if metric == "lds":
    st.caption("This sweep predates the point-level yardstick: its LDS is group-level (each grouping against its "
               "own subsets of groups), so groupings are not on one scale. Run it again to score them on points.")
column = METRIC_NAMES.get(metric, metric)
table = pd.DataFrame([{
    "method": p["method"], "grouping": p["grouping"], "groups": p["n_groups"], column: p.get(metric),
    "standard error": p.get(f"{metric}_se"),
    **({"group-level LDS": p.get("group_lds")} if metric == "point_lds" else {}),
    "kept of per-example": p.get("kept_variance"),
    **{f"{size} group" if size != "singletons" else size: p.get("group_sizes", {}).get(size)
       for size in ("largest", "median", "smallest", "singletons")},
    "method s": p["seconds"], "grouping s": p["grouping_seconds"], "peak MB": p.get("peak_mb"),
} for p in sweep["points"]])
st.dataframe(table.sort_values([column], ascending=False), hide_index=True, key="fidelity_table")
