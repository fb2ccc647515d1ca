"""The command line's validation layer: every option of every command is checked before any work.

Two steps, both before a command reads data or writes anything:

1. **Parsing** (argparse ``type=``): each value is converted and checked by one of the reusable
   types below -- :func:`integer`, :func:`number` (``positive_int``, ``nonneg_int``, ``fraction``,
   ``probability``, ``seed``, ``port``...), :func:`device`, :func:`folds`, :func:`config_option`
   for the ``TrainConfig`` flags of ``protloc train``. Numbers are ASCII digits only (``٣`` or
   ``²`` are refused) and finite.
2. **Paths** (:func:`check_paths`, run by ``cli.main`` right after parsing): each command declares
   its path options with :func:`declare_paths` -- :class:`InFile`, :class:`InDir`,
   :class:`OutFile`, :class:`OutDir`, :class:`SchemaArg` -- and they are checked with
   :mod:`protloc.core.paths`: inputs exist and are what they should be (a folder, a regular
   file, not a named pipe or a symlink loop), outputs can be written (not below an existing
   file, not an existing folder for a file, in a writable folder) and never overwrite an input or
   each other.

Every problem is one line on stderr in the house style, ``error: what: expected X, got Y. Fix:
Z.``, and exit code 2 (argparse's own errors are reworded the same way by :class:`Parser`).
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from dataclasses import dataclass

from protloc.core.errors import InputError

__all__ = ["Parser", "integer", "number", "positive_int", "nonneg_int", "fraction", "probability", "seed",
           "port", "positive_number", "device", "folds", "fold_or_all", "config_option", "InFile", "InDir",
           "OutFile", "OutDir", "SchemaArg", "run_folder", "declare_paths", "check_paths"]


# ------------------------------------------------------------------------------------------
# the parser: argparse's messages in the house style
# ------------------------------------------------------------------------------------------
_CHOICE = re.compile(r"invalid choice: (?P<got>.+?) \(choose from (?P<choices>.+)\)$")
_TYPE = re.compile(r"invalid (?P<type>\w+) value: (?P<got>.+)$")


def _unquote(s: str) -> str:
    return s.strip().strip("'\"")


def house_style(message: str, *, prog: str, options=()) -> str:
    """argparse's error text as ``what: expected X, got Y. Fix: Z.``

    Examples
    --------
    >>> house_style("argument --tta: invalid choice: 'd8' (choose from 'none', 'flip', 'd4')", prog="protloc predict")
    "--tta: expected one of none, flip, d4, got 'd8'. Fix: pick one of those."
    >>> house_style("unrecognized arguments: --treshold 2", prog="protloc evaluate", options=["--threshold"])
    'unrecognized arguments: --treshold 2. Fix: did you mean --threshold? (see `protloc evaluate --help`).'
    """
    m = re.match(r"argument (?P<flag>[^:]+): (?P<rest>.*)$", message, re.S)
    if m:
        flag, rest = m.group("flag").split("/")[-1], m.group("rest")
        c = _CHOICE.match(rest)
        if c:
            choices = [_unquote(x) for x in c.group("choices").split(",")]
            close = difflib.get_close_matches(_unquote(c.group("got")), choices, n=1)
            fix = f"did you mean {close[0]}?" if close else "pick one of those"
            return f"{flag}: expected one of {', '.join(choices)}, got {c.group('got')}. Fix: {fix}."
        t = _TYPE.match(rest)
        if t:
            kind = {"int": "an integer", "float": "a number"}.get(t.group("type"), f"a {t.group('type')} value")
            return f"{flag}: expected {kind}, got {t.group('got')}. Fix: see `{prog} --help`."
        if rest.startswith("expected ") and "argument" in rest and ", got" not in rest:  # expected one argument
            return f"{flag}: expected a value, got none. Fix: write {flag} VALUE (see `{prog} --help`)."
        if rest.startswith("not allowed with argument "):
            other = rest.removeprefix("not allowed with argument ").split("/")[-1]
            return f"{flag} and {other}: expected one of them, got both. Fix: drop one."
        return f"{flag}: {rest}"
    if message.startswith("unrecognized arguments: "):
        words = message.removeprefix("unrecognized arguments: ").split()
        close = difflib.get_close_matches(words[0], list(options), n=1) if words and words[0].startswith("-") else []
        hint = f"did you mean {close[0]}? (see `{prog} --help`)" if close else f"see `{prog} --help`"
        return f"{message}. Fix: {hint}."
    if message.startswith("the following arguments are required: "):
        return f"{message}. Fix: add them (see `{prog} --help`)."
    return f"{message}. Fix: see `{prog} --help`."


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``error: ...`` line in the house style (the fix
    points to ``--help`` where argparse has no better one) with exit code 2, like every other
    protloc error; subcommand parsers inherit it."""

    #: subcommand name -> its parser (set by ``cli.main.build_parser``), so an unknown option is
    #: reported by the subcommand that got it (with its close option names)
    commands: dict = {}

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self.commands.get(getattr(ns, "command", None), self)
            sub.error("unrecognized arguments: " + " ".join(extras))
        return ns

    def error(self, message: str):  # noqa: D401 - argparse API
        options = [s for a in self._actions for s in a.option_strings]
        print(f"error: {house_style(message, prog=self.prog, options=options)}", file=sys.stderr)
        raise SystemExit(2)


