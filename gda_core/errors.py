"""The project's own error: one line a person can act on, never a traceback."""


class GDAError(ValueError):
    """Bad input or an impossible request. ``str(error)`` is a single line for the user."""


def unexpected_reason(error: BaseException, what: str) -> str:
    """One line for an error that validation should have caught: the page shows this instead
    of a traceback (and the user can report it)."""
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{what} failed unexpectedly ({type(error).__name__}: {first}); please report this as a bug"
