"""Worker processes that die with their parent, and a build lock that a dead owner cannot keep.

``kill -9`` of a command that decodes in worker processes used to leave the workers running
(orphans) with the cache's build lock inherited from the parent, so the next ``protloc cache`` or
``protloc train`` waited for ever without a word. Now:

* every worker asks the kernel to kill it when its parent dies (``PR_SET_PDEATHSIG`` on Linux),
  exits at once if its parent is already gone, and closes the lock descriptors it inherited;
* :class:`BuildLock` writes its owner (PID, process start time, host, command) into the lock
  file; a process that finds the lock held says for whom it waits, and takes the lock over when
  that owner is dead (same host) even if leftover processes still hold the old lock file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from protloc.core.errors import InputError

#: lock descriptors held by this process; forked workers close their copies
_HELD_FDS: set[int] = set()


def _set_pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no libc
        return False


def worker_init(parent_pid: int) -> None:
    """Initializer of decode workers: die with the parent, drop inherited locks, ignore Ctrl-C."""
    _set_pdeathsig()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    for fd in list(_HELD_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled once, by the main process


def worker_map(fn, jobs, workers: int, *, ordered: bool = True):
    """``map(fn, jobs)`` in ``workers`` processes, at most ``2 * workers`` jobs in flight.

    Results come in job order (``ordered``) or as they finish. Workers die with this process
    and ignore Ctrl-C (no traceback per worker); a worker that dies (e.g. killed for memory)
    becomes one clear :class:`InputError`.

    Examples
    --------
    >>> list(worker_map(abs, [-1, 2, -3], 1))
    [1, 2, 3]
    """
    jobs = list(jobs)
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(workers, initializer=worker_init, initargs=(os.getpid(),)) as ex:
            it = iter(jobs)
            pending: deque = deque(ex.submit(fn, j) for _, j in zip(range(2 * workers), it))
            try:
                while pending:
                    if ordered:
                        fut = pending.popleft()
                    else:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        fut = next(f for f in pending if f in done)
                        pending.remove(fut)
                    res = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(ex.submit(fn, nxt))
                    yield res
            finally:
                for f in pending:  # stop early (error, Ctrl-C, generator closed): drop queued work
                    f.cancel()
    except BrokenProcessPool:
        raise InputError("a decoding worker process died (out of memory?)", fix="rerun with fewer "
                         "--workers, or check the images with protloc validate") from None


# --------------------------------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """Kernel start time of ``pid`` (to tell a live owner from a reused PID); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """True if process ``pid`` exists (and, given ``start``, is the same process)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OverflowError, ValueError):
        return False
    if start is not None and sys.platform.startswith("linux"):
        now = _start_time(int(pid))
        return now is None or now == start
    return True


def describe_owner(owner: dict) -> str:
    since = owner.get("since")
    when = time.strftime("%H:%M:%S", time.localtime(since)) if since else "?"
    return f"PID {owner.get('pid', '?')} on {owner.get('host', '?')} (since {when}: {owner.get('cmd', '?')})"


class BuildLock:
    """Exclusive, owner-recorded lock on one cache entry's build (``flock`` on a lock file).

    ``say`` receives one line when this process starts waiting (naming the owner) and one when
    it takes over a stale lock. The kernel releases ``flock`` when its holders die; an owner
    that died while its leftover workers still hold the lock (older protloc versions, or where
    ``PR_SET_PDEATHSIG`` does not exist) is detected by PID and its lock file replaced.

    Examples
    --------
    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / ".x.lock"
    >>> with BuildLock(p) as lock:
    ...     lock.owner()["pid"] == os.getpid()
    True
    """

    def __init__(self, path, *, say=None, poll: float = 0.2):
        self.path = Path(path)
        self.say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.poll = poll
        self.fd: int | None = None

    def owner(self, fd: int | None = None) -> dict:
        fd = self.fd if fd is None else fd
        try:
            raw = os.pread(fd, 4096, 0)
            return json.loads(raw.decode() or "{}")
        except (OSError, ValueError, TypeError):
            return {}

    def _same_file(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
            return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)
        except OSError:
            return False

    def __enter__(self) -> "BuildLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock, builds are still atomic
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited, host = False, socket.gethostname()
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self.owner(fd)
                if owner.get("host") == host and "pid" in owner and not pid_alive(owner["pid"], owner.get("start")):
                    self.say(f"note: the cache build lock {self.path} belongs to {describe_owner(owner)}, which is "
                             "gone, but processes it left still hold it; taking the lock over")
                    if self._same_file(fd):
                        with contextlib.suppress(OSError):
                            os.unlink(self.path)  # a fresh lock file; the leftovers keep the old one
                    os.close(fd)
                    continue
                if not waited:
                    who = describe_owner(owner) if owner else "another process"
                    self.say(f"waiting for {who} to finish building this cache entry (lock {self.path}); "
                             "stop it or wait")
                    waited = True
                os.close(fd)
                time.sleep(self.poll)
                continue
            except OSError as e:  # a file system without locks (e.g. Lustre without -o flock)
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    self.say(f"warning: {self.path.parent} cannot lock files ({e.strerror}); building "
                             "without a lock (parallel builders write the same shards)")
                    return self
                raise
            if not self._same_file(fd):  # replaced while we waited (stale takeover): lock the new one
                os.close(fd)
                continue
            prev = self.owner(fd)
            if prev.get("pid") and prev.get("pid") != os.getpid():
                self.say(f"note: taking over the cache build lock {self.path} of {describe_owner(prev)}, "
                         "which stopped without releasing it (killed?); its finished shards are kept")
            info = {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": host, "since": time.time(),
                    "cmd": " ".join(os.path.basename(a) if k == 0 else a for k, a in enumerate(sys.argv))[:300]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self.fd = fd
            _HELD_FDS.add(fd)
            return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        import fcntl

        fd, self.fd = self.fd, None
        _HELD_FDS.discard(fd)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # the (empty) lock file stays: unlinking it races with waiters
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
