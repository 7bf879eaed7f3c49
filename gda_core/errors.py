"""The project's own error: one line a person can act on, never a traceback."""


class GDAError(ValueError):
    """Bad input or an impossible request. ``str(error)`` is a single line for the user."""


def first_line(error: BaseException, width: int = 200, default: str | None = None) -> str:
    """The first line of an exception's message, cut to ``width`` (``default``, or the
    exception's type name, when it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0][:width] if lines else (default if default is not None else type(error).__name__)


def unexpected_reason(error: BaseException, what: str) -> str:
    """One line for an error that validation should have caught: the page shows this instead
    of a traceback (and the user can report it)."""
    return (f"{what} failed unexpectedly ({type(error).__name__}: {first_line(error, default='')}); "
            f"please report this as a bug")


def check_choice(what: str, value: object, choices) -> None:
    """A one-line error naming the choices when ``value`` is not one of them."""
    if not isinstance(value, str) or value not in choices:
        raise GDAError(f"unknown {what} {value!r}; choose from: {', '.join(choices)}")
