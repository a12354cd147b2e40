"""One exception type for every user-facing failure.

The CLI turns a `SuperweightError` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback. Library code raises it for bad input (missing files, unknown architectures,
out-of-range coordinates) with a message that says what to do next.
"""


class SuperweightError(Exception):
    """A problem with the user's input or environment, explained in one line."""
