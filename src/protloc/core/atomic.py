"""Atomic file output: write to a temporary file in the same folder, fsync, then rename.

A crash or Ctrl-C mid-write never leaves a half-written CSV, JSON or checkpoint behind: the file
is flushed to disk (``fsync``) before it is renamed onto the target, and the folder is synced
after the rename (where the OS allows), so after a power cut the target is the old file or the
whole new one. When the write fails (folder not creatable, permission denied, an output path
below an existing file, disk full) the temp file is removed and an :class:`OutputError` names the
user's path and a fix, never the temp file. Temp files left by a killed process (``kill -9``)
are removed by the next write of the same file once they are an hour old.

With ``PROTLOC_WRITE_LOG=FILE`` every finished write appends a JSON line ``{pid, ppid, path}`` to
FILE (:func:`note_write`): the distributed tests check with it that one process writes each file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
import time
from pathlib import Path

from protloc.core.errors import InputError

#: temp files of a killed writer older than this are removed by the next write of the same target
STALE_TEMP_S = 3600.0
#: environment variable naming the write log (see the module docstring)
ENV_WRITE_LOG = "PROTLOC_WRITE_LOG"


def note_write(path: str | Path) -> None:
    """Append ``{pid, ppid, path}`` to the write log when ``PROTLOC_WRITE_LOG`` is set (one
    ``O_APPEND`` write per line, so processes never interleave); otherwise do nothing."""
    log = os.environ.get(ENV_WRITE_LOG)
    if not log:
        return
    line = json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "path": str(Path(path).absolute())}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class OutputError(InputError):
    """An output file could not be written; the message names the user's path and a fix."""


def _output_problem(path: Path, err: OSError, *, step: str) -> OutputError:
    """The user-facing message for an OSError hit while writing ``path``."""
    code = err.errno
    parent = path.parent
    if code in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "no space left on the device", "free some disk space, or write to another disk"
    elif code == errno.EROFS:
        why, fix = "the file system is read-only", "write to a writable folder"
    elif code in (errno.EACCES, errno.EPERM):
        why, fix = f"permission denied ({step})", f"write to a folder you can write to, or fix the permissions of {parent}"
    elif code in (errno.ENOTDIR, errno.EEXIST) and step == "creating its folder":
        blocker = next((p for p in [parent, *parent.parents] if p.exists() and not p.is_dir()), parent)
        why = f"{blocker} is a file, not a folder"
        fix = f"choose an output path that is not below the file {blocker}"
    elif code == errno.EISDIR:
        why, fix = "it is an existing folder", "give a file name, not a folder"
    elif code == errno.ENAMETOOLONG:
        why, fix = "the name is too long", "use a shorter file name"
    else:
        why, fix = f"{err.strerror or type(err).__name__} ({step})", "check the output path and the disk"
    return OutputError(f"{path}: cannot write the output: {why}", fix=fix)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; silently skipped where folders cannot be opened/synced."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.NAME.XXXXXXXX.tmp`` files of this target left by a killed writer (older than
    :data:`STALE_TEMP_S`; a live writer's temp file is never that old)."""
    pattern = re.compile(r"^\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.tmp$")
    now = time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        if pattern.match(entry.name):
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S:
                    os.unlink(entry.path)
            except OSError:
                pass


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    Raises :class:`OutputError` (a ``ValueError``) naming ``path`` when the output cannot be
    written; the temp file never stays behind.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("hi")
    >>> out.read_text(), [p.name for p in out.parent.iterdir()]
    ('hi', ['a.txt'])
    >>> with atomic_path(out / "b.txt") as tmp:  # doctest: +ELLIPSIS
    ...     _ = tmp.write_text("no")
    Traceback (most recent call last):
    ...
    protloc.core.atomic.OutputError: .../a.txt/b.txt: cannot write the output: .../a.txt is a file, not a folder. Fix: choose an output path that is not below the file .../a.txt
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_problem(path, e, step="creating its folder") from None
    if path.is_dir():
        raise _output_problem(path, IsADirectoryError(errno.EISDIR, "Is a directory"), step="checking it")
    _remove_stale_temps(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _output_problem(path, e, step="creating a file in its folder") from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
        except OSError as e:
            ours = e.filename is not None and Path(str(e.filename)) == tmp
            if ours or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
                raise _output_problem(path, e, step="writing it") from None
            raise
        try:
            if tmp.exists():  # mkstemp makes 0600 files; give the result the usual umask permissions
                os.chmod(tmp, 0o666 & ~_umask())
                _fsync_file(tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise _output_problem(path, e, step="saving it") from None
        _fsync_dir(path.parent)
        note_write(path)
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists() or tmp.is_symlink():
                tmp.unlink()


def _fsync_file(path: Path) -> None:
    """Flush ``path`` to disk; a full disk (ENOSPC) or I/O error surfaces here, before the rename.
    File systems that cannot sync (EINVAL) are skipped."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_default) + "\n")


def write_csv(path: str | Path, df, **kwargs) -> Path:
    """Write a pandas DataFrame atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


def write_rows(path: str | Path, header, rows) -> Path:
    """Write a CSV atomically from a header and rows of cells with the csv module (the same
    bytes as ``write_csv`` of the equivalent all-string DataFrame, without importing pandas).

    Examples
    --------
    >>> import tempfile, os
    >>> f = write_rows(os.path.join(tempfile.mkdtemp(), "s.csv"), ["Image", "Label"], [["a", "1 4"], ["b,c", ""]])
    >>> print(f.read_text(), end="")
    Image,Label
    a,1 4
    "b,c",
    """
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return Path(path)


def _default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
