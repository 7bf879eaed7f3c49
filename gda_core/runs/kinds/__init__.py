"""The job kinds, one module each; importing this package registers them in
:data:`gda_core.registry.JOB_KINDS` (in the order the command line lists them)."""

from . import attribute, embed, fidelity, flag, members, noisy, points, prune  # noqa: F401
from .base import JobKind

__all__ = ["JobKind"]
