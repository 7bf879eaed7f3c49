"""Plotly figure builders. Plain functions returning figures, testable without Streamlit."""

from __future__ import annotations

import html

import numpy as np
import plotly.express as px
import plotly.graph_objects as go

from ..attribution.grouping import GIANT_GROUP_SHARE
from ..errors import GDAError
from ..inputs.datasets import Dataset, label_texts

SIGN_NOTE = ("A group is a set of training points scored together. Positive score: up-weighting "
             "the group lowers this test point's loss (it helps); negative: it hurts.")


def image_grid_figure(images: np.ndarray, titles: list[str], columns: int = 8) -> go.Figure:
    """Small images side by side, one title each: ``images`` is (n, channels, height, width)
    (or (n, height, width) for grey); grey ones are drawn dark on light (as digits are
    written), RGB ones in their colours, scaled from the images' own range to 0-255."""
    images = np.asarray(images, dtype=float)
    if images.ndim == 4 and images.shape[1] == 3:
        low, high = images.min(), images.max()
        rgb = (images - low) / (high - low if high > low else 1.0) * 255.0
        figure = px.imshow(rgb.transpose(0, 2, 3, 1).astype(np.uint8), facet_col=0,
                           facet_col_wrap=min(columns, len(images)), aspect="equal")
    else:
        grey = images[:, 0] if images.ndim == 4 else images
        figure = px.imshow(grey, facet_col=0, facet_col_wrap=min(columns, len(images)),
                           binary_string=False, color_continuous_scale="gray_r", aspect="equal")
    # Plotly lists the facet titles bottom row first while image 0 sits top left: match each
    # title to its image by the facet index it names ("facet_col=3"), not by position.
    for annotation in figure.layout.annotations:
        # Plotly reads <a href>, <img>-like tags in text: titles hold class names, shown as text
        annotation.text = html.escape(titles[int(annotation.text.rsplit("=", 1)[-1])], quote=False)
    figure.update_xaxes(showticklabels=False).update_yaxes(showticklabels=False)
    figure.update_layout(coloraxis_showscale=False, margin=dict(l=0, r=0, t=30, b=0),
                         height=120 * int(np.ceil(len(images) / columns)) + 40)
    return figure


def class_count_figure(data: Dataset) -> go.Figure:
    """Training points per class, or a histogram of the targets for regression data."""
    if not data.class_names:
        figure = go.Figure(go.Histogram(x=data.labels.cpu().numpy(), nbinsx=30))
        figure.update_layout(title="Training targets (standardised)", xaxis_title="target", yaxis_title="points",
                             height=300, margin=dict(l=10, r=10, t=40, b=10))
        return figure
    counts = np.bincount(data.labels.cpu().numpy(), minlength=data.n_classes)
    figure = go.Figure(go.Bar(x=data.class_names, y=counts))
    figure.update_layout(title="Training points per class", xaxis_title="class", yaxis_title="points",
                         height=300, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def group_scores_figure(rows: list[dict], title: str) -> go.Figure:
    """Horizontal bars of group scores (rows from :func:`gda_core.attribution.pipeline.top_groups`);
    each bar carries its group number as ``customdata`` (a click on it drills into the group)."""
    labels = [f"group {row['group']} ({row['size']} pts, {row['description']})" for row in rows]
    scores = [row["score"] for row in rows]
    colours = ["#2a9d8f" if s > 0 else "#e76f51" for s in scores]
    figure = go.Figure(go.Bar(x=scores, y=labels, orientation="h", marker_color=colours,
                              customdata=[row["group"] for row in rows],
                              hovertemplate="%{y}<br>score %{x:.3g}<br>click to drill into it<extra></extra>"))
    figure.update_layout(title=title, xaxis_title="score (positive = helps)", yaxis=dict(autorange="reversed"),
                         height=60 + 28 * len(rows), margin=dict(l=10, r=10, t=40, b=10))
    return figure


GOLD_NAMES = {"lds": "LDS (subset retraining)", "further-training": "further training (FiMO)",
              "leave-group-out": "leave-group-out retraining"}
#: axis names of the sweeps' metrics ("lds" is the group-level LDS of sweeps made before the
#: point-level yardstick)
METRIC_NAMES = {"point_lds": "point-level LDS", "group_lds": "group-level LDS", "lds": "group-level LDS",
                "cosine": "cosine", "spearman": "Spearman"}
GROUPING_SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "star", "cross", "hexagon", "pentagon"]


