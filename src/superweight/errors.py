"""One exception type for every user-facing failure.

The CLI turns a `SuperweightError` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback. Library code raises it for bad input (missing files, unknown architectures,
out-of-range coordinates) with a message that says what to do next.
"""


class SuperweightError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def check_fields(settings, *, positive=(), fractions=(), counts=()) -> None:
    """Refuse a settings dataclass whose named fields are out of range, naming the flag
    (`min_output` -> `min-output`): `positive` > 0, `fractions` in (0, 1], `counts` whole numbers >= 1."""
    rules = ([(n, lambda v: v > 0, "positive") for n in positive]
             + [(n, lambda v: 0 < v <= 1, "in (0, 1]") for n in fractions]
             + [(n, lambda v: v >= 1, "at least 1") for n in counts])
    for name, ok, what in rules:
        value = getattr(settings, name)
        if not ok(value):
            raise SuperweightError(f"{name.replace('_', '-')} must be {what}, got {value}")
