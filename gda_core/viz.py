"""Plotly figure builders. Plain functions returning figures, testable without Streamlit."""

from __future__ import annotations

import numpy as np
import plotly.express as px
import plotly.graph_objects as go

from .data import Dataset

SIGN_NOTE = ("A group is a set of training points scored together. Positive score: up-weighting "
             "the group lowers this test point's loss (it helps); negative: it hurts.")


def image_grid_figure(images: np.ndarray, titles: list[str], columns: int = 8) -> go.Figure:
    """Small grey-scale images side by side (e.g. digits), one title each."""
    images = np.asarray(images, dtype=float)
    figure = px.imshow(images, facet_col=0, facet_col_wrap=min(columns, len(images)),
                       binary_string=False, color_continuous_scale="gray_r", aspect="equal")
    for annotation, title in zip(figure.layout.annotations, titles):
        annotation.text = title
    figure.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    figure.update_layout(coloraxis_showscale=False, margin=dict(l=0, r=0, t=30, b=0),
                         height=120 * int(np.ceil(len(images) / columns)) + 40)
    return figure


def class_count_figure(data: Dataset) -> go.Figure:
    counts = np.bincount(data.labels.cpu().numpy(), minlength=data.n_classes)
    figure = go.Figure(go.Bar(x=data.class_names, y=counts))
    figure.update_layout(title="Training points per class", xaxis_title="class", yaxis_title="points",
                         height=300, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def group_scores_figure(rows: list[dict], title: str) -> go.Figure:
    """Horizontal bars of group scores (rows from :func:`gda_core.engine.top_groups`)."""
    labels = [f"group {row['group']} ({row['size']} pts, mostly '{row['majority_class']}')" for row in rows]
    scores = [row["score"] for row in rows]
    colours = ["#2a9d8f" if s > 0 else "#e76f51" for s in scores]
    figure = go.Figure(go.Bar(x=scores, y=labels, orientation="h", marker_color=colours))
    figure.update_layout(title=title, xaxis_title="score (positive = helps)", yaxis=dict(autorange="reversed"),
                         height=60 + 28 * len(rows), margin=dict(l=10, r=10, t=40, b=10))
    return figure


GOLD_NAMES = {"lds": "LDS (subset retraining)", "further-training": "further training (FiMO)",
              "leave-group-out": "leave-group-out retraining"}
GROUPING_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "cross", "hexagon", "pentagon"]


def fidelity_speed_figure(sweep: dict, metric: str | None = None) -> go.Figure:
    """Fidelity against wall time (log axis) from :func:`gda_core.evaluate.run_sweep`: one line
    per method (its points ordered by time), one marker shape per grouping, K on hover."""
    metric = metric or sweep["metric"]
    points = [p for p in sweep["points"] if p.get(metric) is not None and np.isfinite(p.get(metric))]
    groupings = sorted({p["grouping"] for p in sweep["points"]})
    symbols = {g: GROUPING_SYMBOLS[i % len(GROUPING_SYMBOLS)] for i, g in enumerate(groupings)}
    figure = go.Figure()
    for method in dict.fromkeys(p["method"] for p in points):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["seconds"])
        figure.add_trace(go.Scatter(
            x=[p["seconds"] for p in mine], y=[p[metric] for p in mine], name=method, mode="lines+markers",
            marker=dict(symbol=[symbols[p["grouping"]] for p in mine], size=10),
            customdata=[[p["grouping"], p["n_groups"]] for p in mine],
            hovertemplate=(f"{method}<br>%{{customdata[0]}}, K=%{{customdata[1]}}<br>"
                           f"{metric} %{{y:.3f}}<br>%{{x:.3g}} s<extra></extra>"),
        ))
    for grouping, symbol in symbols.items():  # a legend entry per grouping's marker shape
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"grouping: {grouping}",
                                    marker=dict(symbol=symbol, size=10, color="grey")))
    gold = GOLD_NAMES.get(sweep.get("gold", ""), sweep.get("gold", ""))
    figure.update_layout(
        title=f"Fidelity vs speed on {sweep['config']['data']} / {sweep['config']['model']} (gold: {gold})",
        xaxis=dict(title="attribution time (s, log scale)", type="log"),
        yaxis=dict(title=metric), height=480, margin=dict(l=10, r=10, t=50, b=10),
    )
    return figure
