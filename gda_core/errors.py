"""The project's own error: one line a person can act on, never a traceback."""


class GDAError(ValueError):
    """Bad input or an impossible request. ``str(error)`` is a single line for the user."""
