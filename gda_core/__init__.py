"""GDA Explorer's engine: group and final-model-only training data attribution.

The public API: build an :class:`AttributionRequest` (validated on construction) and carry it
out with :func:`run_attribution`; or fit a method yourself, ``make_method(name, model)
.fit(train, groups).attribute(test)``, with groups from ``make_grouping(name, K).fit(train,
model.module)``. ``METHODS`` and ``GROUPINGS`` list what is registered; ``TASKS`` the tasks
(classification, regression) whose loss every part of the engine calls. Every user error is a
:class:`GDAError` whose message is one line.
"""

import logging  # noqa: I001 - the order below fills the registries before the requests

from .version import __version__
from .errors import GDAError
from .registry import GROUPINGS, METHODS
from .attribution.grouping import Groups, make_grouping
from .attribution.methods import AttributionMethod, make_method
from .attribution.pipeline import AttributionResult, run_attribution
from .requests import AttributionRequest
from .task import CLASSIFICATION, REGRESSION, TASKS, ClassificationTask, RegressionTask, Task, get_task

# A library's loggers stay silent unless the application configures logging: an internal
# failure is one line for the user, its traceback in the run's log (and in any handler set up).
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["AttributionMethod", "AttributionRequest", "AttributionResult", "CLASSIFICATION", "ClassificationTask",
           "GDAError", "GROUPINGS", "Groups", "METHODS", "REGRESSION", "RegressionTask", "TASKS", "Task",
           "get_task", "make_grouping", "make_method", "run_attribution", "__version__"]
