"""GDA Explorer's engine: group and final-model-only training data attribution.

The public API: build an :class:`AttributionRequest` (validated on construction) and carry it
out with :func:`run_attribution`; or fit a method yourself, ``make_method(name, model)
.fit(train, groups).attribute(test)``, with groups from ``make_grouping(name, K).fit(train,
model.module)``. ``METHODS`` and ``GROUPINGS`` list what is registered; ``TASKS`` the tasks
(classification, regression) whose loss every part of the engine calls. Every user error is a
:class:`GDAError` whose message is one line.
"""

from .version import __version__  # noqa: I001
from .errors import GDAError
from .registry import GROUPINGS, METHODS
from .attribution.grouping import Groups, make_grouping
from .attribution.methods import AttributionMethod, make_method
from .attribution.pipeline import AttributionResult, run_attribution
from .requests import AttributionRequest
from .task import CLASSIFICATION, REGRESSION, TASKS, ClassificationTask, RegressionTask, Task, get_task

__all__ = ["AttributionMethod", "AttributionRequest", "AttributionResult", "CLASSIFICATION", "ClassificationTask",
           "GDAError", "GROUPINGS", "Groups", "METHODS", "REGRESSION", "RegressionTask", "TASKS", "Task",
           "get_task", "make_grouping", "make_method", "run_attribution", "__version__"]
