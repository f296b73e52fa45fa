"""Progress reporting: a rich bar per stage for people, nothing for ``--quiet`` and scripts.

Stages call ``progress(stage, step, total, loss)``; they never import rich themselves.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

ProgressFn = Callable[[str, int, int, float], None]
Notice = Callable[[str], None]  # one line for the person watching (a resume, a run only re-listed)


def silent(stage: str, step: int, total: int, loss: float) -> None:
    return None


@contextlib.contextmanager
def console_progress(quiet: bool = False) -> Iterator[ProgressFn]:
    if quiet:
        yield silent
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bars = Progress(
        TextColumn("[bold]{task.description:<7}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]:.4g}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        transient=False,
        disable=not sys.stderr.isatty(),
        console=None,
    )
    tasks: dict[str, int] = {}

    def update(stage: str, step: int, total: int, loss: float) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total, loss=float("nan"))
        bars.update(tasks[stage], completed=step, total=total, loss=loss)

    with bars:
        yield update
