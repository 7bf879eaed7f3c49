"""What a selection event of the Explore map means, as Streamlit delivers it.

``st.plotly_chart(..., on_select="rerun")`` keeps its last event in ``st.session_state[key]``
as ``{"selection": {"points": [{"curve_number", "point_index", ...}], "point_indices": [...],
"box": [...], "lasso": [...]}}`` and delivers it again on every rerun, so each event is applied
once: :func:`apply_map_event` remembers the last one it applied."""

from __future__ import annotations

from collections.abc import MutableMapping

import numpy as np


def apply_map_event(event: dict | None, session: MutableMapping, *, group_labels: np.ndarray,
                    test_trace: int | None) -> None:
    """Update the choices in ``session`` from the map's event: a box or lasso over training
    points sets ``selected_points`` (the first trace holds the training points, in order);
    one clicked test point sets ``test_index``; one clicked training point drills into its
    group (``drill_group``)."""
    selection = (event or {}).get("selection") or {}
    points = selection.get("points") or []
    training = sorted({int(p["point_index"]) for p in points if p.get("curve_number") == 0})
    if selection.get("box") or selection.get("lasso"):
        if training != session.get("_applied_selection"):
            session["_applied_selection"] = training
            session["selected_points"] = training
        return
    if len(points) != 1:
        return
    click = (points[0].get("curve_number"), points[0].get("point_index"))
    if click == session.get("_applied_click"):
        return
    session["_applied_click"] = click
    if click[0] == test_trace:
        session["test_index"] = int(click[1])
    elif click[0] == 0:
        session["drill_group"] = int(group_labels[int(click[1])])
