"""Path checks done before any work: what a path is, inputs that must exist, outputs that must be
writable, image ids that must be plain file names.

Every command checks its paths with these functions before it reads or writes anything (the
CLI's ``check_paths`` step, :mod:`protloc.cli.options`), so a wrong path is one clear
:class:`~protloc.core.errors.InputError` naming the option, the path, what it really is (a
folder, a named pipe, a symlink loop...) and the fix, never a traceback halfway through a run.
Pure standard library; nothing here creates or opens a file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from protloc.core.errors import InputError

__all__ = ["path_kind", "check_input_file", "check_input_dir", "check_output_file", "check_output_dir",
           "check_image_id", "same_file"]

_KIND_TEXT = {
    "file": "a file", "dir": "a folder", "fifo": "a named pipe (FIFO)", "socket": "a socket",
    "device": "a device", "loop": "a symlink loop", "broken-link": "a broken symlink",
    "missing": "missing", "unreadable": "not accessible",
}


def path_kind(path) -> str:
    """What is at ``path``: 'file', 'dir', 'fifo', 'socket', 'device', 'loop' (symlink loop),
    'broken-link', 'missing' or 'unreadable' (a parent folder denies access). Never raises.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> os.symlink("a", os.path.join(d, "a"))          # a link to itself
    >>> path_kind(d), path_kind(os.path.join(d, "a")), path_kind(os.path.join(d, "b"))
    ('dir', 'loop', 'missing')
    """
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "loop"
        if e.errno in (errno.EACCES, errno.EPERM):
            return "unreadable"
        if e.errno == errno.ENOTDIR:
            return "missing"
        try:
            os.lstat(p)
        except OSError:
            return "missing"
        return "broken-link"  # lstat works, stat does not: the link points nowhere
    except ValueError:  # an embedded NUL byte
        return "missing"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def describe(path) -> str:
    """``path_kind`` in words: 'a folder', 'a named pipe (FIFO)', 'a symlink loop'...

    Examples
    --------
    >>> describe("/")
    'a folder'
    """
    return _KIND_TEXT[path_kind(path)]


def same_file(a, b) -> bool:
    """True when two paths name the same existing file (or the same absolute path)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def check_input_file(path, *, flag: str, what: str = "file", fix: str | None = None) -> Path:
    """Raise unless ``path`` is an existing, readable regular file; return it as a Path.

    A folder, named pipe (reading one can block forever), socket, device, symlink loop or
    broken link is refused with what it is.

    Examples
    --------
    >>> check_input_file("/", flag="--csv", what="CSV file")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --csv: expected a CSV file, got / (a folder). Fix: pass a CSV file, not a folder.
    """
    p = Path(path)
    kind = path_kind(p)
    if kind == "missing":
        raise InputError(f"{p}: {what} not found", fix=fix or f"check the {flag} path")
    if kind == "file":
        if not os.access(p, os.R_OK):
            raise InputError(flag, expected=f"a readable {what}", got=f"{p} (permission denied)",
                             fix=f"fix the permissions of {p}, or copy it somewhere readable")
        return p
    hint = {"dir": f"pass a {what}, not a folder", "fifo": "save the data to a regular file first",
            "loop": f"fix or remove the symlink {p}", "broken-link": f"fix or remove the symlink {p}",
            "unreadable": "check the path and the permissions of its folders"}.get(kind, "pass a regular file")
    raise InputError(flag, expected=f"a {what}", got=f"{p} ({_KIND_TEXT[kind]})", fix=fix or hint)


def check_input_dir(path, *, flag: str, what: str = "folder", fix: str | None = None) -> Path:
    """Raise unless ``path`` is an existing folder that can be listed; return it as a Path.

    Examples
    --------
    >>> check_input_dir("/no/such/dir", flag="--images", what="image folder")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: /no/such/dir: image folder not found. Fix: check the --images path
    """
    p = Path(path)
    kind = path_kind(p)
    if kind == "missing":
        raise InputError(f"{p}: {what} not found", fix=fix or f"check the {flag} path")
    if kind == "dir":
        if not os.access(p, os.R_OK | os.X_OK):
            raise InputError(flag, expected=f"a readable {what}", got=f"{p} (permission denied)",
                             fix=f"fix the permissions of {p}")
        return p
    hint = {"file": f"pass the {what}, not a file in it" if flag != "--images" else
            "pass the folder that holds the images (the CSV goes to --csv)",
            "loop": f"fix or remove the symlink {p}", "broken-link": f"fix or remove the symlink {p}"}
    raise InputError(flag, expected=f"an existing {what}", got=f"{p} ({_KIND_TEXT[kind]})",
                     fix=fix or hint.get(kind, f"pass a {what}"))