def fidelity_speed_figure(sweep: dict, metric: str | None = None) -> go.Figure:
    """Fidelity against wall time (log axis) from :func:`gda_core.evaluation.sweeps.run_sweep`: one line
    per method (its points ordered by time), one marker shape per grouping, K on hover. LDS
    sweeps plot the point-level LDS (every grouping and K against one ensemble on subsets of
    points); the group sizes and group-level LDS are on hover."""
    metric = metric or sweep["metric"]
    name = METRIC_NAMES.get(metric, metric)
    points = [p for p in sweep["points"] if p.get(metric) is not None and np.isfinite(p.get(metric))]
    groupings = sorted({p["grouping"] for p in sweep["points"]})
    symbols = {g: GROUPING_SYMBOLS[i % len(GROUPING_SYMBOLS)] for i, g in enumerate(groupings)}
    figure = go.Figure()
    for method in dict.fromkeys(p["method"] for p in points):
        mine = sorted((p for p in points if p["method"] == method), key=lambda p: p["seconds"])
        figure.add_trace(go.Scatter(
            x=[p["seconds"] for p in mine], y=[p[metric] for p in mine], name=method, mode="lines+markers",
            marker=dict(symbol=[symbols[p["grouping"]] for p in mine], size=10),
            customdata=[[p["grouping"], p["n_groups"], _sizes_text(p)] for p in mine],
            hovertemplate=(f"{method}<br>%{{customdata[0]}}, K=%{{customdata[1]}}%{{customdata[2]}}<br>"
                           f"{name} %{{y:.3f}}<br>%{{x:.3g}} s<extra></extra>"),
        ))
    for grouping, symbol in symbols.items():  # a legend entry per grouping's marker shape
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"grouping: {grouping}",
                                    marker=dict(symbol=symbol, size=10, color="grey")))
    gold = GOLD_NAMES.get(sweep.get("gold", ""), sweep.get("gold", ""))
    figure.update_layout(
        title=f"Fidelity vs speed on {sweep['config']['data']} / {sweep['config']['model']} (gold: {gold})",
        xaxis=dict(title="attribution time (s, log scale)", type="log"),
        yaxis=dict(title=name), height=480, margin=dict(l=10, r=10, t=50, b=10),
    )
    return figure


def _sizes_text(point: dict) -> str:
    """Hover text of a sweep point's group sizes and group-level LDS (empty without them)."""
    sizes = point.get("group_sizes")
    if not sizes:
        return ""
    text = (f"<br>group sizes {sizes['largest']} / {sizes['median']:g} / {sizes['smallest']} (largest / median / "
            f"smallest), {sizes['singletons']} singletons")
    return text + (f"<br>group-level LDS {point['group_lds']:.3f}" if point.get("group_lds") is not None else "")


GROUP_PALETTE = px.colors.qualitative.Dark24 + px.colors.qualitative.Light24
#: what the map can be coloured by; the last three need per-point arrays the page passes in
MAP_COLOURS = ("group", "class", "score", "self-influence", "loss", "review")
#: red (hurts) to blue (helps) through grey, not white: most groups score near zero, and
#: white points vanish on the white background
SCORE_SCALE = [[0.0, "#b2182b"], [0.25, "#ef8a62"], [0.5, "#c8c8c8"], [0.75, "#67a9cf"], [1.0, "#2166ac"]]
#: above this many points the map draws with WebGL (plotly's Scattergl), which stays
#: responsive at 100k points; below it, SVG (crisper, and shown where WebGL is missing)
WEBGL_POINTS = 5000
#: how the review colouring shows each point's state (``review_states`` values)
REVIEW_COLOURS = {"": "#d0d0d0", "flagged": "#f4a261", "kept": "#2a9d8f", "relabelled": "#e63946",
                  "skipped": "#8d99ae"}


