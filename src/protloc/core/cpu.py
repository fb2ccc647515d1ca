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

__all__ = ["available_cores", "free_cores"]


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


def free_cores(*, cores: int | None = None, load: float | None = None) -> int:
    """Cores not taken by other work: ``cores`` minus the rounded 1-minute load average (the
    runnable processes of the whole machine), at least 1, at most ``cores``.

    ``cores``/``load`` default to :func:`available_cores` and ``os.getloadavg()``; call it before
    this process starts its own heavy work (its own threads count in the load average too).
    """
    cores = available_cores() if cores is None else int(cores)
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - no load average on this OS
            load = 0.0
    return max(1, min(cores, cores - int(round(float(load)))))
