"""What a batch tells its watcher: JSON events for scripts, rich bars for people, nothing when quiet.

``--json`` prints one object per line on stdout (``{"event": "job_done", "job": ..., "time": ...}``);
otherwise an overall bar (done / failed / running, ETA) sits above one bar per running job.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, TextIO

SCHEMA = "events.schema.json"  # in the package: the one schema of generate's and batch's --json lines


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers (json.dumps would write
    a bare NaN that parsers refuse)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class Reporter:
    def __init__(self, json_mode: bool = False, quiet: bool = False, stream: TextIO | None = None):
        self.json_mode = json_mode
        self.quiet = quiet
        self.stream = stream
        self.events: list[dict[str, Any]] = []  # kept for callers that want the record (tests, bench)
        self._bars: Any = None
        self._overall: Any = None
        self._tasks: dict[str, Any] = {}
        self._counts = {"done": 0, "failed": 0, "running": 0}

    def emit(self, event: str, **fields: Any) -> None:
        record = finite({"event": event, "time": round(time.time(), 3), **fields})
        self.events.append(record)
        if self.json_mode:
            stream = self.stream or sys.stdout
            stream.write(json.dumps(record, default=str, allow_nan=False) + "\n")
            stream.flush()
        elif not self.quiet:
            self._show(record)

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None

    # People: rich bars on a terminal, plain lines otherwise.
    def _show(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        if kind == "batch_start" and sys.stderr.isatty():
            self._start_bars(e)
        if self._bars is None:
            self._plain(e)
            return
        bars = self._bars
        if kind == "job_start":
            self._counts["running"] += 1
            self._tasks[e["job"]] = bars.add_task(f"  {e['job'][:40]}", total=None, stage="starting", loss=float("nan"))
        elif kind == "job_progress" and e["job"] in self._tasks:
            bars.update(self._tasks[e["job"]], completed=e["step"], total=e["total"], stage=e["stage"], loss=e["loss"])
        elif kind in ("job_done", "job_failed"):
            task = self._tasks.pop(e["job"], None)
            if task is not None:
                bars.remove_task(task)
            self._counts["running"] = max(0, self._counts["running"] - 1)
            if kind == "job_done":
                self._counts["done"] += 1
                bars.advance(self._overall)
            elif not e.get("retry"):
                self._counts["failed"] += 1
                bars.advance(self._overall)
                bars.console.print(f"[red]failed[/] {e['job']}: {e['error']}")
        elif kind == "invalid_line":
            bars.console.print(f"[yellow]skipped line {e['line']}[/]: {e['error']}")
        elif kind == "batch_end":
            self.close()
            return
        c = self._counts
        bars.update(self._overall, stage=f"{c['done']} done, {c['failed']} failed, {c['running']} running")

    def _start_bars(self, e: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stage]}"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
        )
        self._bars.start()
        self._overall = self._bars.add_task("[bold]batch", total=e["jobs"], completed=e["done"], stage="", loss=0.0)
        self._counts["done"] = e["done"]

    def _plain(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        line = None
        if kind == "batch_start":
            line = f"batch: {e['jobs']} jobs ({e['done']} already done) -> {e['out']}"
        elif kind == "job_done":
            line = f"done {e['job']} ({e['seconds']:.1f} s)"
        elif kind == "job_failed":
            line = f"{'retrying' if e.get('retry') else 'failed'} {e['job']}: {e['error']}"
        elif kind == "invalid_line":
            line = f"skipped line {e['line']}: {e['error']}"
        elif kind == "batch_end":
            line = f"batch: {e['done']} done, {e['failed']} failed in {e['seconds']:.1f} s; world: {e['world']}"
        if line:
            print(line, file=self.stream or sys.stderr, flush=True)