def _palette_scale(palette: list[str]) -> list[list]:
    """A stepwise colourscale: value i (of 0..len-1) is drawn in palette[i]."""
    steps = []
    for index, colour in enumerate(palette):
        steps += [[index / len(palette), colour], [(index + 1) / len(palette), colour]]
    return steps


def _category_marker(categories: np.ndarray, palette: list[str]) -> dict:
    """Numbers, not one colour string per point: 100k points stay a compact array."""
    return dict(color=np.asarray(categories) % len(palette), colorscale=_palette_scale(palette),
                cmin=-0.5 / len(palette), cmax=len(palette) - 1 + 0.5 / len(palette), showscale=False)


def _continuous_marker(values: np.ndarray, title: str, *, diverging: bool = False) -> dict:
    values = np.asarray(values, dtype=float)
    if diverging:
        limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
        return dict(color=values, colorscale=SCORE_SCALE, cmin=-(limit or 1.0), cmax=limit or 1.0,
                    colorbar=dict(title=title, thickness=12))
    return dict(color=values, colorscale="Viridis", colorbar=dict(title=title, thickness=12))


def embedding_map_figure(train_xy: np.ndarray, train_labels: np.ndarray, class_names: list[str],
                         group_labels: np.ndarray | None = None, *, group_scores: np.ndarray | None = None,
                         helpful: list[int] = (), harmful: list[int] = (), test_xy: np.ndarray | None = None,
                         test_labels: np.ndarray | None = None, selected_test: int | None = None,
                         colour: str = "group", point_values: dict[str, np.ndarray] | None = None,
                         review_states: np.ndarray | None = None,
                         drill: tuple[np.ndarray, np.ndarray] | None = None,
                         title: str = "Training points") -> go.Figure:
    """The training points in 2-D, coloured by ``colour``:

    - "group" (by label without groups); "class" (a colour per class, or the target's value
      on a continuous scale for regression data, which has no ``class_names``);
    - "score": each point's group score for the chosen test point, on a diverging scale;
    - "self-influence" / "loss": ``point_values[colour]``, one value per training point;
    - "review": ``review_states`` (one of :data:`REVIEW_COLOURS` per point).

    Hover shows index, label, group and its size and, with ``group_scores`` (one per group,
    for the chosen test point), the group's score. Members of the ``helpful`` / ``harmful``
    groups get green / red rings, except groups holding more than a quarter of the points
    (a ring over most of the map says nothing). ``drill = (members, scores)`` draws one
    group's members on top, coloured by their own scores for the test point. Test points are
    grey crosses (a click on one selects it) and the chosen one a star. The first trace always
    holds exactly the training points, in order; above :data:`WEBGL_POINTS` it is WebGL."""
    if colour not in MAP_COLOURS:
        raise GDAError(f"colour must be one of {', '.join(MAP_COLOURS)}, got {colour!r}")
    train_xy, train_labels = np.asarray(train_xy), np.asarray(train_labels)
    n_points = len(train_xy)
    scatter = go.Scattergl if n_points > WEBGL_POINTS else go.Scatter
    regression = not class_names
    if group_labels is None and colour == "group":
        colour = "class"
    colour_by = (np.asarray(group_labels, dtype=np.int64) if group_labels is not None
                 else np.zeros(n_points, dtype=np.int64) if regression else train_labels.astype(np.int64))
    group_sizes = np.bincount(colour_by, minlength=int(colour_by.max()) + 1 if n_points else 0)
    point_scores = (np.asarray(group_scores, dtype=float)[colour_by]
                    if group_scores is not None and group_labels is not None else np.full(n_points, np.nan))
    values = dict(point_values or {})
    if colour in ("self-influence", "loss") and colour not in values:
        raise GDAError(f"colouring by {colour} needs one {colour} value per training point")
    if colour == "review" and review_states is None:
        raise GDAError("colouring by review needs the review state of every training point")
    # Numeric hover data (compact for 100k points); the label text rides in ``text``.
    # float32 halves what every rerun ships to the browser (6 MB at 100k points in float64)
    custom = np.column_stack([np.arange(n_points), colour_by, group_sizes[colour_by], point_scores]).astype(np.float32)
    score_line = "<br>group score %{customdata[3]:.3g}" if group_scores is not None else ""
    value_line = ""
    if colour == "score" and group_scores is not None and group_labels is not None:
        marker = _continuous_marker(point_scores, "group score", diverging=True)
    elif colour in ("self-influence", "loss"):
        marker = _continuous_marker(values[colour], colour)
        custom = np.column_stack([custom, np.asarray(values[colour], dtype=np.float32)])
        value_line = f"<br>{colour} %{{customdata[4]:.3g}}"
    elif colour == "review":
        states = np.asarray(review_states, dtype=object)
        unknown = sorted(set(states.tolist()) - set(REVIEW_COLOURS))
        if unknown:
            raise GDAError(f"unknown review state {unknown[0]!r}; known: {', '.join(map(repr, REVIEW_COLOURS))}")
        order = list(REVIEW_COLOURS)
        marker = _category_marker(np.array([order.index(s) for s in states]), list(REVIEW_COLOURS.values()))
    elif colour == "class" and regression:
        marker = _continuous_marker(train_labels, "target")
    else:
        marker = _category_marker(train_labels if colour == "class" else colour_by, GROUP_PALETTE)
    marker.update(size=6 if n_points <= WEBGL_POINTS else 3, opacity=0.8)
    train_xy = train_xy.astype(np.float32)
    figure = go.Figure(scatter(
        x=train_xy[:, 0], y=train_xy[:, 1], mode="markers", name="training points", marker=marker,
        customdata=custom, text=label_texts(train_labels, class_names),
        hovertemplate=("train #%{customdata[0]}<br>label %{text}<br>group %{customdata[1]} "
                       "(%{customdata[2]} points)" + score_line + value_line + "<extra></extra>"),
    ))
    giant = np.flatnonzero(group_sizes > n_points * GIANT_GROUP_SHARE) if group_labels is not None else []
    for groups, ring, name in ((helpful, "#2a9d8f", "most helpful groups"), (harmful, "#e63946", "most harmful groups")):
        ringed = [g for g in groups if g not in set(giant)]
        members = np.flatnonzero(np.isin(colour_by, ringed)) if ringed and group_labels is not None else []
        if len(members):
            figure.add_trace(scatter(
                x=train_xy[members, 0], y=train_xy[members, 1], mode="markers", name=name, hoverinfo="skip",
                marker=dict(size=11, color="rgba(0,0,0,0)", line=dict(color=ring, width=2)),
            ))
    if drill is not None:
        members, member_scores = np.asarray(drill[0], dtype=np.int64), np.asarray(drill[1], dtype=float)
        marker = _continuous_marker(member_scores, "member score", diverging=True)
        marker.update(size=12, line=dict(color="black", width=1))
        # two colour bars, one above the other: the map's own (if any) and the members'
        marker["colorbar"].update(len=0.45, y=0.22)
        if "colorbar" in figure.data[0].marker:
            figure.data[0].marker.colorbar.update(len=0.45, y=0.78)
        figure.add_trace(scatter(
            x=train_xy[members, 0], y=train_xy[members, 1], mode="markers", name="members of the chosen group",
            marker=marker, customdata=np.column_stack([members, member_scores]).astype(float),
            hovertemplate="train #%{customdata[0]}<br>its own score %{customdata[1]:.3g}<extra></extra>",
        ))
    if test_xy is not None:
        test_xy = np.asarray(test_xy)
        test_names = (label_texts(test_labels, class_names) if test_labels is not None
                      else np.full(len(test_xy), "?", dtype=object))
        figure.add_trace(go.Scatter(
            x=test_xy[:, 0], y=test_xy[:, 1], mode="markers", name="test points (click to choose)",
            marker=dict(size=7, symbol="x-thin", line=dict(width=1, color="grey"), color="grey"), opacity=0.6,
            customdata=np.arange(len(test_xy)), text=test_names,
            hovertemplate="test #%{customdata}<br>label %{text}<extra></extra>",
        ))
        if selected_test is not None:
            figure.add_trace(go.Scatter(
                x=[test_xy[selected_test, 0]], y=[test_xy[selected_test, 1]], mode="markers",
                name=f"chosen test point #{selected_test}", hoverinfo="skip",
                marker=dict(size=18, symbol="star", color="gold", line=dict(color="black", width=1)),
            ))
    figure.update_layout(title=title, height=560, margin=dict(l=10, r=10, t=40, b=10),
                         xaxis=dict(showticklabels=False, title=""), yaxis=dict(showticklabels=False, title=""),
                         legend=dict(orientation="h", yanchor="bottom", y=-0.08), clickmode="event+select")
    return figure


