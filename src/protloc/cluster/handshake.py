"""Rank 0 does the once-per-data-set work; the other ranks wait for its marker file.

Work done once per data set (stat-checking or building the decode store, near-duplicate hashing
for the folds, channel statistics) is done by global rank 0, which writes its results (e.g.
``splits.csv``, ``preprocessing.json``) and then a **marker** (:func:`publish_setup`, atomic):
the launch id (:mod:`protloc.cluster.launch`), a key of the setup's inputs (:func:`setup_key`),
its pid and host, and whatever the others need (the store it checked). The other ranks wait
for the marker of *their* launch and key (:func:`wait_for_setup`), then read rank 0's results
and open the store without statting every file again. When rank 0 fails, its marker carries the
error and every rank stops with it, instead of waiting for the timeout.

Markers live in a folder shared by the ranks (the run folder on a shared file system), one file
per launch, so two jobs writing into one run folder never read each other's marker. Rank 0
removes a marker of its own launch id left by an earlier start (:func:`begin_setup`); a
launch id that may repeat (static torchrun without ``--rdzv-id``) is further guarded by the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from protloc.core.errors import InputError

__all__ = ["SetupFailed", "setup_key", "begin_setup", "publish_setup", "wait_for_setup", "setup_timeout",
           "ENV_TIMEOUT", "DEFAULT_TIMEOUT_S"]

ENV_TIMEOUT = "PROTLOC_SETUP_TIMEOUT"
#: how long ranks wait for rank 0's data setup by default (a store build of millions of images
#: takes hours: build it beforehand with ``protloc cache`` on one large node)
DEFAULT_TIMEOUT_S = 4 * 3600.0
#: markers older than this are removed by the next rank 0 that publishes one in the same folder
KEEP_MARKERS_S = 7 * 86400.0


class SetupFailed(InputError):
    """Rank 0 stopped during the data setup (its error is in the message), or never finished it."""


def setup_key(*parts) -> str:
    """A short digest of what a setup depends on (options, data identity), equal on every rank.

    Examples
    --------
    >>> setup_key({"seed": 1}, "abc") == setup_key({"seed": 1}, "abc") != setup_key({"seed": 2}, "abc")
    True
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def setup_timeout() -> float:
    """Seconds to wait for rank 0 (``PROTLOC_SETUP_TIMEOUT``, default 4 h)."""
    v = os.environ.get(ENV_TIMEOUT, "").strip()
    try:
        return float(v) if v else DEFAULT_TIMEOUT_S
    except ValueError:
        raise InputError(ENV_TIMEOUT, expected="a number of seconds", got=repr(v),
                         fix=f"e.g. export {ENV_TIMEOUT}=7200") from None


def _read(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def begin_setup(path: str | Path) -> None:
    """Rank 0, before its setup: remove a marker of this launch id left by an earlier start."""
    Path(path).unlink(missing_ok=True)


def publish_setup(path: str | Path, launch, *, key: str, info: dict | None = None,
                  error: str | None = None) -> Path:
    """Rank 0: write the marker (atomic) saying the setup of ``launch`` with ``key`` is done (or
    failed with ``error``); old markers of other launches in the folder are removed."""
    from protloc.core.atomic import write_json

    path = Path(path)
    now = time.time()
    for old in path.parent.glob("*.json") if path.parent.is_dir() else ():
        try:
            if old != path and now - old.stat().st_mtime > KEEP_MARKERS_S:
                old.unlink()
        except OSError:
            pass
    return write_json(path, {"launch_id": launch.launch_id, "key": key, "ok": error is None, "error": error,
                             "pid": os.getpid(), "host": socket.gethostname(), "time": now, **(info or {})})


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wait_for_setup(path: str | Path, launch, *, key: str, what: str = "the data setup",
                   timeout: float | None = None, poll: float = 0.5, say=None) -> dict:
    """A rank other than 0: wait until rank 0's marker for ``launch`` and ``key`` exists; return it.

    Raises :class:`SetupFailed` when rank 0 reports an error, when the marker of this (unique)
    launch id was made with another key (the ranks were given different options), or after
    ``timeout`` seconds (default :func:`setup_timeout`). Says once that it waits, and every 10
    minutes after that on local rank 0 of each node.
    """
    path = Path(path)
    say = say or _say
    timeout = setup_timeout() if timeout is None else float(timeout)
    t0 = last = time.time()
    said = False
    while True:
        m = _read(path)
        if m and m.get("launch_id") == launch.launch_id:
            if m.get("key") == key:
                if not m.get("ok", True):
                    raise SetupFailed(f"{launch.describe()}: rank 0 stopped during {what} of this launch "
                                      f"({launch.launch_id}): {m.get('error')}",
                                      fix="see rank 0's error (above, or in its log), correct it and start again")
                return m
            if launch.unique:
                raise SetupFailed(f"{launch.describe()}: rank 0 of launch {launch.launch_id} did {what} with other "
                                  "options or data than this rank (setup keys differ)",
                                  fix="start every rank with the same command line and files")
        waited = time.time() - t0
        if waited > timeout:
            raise SetupFailed(f"{launch.describe()}: rank 0 did not finish {what} within {timeout:.0f} s "
                              f"(no marker {path} for launch {launch.launch_id})",
                              fix=f"check rank 0's output; build the decode store beforehand with `protloc cache`; "
                                  f"or wait longer with {ENV_TIMEOUT}=SECONDS")
        if not said:
            say(f"{launch.describe()}: waiting for rank 0 to finish {what} (launch {launch.launch_id}; "
                f"up to {timeout / 60:.0f} min, {ENV_TIMEOUT})")
            said = True
        elif launch.local_rank == 0 and time.time() - last > 600:
            say(f"{launch.describe()}: still waiting for rank 0 ({waited / 60:.0f} min)")
            last = time.time()
        time.sleep(poll)