def _existing_ancestor(p: Path) -> Path:
    q = p.parent if str(p.parent) else Path(".")
    while path_kind(q) == "missing" and q != q.parent:
        q = q.parent
    return q


def _check_parent(p: Path, flag: str) -> None:
    """The first existing ancestor of ``p`` must be a folder we can create entries in."""
    anc = _existing_ancestor(p)
    kind = path_kind(anc)
    if kind != "dir":
        raise InputError(flag, expected="a path whose folders are folders", got=f"{p} ({anc} is {_KIND_TEXT[kind]})",
                         fix=f"choose an output path that is not below {anc}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(flag, expected="a path in a folder you can write to", got=f"{p} ({anc} is not writable)",
                         fix=f"write somewhere else, or fix the permissions of {anc}")


def check_output_file(path, *, flag: str, inputs=()) -> Path:
    """Raise unless a file could be written at ``path`` (atomically: its folder must be writable;
    missing folders are created when writing). ``inputs``: ``(flag, path)`` pairs the output
    must not overwrite. Nothing is created.

    Examples
    --------
    >>> check_output_file("/", flag="--out")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --out: expected a file name, got / (a folder). Fix: give a file name, e.g. /result.csv.
    """
    p = Path(path)
    kind = path_kind(p)
    if kind == "dir":
        raise InputError(flag, expected="a file name", got=f"{p} ({_KIND_TEXT[kind]})",
                         fix=f"give a file name, e.g. {p / 'result.csv'}")
    if kind not in ("file", "missing"):
        raise InputError(flag, expected="a file name (a regular file is replaced)", got=f"{p} ({_KIND_TEXT[kind]})",
                         fix="write to another path")
    _check_parent(p, flag)
    for in_flag, in_path in inputs:
        if in_path is not None and kind == "file" and same_file(p, in_path):
            raise InputError(flag, expected=f"a new file (not the input {in_flag})", got=str(p),
                             fix="write the output to another file, the input would be overwritten")
    return p


def check_output_dir(path, *, flag: str) -> Path:
    """Raise unless ``path`` is a folder, or could be created as one. Nothing is created.

    Examples
    --------
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "f")
    >>> open(f, "w").close()
    >>> check_output_dir(os.path.join(f, "run"), flag="--out")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: --out: expected a path whose folders are folders, got .../f/run (.../f is a file). Fix: choose an output path that is not below .../f.
    """
    p = Path(path)
    kind = path_kind(p)
    if kind == "dir":
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(flag, expected="a folder you can write to", got=f"{p} (not writable)",
                             fix=f"write somewhere else, or fix the permissions of {p}")
        return p
    if kind != "missing":
        raise InputError(flag, expected="a folder (new or existing)", got=f"{p} ({_KIND_TEXT[kind]})",
                         fix="choose another output folder")
    _check_parent(p, flag)
    return p


def check_image_id(iid: str, *, where: str) -> str:
    """Raise unless ``iid`` is a plain file name: ids name files inside ``--images``, never paths.

    Refused: a path separator (``a/b``, ``../outside``, ``/etc/passwd``, ``a\\b``), ``.`` or
    ``..``, control characters (NUL, newline).

    Examples
    --------
    >>> check_image_id("36115", where="train.csv line 2")
    '36115'
    >>> check_image_id("../outside", where="train.csv line 2")
    Traceback (most recent call last):
    ...
    protloc.core.errors.InputError: train.csv line 2: expected an image id (a file name inside --images), got '../outside' (a path). Fix: write the file name only and pass its folder as --images.
    """
    s = str(iid)
    if "/" in s or "\\" in s or s in (".", ".."):
        raise InputError(where, expected="an image id (a file name inside --images)", got=f"{s[:80]!r} (a path)",
                         fix="write the file name only and pass its folder as --images")
    if any(ord(c) < 32 or ord(c) == 127 for c in s):
        raise InputError(where, expected="an image id (a file name inside --images)",
                         got=f"{s[:80]!r} (control characters)", fix="remove the control characters from the id")
    return s
