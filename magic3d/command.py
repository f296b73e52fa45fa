"""How a command that runs the pipeline reports, whichever command it is (``generate``, ``edit``,
``texture``): progress bars then one ``FORMAT: PATH`` line per file, or with ``--json`` one event
per line on stdout (magic3d/events.schema.json, batch's Reporter) ending with the result.

``plan`` does every check of the command (no torch): bad input is refused before the pipeline
is imported, and under ``--json`` it is reported as an ``error`` event as well as the usual line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from magic3d.errors import Magic3DError

Plan = Callable[[], tuple]  # -> (text, config, run_dir), as magic3d.plan.plan_run returns
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON event per line on stdout (the schema: "
                                       "magic3d/events.schema.json), ending with the result; no bars.")]


def run_command(plan: Plan, prompt: str, out: str, restart: bool, quiet: bool, json_events: bool) -> None:
    if json_events:
        run_json(plan, prompt, out, restart)
        return
    from magic3d.progress import console_progress

    planned = planned_in(plan, out)
    from magic3d.pipeline import run_planned

    with console_progress(quiet) as progress:
        result = run_planned(*planned, restart=restart, progress=progress,
                             notice=None if quiet else (lambda message: typer.echo(message, err=True)))
    for fmt, path in result.files.items():
        typer.echo(f"{fmt}: {path}")


def planned_in(plan: Plan, out: str) -> tuple:
    from magic3d.storage import ensure_writable_dir

    planned = plan()
    ensure_writable_dir(Path(out))
    return planned


def run_json(plan: Plan, prompt: str, out: str, restart: bool) -> None:
    from magic3d.batch.report import Reporter

    reporter = Reporter(json_mode=True)
    clock = time.perf_counter()
    reporter.emit("run_start", prompt=prompt, out=str(out))
    try:
        planned = planned_in(plan, out)
        from magic3d.pipeline import run_planned

        result = run_planned(
            *planned, restart=restart,
            progress=lambda stage, step, total, loss: reporter.emit("progress", stage=stage, step=int(step),
                                                                    total=int(total), loss=float(loss)),
            notice=lambda message: reporter.emit("notice", message=message),
        )
    except Magic3DError as exc:
        reporter.emit("error", message=" ".join(str(exc).split()), exit_code=2)
        raise
    reporter.emit("run_done", run_dir=str(result.run_dir), files={k: str(p) for k, p in result.files.items()},
                  metrics=result.metrics, timings=result.timings, seconds=round(time.perf_counter() - clock, 3))
