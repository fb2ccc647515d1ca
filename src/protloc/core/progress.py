"""Progress bars (rich) that degrade to nothing when disabled or not on a terminal."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(*, total: int, description: str, enable: bool = True):
    """Context manager yielding ``advance(n)``.

    Examples
    --------
    >>> with progress_bar(total=3, description="work", enable=False) as advance:
    ...     advance(3)
    """
    if not enable:
        yield lambda n=1: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    from rich.console import Console

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  disable=not console.is_terminal and not _force()) as prog:
        task = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(task, n)


def _force() -> bool:
    import os

    return os.environ.get("PROTLOC_PROGRESS") == "1" or not hasattr(sys.stderr, "isatty")
