"""CPU threads: how many cores this process may use, and how many of them are free.

One torch intra-op thread more than there are free cores makes every OpenMP barrier wait for a
descheduled thread: on the project's 2-core machine under load, 2 torch threads trained 4 to 12
times slower than 1 and predicted 25 times slower (docs/speed.md). :func:`free_cores` is the
default thread count of ``protloc train`` (``--threads 0``).

Examples
--------
>>> free_cores(cores=8, load=2.4), free_cores(cores=2, load=9.0), free_cores(cores=2, load=0.3)
(6, 1, 2)
"""

from __future__ import annotations

import os
import time

__all__ = ["available_cores", "busy_elsewhere", "free_cores", "process_started_at"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1.

    Examples
    --------
    >>> available_cores() >= 1
    True
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def busy_elsewhere(*, samples: int = 7, interval: float = 0.02) -> float:
    """Runnable threads of other work right now: the median over ``samples`` readings of the
    kernel's ``procs_running`` (``/proc/stat``) less this thread; where there is no ``/proc``,
    the 1-minute load average.

    Not the load average on Linux: it trails by a minute, so the work this process has just done
    itself (``protloc demo`` synthesises its images on both cores, then trains) counted as
    another process's and an idle 2-core machine trained with 1 thread, at half speed.
    """
    import statistics
    import time

    counts = []
    for k in range(max(1, samples)):
        try:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"procs_running"):
                        counts.append(int(line.split()[1]))
                        break
        except (OSError, ValueError, IndexError):
            break
        if k + 1 < samples:
            time.sleep(interval)
    if counts:
        return max(0.0, float(statistics.median(counts)) - 1.0)
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover - no load average on this OS
        return 0.0


def free_cores(*, cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: ``cores`` minus the rounded runnable threads of other
    work (``load``, default :func:`busy_elsewhere`), at least 1, at most ``cores``.

    ``cores`` defaults to :func:`available_cores`; call it before this process starts its own
    heavy work (its own running threads count as busy too).
    """
    cores = available_cores() if cores is None else int(cores)
    if load is None:
        load = busy_elsewhere()
    return max(1, min(cores, cores - int(round(float(load)))))


def process_started_at() -> float:
    """When this process started, in ``time.time()`` seconds (Linux: ``/proc``; elsewhere: now).

    A command's time budget counts from here, so the interpreter start and the imports (several
    seconds for torch and Lightning on a busy machine) are inside it.

    Examples
    --------
    >>> 0 <= time.time() - process_started_at() < 10 ** 7
    True
    """
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
    return min(started, time.time())