# ------------------------------------------------------------------------------------------
# value types
# ------------------------------------------------------------------------------------------
def _bad(expected: str, got: str, fix: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"expected {expected}, got {got}. Fix: {fix}.")


def _from_input_error(e: InputError) -> argparse.ArgumentTypeError:
    text = e.detail if e.expected is not None or e.got is not None else e.what
    return argparse.ArgumentTypeError(text + (f". Fix: {e.fix.rstrip('.')}." if e.fix else "."))


def _named(fn, name: str):
    fn.__name__ = name  # argparse shows it in its own messages
    return fn


_INT = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


def _checked(pattern, cast, ok, *, expected: str, fix: str, name: str):
    """An argparse type: ``text`` must match ``pattern`` (ASCII digits), ``ok(cast(text))`` hold."""
    def conv(text: str):
        s = str(text).strip()
        if not pattern.fullmatch(s):
            raise _bad(expected, repr(text if len(str(text)) <= 40 else str(text)[:40] + "..."), fix)
        v = cast(s)
        if not ok(v):
            raise _bad(expected, s, fix)
        return v

    return _named(conv, name)


def integer(*, min: int | None = None, max: int | None = None, expected: str | None = None,
            fix: str | None = None):
    """An argparse type: an integer of ASCII digits in ``[min, max]``.

    Examples
    --------
    >>> integer(min=1)("3")
    3
    >>> integer(min=1)("-1")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected an integer >= 1, got -1. Fix: pass an integer >= 1.
    """
    if expected is None:
        expected = ("an integer" + (f" {min} to {max}" if min is not None and max is not None else
                                    f" >= {min}" if min is not None else f" <= {max}" if max is not None else ""))
    return _checked(_INT, int, lambda v: (min is None or v >= min) and (max is None or v <= max),
                    expected=expected, fix=fix or f"pass {expected}", name="integer")


def number(*, min: float | None = None, max: float | None = None, min_open: bool = False,
           max_open: bool = False, expected: str | None = None, fix: str | None = None):
    """An argparse type: a finite number (ASCII digits) in the given range.

    Examples
    --------
    >>> fraction("0.2")
    0.2
    >>> probability("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a number in [0, 1], got 'nan'. Fix: pass a number in [0, 1].
    """
    if expected is None:
        lo = "" if min is None else f"{'(' if min_open else '['}{min:g}"
        hi = "" if max is None else f"{max:g}{')' if max_open else ']'}"
        expected = ("a number" + (f" in {lo}, {hi}" if lo and hi else
                                  f" {'>' if min_open else '>='} {min:g}" if lo else
                                  f" {'<' if max_open else '<='} {max:g}" if hi else ""))

    def ok(v: float) -> bool:
        return math.isfinite(v) and (min is None or (v > min if min_open else v >= min)) and \
            (max is None or (v < max if max_open else v <= max))

    return _checked(_FLOAT, float, ok, expected=expected, fix=fix or f"pass {expected}", name="number")


positive_int = integer(min=1)
nonneg_int = integer(min=0)
positive_number = number(min=0, min_open=True)
fraction = number(min=0, max=1, min_open=True, max_open=True, expected="a fraction between 0 and 1",
                  fix="e.g. 0.2")
probability = number(min=0, max=1)
seed = integer(min=0, max=2**32 - 1, expected="a seed 0 to 4294967295", fix="e.g. --seed 0")
port = integer(min=1, max=65535, expected="a port 1-65535", fix="use e.g. 8000")


