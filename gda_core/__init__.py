"""GDA Explorer's engine: group and final-model-only training data attribution.

The public entry points are :func:`gda_core.engine.attribute` (one request, end to end),
the method registry in :mod:`gda_core.methods` and the groupings in :mod:`gda_core.grouping`.
"""

__version__ = "0.1.0"

from .errors import GDAError  # noqa: E402

__all__ = ["GDAError", "__version__"]
