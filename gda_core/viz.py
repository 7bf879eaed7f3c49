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
