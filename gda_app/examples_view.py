"""Training and test points shown to a person: images as a grid, sentences as text rows. The
pages call :func:`show_points` wherever they show points, whatever the data."""

from __future__ import annotations

import numpy as np

from gda_core.inputs.datasets import Dataset
from gda_core.viz.figures import image_grid_figure


def show_points(container, data: Dataset, rows: list[int] | np.ndarray, captions: list[str], *, key: str,
                columns: int = 16, extra: dict[str, list] | None = None) -> bool:
    """Show ``rows`` of ``data`` in ``container``: an image grid (``captions`` under each
    image), or a table of their sentences beside their captions and ``extra`` columns. False
    when the data has neither images nor texts (nothing shown)."""
    rows = [int(r) for r in rows]
    if data.images is not None:
        container.plotly_chart(image_grid_figure(data.images[rows], captions, columns=min(columns, len(rows))),
                               key=key)
        return True
    if data.texts is not None:
        table = {"point": captions, "text": [str(data.texts[r]) for r in rows], **(extra or {})}
        container.dataframe(table, hide_index=True, key=key, width="stretch")
        return True
    return False


def show_sentence(container, data: Dataset, row: int, title: str) -> None:
    """One point's sentence, quoted, under a bold title (text data only)."""
    if data.texts is not None:
        text = str(data.texts[int(row)]).replace("\n", " ")
        container.markdown(f"**{title}**")
        container.text(text)