# --------------------------------------------------------------------- noisy labels, pruning
RANKING_COLOURS = {"influence": "#1d3557", "loss": "#e76f51", "confident-learning": "#2a9d8f", "random": "#999999"}


def noisy_detection_figure(evaluation: dict) -> go.Figure:
    """Fraction of flipped labels found against the fraction of the training set inspected,
    one line per ranking (from :func:`gda_core.evaluation.noisy.run_noisy`), with the area in the legend."""
    figure = go.Figure()
    for name, ranking in evaluation["rankings"].items():
        figure.add_trace(go.Scatter(
            x=ranking["inspected"], y=ranking["recall"], mode="lines",
            name=f"{ranking['label']} (AUC {ranking['auc']:.3f}, {ranking['seconds']:.1f} s)",
            line=dict(color=RANKING_COLOURS.get(name), dash="dash" if name == "random" else "solid"),
            hovertemplate="inspected %{x:.0%}<br>found %{y:.1%}<extra></extra>",
        ))
    config = evaluation["config"]
    figure.update_layout(
        title=(f"Finding {evaluation['n_flipped']} flipped labels ({config['flip']:.0%}) on "
               f"{config['data']} / {config['model']}"),
        xaxis=dict(title="fraction of the training set inspected", tickformat=".0%", range=[0, 1]),
        yaxis=dict(title="fraction of flipped labels found", tickformat=".0%", range=[0, 1.02]),
        height=460, margin=dict(l=10, r=10, t=50, b=10), legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.98),
    )
    return figure


