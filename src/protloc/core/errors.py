"""User-facing errors.

protloc raises built-in exception types (scikit-learn style) so callers can catch them
without importing protloc; :class:`InputError` is a ``ValueError`` whose message always says
what was expected, what arrived, and how to fix it. The CLI turns these into one clear line
and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input (file, CSV row, option). The message is meant for the user."""


class RunFolderError(InputError):
    """A run folder is missing, incomplete, or incompatible with the input."""


def fmt_problem(what: str, *, expected: str, got: str, fix: str) -> str:
    """Build the canonical three-part message: what is wrong, expected vs got, how to fix.

    Examples
    --------
    >>> fmt_problem("train.csv row 3", expected="integer class ids", got="'x'",
    ...             fix="use ids 0-9 separated by spaces")
    "train.csv row 3: expected integer class ids, got 'x'. Fix: use ids 0-9 separated by spaces."
    """
    return f"{what}: expected {expected}, got {got}. Fix: {fix}."