def device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, available on this machine
    (:func:`protloc.models.device.resolve_device`)."""
    from protloc.models.device import resolve_device

    try:
        return resolve_device(text)
    except InputError as e:
        raise _from_input_error(e) from None


def folds(text: str):
    """An argparse type: comma-separated fold numbers (``0,2``) or ``all`` -> list or None."""
    from protloc.core.runfolder import parse_folds

    try:
        return parse_folds(text)
    except InputError as e:
        raise _from_input_error(e) from None


def fold_or_all(text: str):
    """An argparse type: one fold number or ``all``."""
    s = str(text).strip()
    if s == "all":
        return "all"
    return integer(min=0, expected="a fold number or 'all'", fix="e.g. --fold 0, or --fold all")(s)


def config_option(name: str):
    """The argparse type of a :class:`~protloc.core.config.TrainConfig` field: converted and checked
    against the field's choices and bounds (:func:`protloc.core.config.parse_field`)."""
    from protloc.core.config import parse_field

    def conv(text: str):
        try:
            return parse_field(name, text)
        except InputError as e:
            raise _from_input_error(e) from None

    return _named(conv, name)


def from_function(fn, name: str):
    """An argparse type from a parser that raises InputError (``parse_difficulty``...)."""
    def conv(text: str):
        try:
            return fn(text)
        except InputError as e:
            raise _from_input_error(e) from None

    return _named(conv, name)


# ------------------------------------------------------------------------------------------
# path options: declared per command, checked by cli.main before the command runs
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathArg:
    """A path option: its ``dest`` in the parsed namespace, what it is (for messages), its flag."""

    dest: str
    what: str = "file"
    flag: str | None = None
    fix: str | None = None

    @property
    def name(self) -> str:
        return self.flag or "--" + self.dest.replace("_", "-")


class InFile(PathArg):
    """An input that must be an existing, readable regular file."""

    def check(self, value, inputs):
        from protloc.core.paths import check_input_file

        check_input_file(value, flag=self.name, what=self.what, fix=self.fix)


class SchemaArg(PathArg):
    """``--schema``: a built-in schema name, or an existing YAML/JSON file."""

    def check(self, value, inputs):
        from protloc.core.paths import check_input_file
        from protloc.core.schema import BUILTIN

        if str(value) not in BUILTIN:
            check_input_file(value, flag=self.name, what="label schema file (or ghent10/hpa28)")


class InDir(PathArg):
    """An input that must be an existing folder."""

    def check(self, value, inputs):
        from protloc.core.paths import check_input_dir

        check_input_dir(value, flag=self.name, what=self.what, fix=self.fix)


class OutFile(PathArg):
    """An output file: writable (its folders are created), not an input."""

    def check(self, value, inputs):
        from protloc.core.paths import check_output_file

        check_output_file(value, flag=self.name, inputs=inputs)


class OutDir(PathArg):
    """An output folder: an existing writable folder, or one that can be created."""

    def check(self, value, inputs):
        from protloc.core.paths import check_output_dir

        check_output_dir(value, flag=self.name)


def run_folder() -> InDir:
    """The ``RUN`` positional of the commands that read a run folder."""
    return InDir("run", "run folder", "RUN", fix="pass the --out folder of `protloc train`")


def declare_paths(parser: argparse.ArgumentParser, *specs: PathArg) -> None:
    """Declare a command's path options (added to those declared before on the same parser)."""
    have = tuple(parser.get_default("_paths") or ())
    parser.set_defaults(_paths=have + specs)


def check_paths(args: argparse.Namespace) -> None:
    """Check every declared path option of the parsed command (inputs first, then outputs);
    raise InputError on the first problem. Nothing is created."""
    from protloc.core.paths import same_file

    specs = [s for s in (getattr(args, "_paths", None) or ()) if getattr(args, s.dest, None) not in (None, "")]
    inputs = [(s.name, getattr(args, s.dest)) for s in specs if isinstance(s, (InFile, SchemaArg))]
    for s in sorted(specs, key=lambda s: isinstance(s, (OutFile, OutDir))):
        s.check(getattr(args, s.dest), inputs)
    outs = [(s.name, getattr(args, s.dest)) for s in specs if isinstance(s, OutFile)]
    for i, (fa, a) in enumerate(outs):
        for fb, b in outs[i + 1:]:
            if same_file(a, b):
                raise InputError(f"{fa} and {fb}", expected="two different files", got=f"{a} twice",
                                 fix=f"give {fb} another file name")
