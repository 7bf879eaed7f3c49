"""Registries of named strategies: methods, groupings, executors and job kinds.

A base class registers each subclass that sets a ``name`` (kronfluence's and scikit-learn's
habit of strategies by name, via ``__init_subclass__``). The registries live here, below every
layer, so that requests can check a name without importing the layer that implements it: the
package's ``__init__`` imports the implementations, which fills them before any request is made.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import check_choice

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> class``, in registration order, with one message for an unknown name."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str, item: T) -> T:
        self[name] = item
        return item

    def check(self, name: object) -> None:
        """A one-line error naming the choices when ``name`` is not registered."""
        check_choice(self.kind, name, self)

    def get_checked(self, name: str) -> T:
        self.check(name)
        return self[name]


METHODS: Registry = Registry("method")
GROUPINGS: Registry = Registry("grouping")
EXECUTORS: Registry = Registry("executor")
JOB_KINDS: Registry = Registry("job kind")
