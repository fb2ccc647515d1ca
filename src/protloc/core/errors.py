"""User-facing errors.

protloc raises built-in exception types (scikit-learn style) so callers can catch them
without importing protloc; :class:`InputError` is a ``ValueError`` that carries the parts of
the problem as fields -- ``what`` is wrong, what was ``expected``, what was ``got`` and how to
``fix`` it -- and renders them as one line for people. Code that reports problems (``protloc
validate``, the CLI) reads the fields; nothing parses messages. The CLI turns these errors into
one clear line and a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

__all__ = ["InputError", "RunFolderError", "check_choice"]


class InputError(ValueError):
    """Bad user input (file, CSV row, option). The message is meant for the user.

    Two forms:

    - structured: ``InputError(what, expected=..., got=..., fix=...)`` renders as
      ``what: expected X, got Y. Fix: Z.``;
    - free-form: ``InputError(message)`` or ``InputError(message, fix=...)``, rendered as
      ``message`` or ``message. Fix: fix``, for problems that are not a value mismatch.

    Attributes
    ----------
    what : str
        The thing that is wrong (``train.csv line 3``, ``--lr``) or, in the free-form, the
        whole problem statement.
    expected, got : str or None
        What was expected and what arrived (None in the free-form).
    fix : str or None
        How to fix it.

    Examples
    --------
    >>> e = InputError("--lr", expected="a number > 0", got="-1.0", fix="pass a value > 0")
    >>> str(e)
    '--lr: expected a number > 0, got -1.0. Fix: pass a value > 0.'
    >>> e.what, e.got, e.fix
    ('--lr', '-1.0', 'pass a value > 0')
    >>> e.problem, e.detail
    ('--lr: expected a number > 0, got -1.0', 'expected a number > 0, got -1.0')
    >>> str(InputError("data/: no images", fix="check --images"))
    'data/: no images. Fix: check --images'
    """

    def __init__(self, what, *, expected: str | None = None, got: str | None = None, fix: str | None = None):
        self.what, self.expected, self.got, self.fix = str(what), expected, got, fix
        super().__init__(str(self))

    @property
    def problem(self) -> str:
        """The message without its fix: ``what: expected X, got Y`` or the free-form statement."""
        if self.expected is None and self.got is None:
            return self.what
        return f"{self.what}: {self.detail}"

    @property
    def detail(self) -> str:
        """What is wrong, without ``what``: ``expected X, got Y`` (the free-form statement as is)."""
        if self.expected is None and self.got is None:
            return self.what
        return f"expected {self.expected}, got {self.got}"

    def __str__(self) -> str:
        if self.expected is None and self.got is None:
            return self.what if self.fix is None else f"{self.what}. Fix: {self.fix}"
        return self.problem + ("." if self.fix is None else f". Fix: {self.fix}.")

    def __reduce__(self):  # keep the fields across processes (worker pools pickle errors)
        return (_rebuild, (type(self), self.what, self.expected, self.got, self.fix))


def _rebuild(cls, what, expected, got, fix):
    err = cls.__new__(cls)
    InputError.__init__(err, what, expected=expected, got=got, fix=fix)
    return err


class RunFolderError(InputError):
    """A run folder is missing, incomplete, or incompatible with the input."""


def check_choice(name: str, value, choices) -> None:
    """Raise an :class:`InputError` unless ``value`` is one of ``choices``.

    Examples
    --------
    >>> check_choice("tta", "d8", ("none", "flip", "d4"))
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: tta: expected one of none, flip, d4, got 'd8'. Fix: use tta='none'.
    """
    if value not in choices:
        raise InputError(name, expected=f"one of {', '.join(choices)}", got=repr(value),
                         fix=f"use {name}={choices[0]!r}")
