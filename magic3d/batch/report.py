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


# Share of a job's time each stage takes, for ETAs before any job has finished (built-in prior
# on a CPU: coarse ~55%, fine ~30%, bake and export the rest).
STAGE_SHARE = {"coarse": (0.0, 0.55), "fine": (0.55, 0.30)}


class Eta:
    """Time left in a batch, from what it has seen: finished jobs' durations, else running jobs'
    progress through their stages; None until there is anything to go on."""

    def __init__(self, jobs: int, done: int, workers: int) -> None:
        self.left = jobs - done  # jobs not yet finished for good
        self.workers = max(1, workers)
        self.durations: list[float] = []
        self.running: dict[str, tuple[float, float]] = {}  # job -> (start time, fraction done)

    def start(self, job: str, now: float) -> None:
        self.running[job] = (now, 0.0)

    def progress(self, job: str, stage: str, step: int, total: int) -> None:
        if job in self.running and stage in STAGE_SHARE:
            first, share = STAGE_SHARE[stage]
            self.running[job] = (self.running[job][0], first + share * step / max(total, 1))

    def finish(self, job: str, seconds: float | None, final: bool) -> None:
        self.running.pop(job, None)
        if seconds is not None:
            self.durations.append(seconds)
        if final:
            self.left = max(0, self.left - 1)

    def seconds_left(self, now: float) -> float | None:
        if self.durations:
            per_job = sorted(self.durations)[len(self.durations) // 2]
            fractions = [min(0.95, (now - t0) / per_job) for t0, _ in self.running.values()]
        else:
            seen = [(now - t0, f) for t0, f in self.running.values() if f > 0]
            if not seen:
                return None
            per_job = sum(elapsed / f for elapsed, f in seen) / len(seen)
            fractions = [f for _, f in self.running.values()]
        work = self.left - sum(fractions)  # jobs' worth of work still to do
        return max(0.0, work) * per_job / min(self.workers, max(self.left, 1))


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "eta -:--:--"
    s = int(round(seconds))
    return f"eta {s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


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
        self.eta: Eta | None = None

    def emit(self, event: str, **fields: Any) -> None:
        record = finite({"event": event, "time": round(time.time(), 3), **fields})
        self.events.append(record)
        self._track(record)
        if self.json_mode:
            stream = self.stream or sys.stdout
            stream.write(json.dumps(record, default=str, allow_nan=False) + "\n")
            stream.flush()
        elif not self.quiet:
            self._show(record)

    def _track(self, e: dict[str, Any]) -> None:
        kind, now = e["event"], e["time"]
        if kind == "batch_start":
            self.eta = Eta(e["jobs"], e["done"], e.get("workers") or 1)
        elif self.eta is None:
            return
        elif kind == "job_start":
            self.eta.start(e["job"], now)
        elif kind == "job_progress":
            self.eta.progress(e["job"], e["stage"], e["step"], e["total"])
        elif kind == "job_done":
            self.eta.finish(e["job"], e.get("seconds"), final=True)
        elif kind == "job_failed":
            self.eta.finish(e["job"], None, final=not e.get("retry"))

    def eta_text(self) -> str:
        return clock(self.eta.seconds_left(time.time()) if self.eta else None)

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
            self._tasks[e["job"]] = bars.add_task(f"  {e['job'][:40]}", total=None, stage="starting", eta="")
        elif kind == "job_progress" and e["job"] in self._tasks:
            loss = "" if e.get("loss") is None else f" loss {e['loss']:.4g}"
            bars.update(self._tasks[e["job"]], completed=e["step"], total=e["total"], stage=f"{e['stage']}{loss}")
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
        bars.update(self._overall, stage=f"{c['done']} done, {c['failed']} failed, {c['running']} running",
                    eta=self.eta_text())

    def _start_bars(self, e: dict[str, Any]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stage]}"),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),  # the batch's own estimate (Eta), not rich's rate of whole jobs
            console=Console(file=sys.stderr),
        )
        self._bars.start()
        self._overall = self._bars.add_task("[bold]batch", total=e["jobs"], completed=e["done"], stage="", eta="")
        self._counts["done"] = e["done"]

    def _plain(self, e: dict[str, Any]) -> None:
        kind = e["event"]
        line = None
        if kind == "batch_start":
            line = f"batch: {e['jobs']} jobs ({e['done']} already done) -> {e['out']}"
        elif kind == "job_done":
            line = f"done {e['job']} ({e['seconds']:.1f} s); {self.eta_text()}"
        elif kind == "job_failed":
            line = f"{'retrying' if e.get('retry') else 'failed'} {e['job']}: {e['error']}"
        elif kind == "invalid_line":
            line = f"skipped line {e['line']}: {e['error']}"
        elif kind == "batch_end":
            line = f"batch: {e['done']} done, {e['failed']} failed in {e['seconds']:.1f} s; world: {e['world']}"
        if line:
            print(line, file=self.stream or sys.stderr, flush=True)