def pruning_figure(pruning: dict) -> go.Figure:
    """Test accuracy against the fraction of training points removed (from
    :func:`gda_core.evaluation.pruning.run_pruning`): lowest-value groups first versus random groups,
    mean over seeds with standard-error bars; the full-data accuracy at 0."""
    fractions = [0.0] + list(pruning["fractions"])
    full = pruning["full_accuracy"]
    figure = go.Figure()
    for key, label, colour in (("accuracy", "lowest-value groups removed", "#1d3557"),
                               ("random_accuracy", "random groups removed", "#999999")):
        points = [full] + pruning[key]
        figure.add_trace(go.Scatter(
            x=fractions, y=[p["mean"] for p in points], name=label, mode="lines+markers",
            error_y=dict(type="data", array=[p["se"] for p in points], visible=True), line=dict(color=colour),
            hovertemplate="removed %{x:.0%}<br>accuracy %{y:.1%}<extra></extra>",
        ))
    config = pruning["config"]
    figure.update_layout(
        title=(f"Pruning {config['data']} / {config['model']} by {config['method']} on {config['grouping']} "
               f"(K={pruning['n_groups']}), {config['seeds']} seed(s)"),
        xaxis=dict(title="fraction of training points removed", tickformat=".0%"),
        yaxis=dict(title="test accuracy", tickformat=".0%"), height=420, margin=dict(l=10, r=10, t=50, b=10),
    )
    return figure
