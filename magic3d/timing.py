"""Seconds per phase of a run, wall-clock and CPU both.

Phases nest, and each keeps only its own time: a phase opened inside another is taken out of
the outer one. That is how ``generate --from`` reports the forward pass of the amortized model
(the field's own evaluations, wherever extraction and baking call it) apart from the mesh work
around it. On a shared machine the CPU time is the one to compare; the wall time is what a user waits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class PhaseTimes:
    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._open: list[list[float]] = []  # per open phase: wall and CPU time of the phases inside it

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        self._open.append([0.0, 0.0])
        try:
            yield
        finally:
            inner_wall, inner_cpu = self._open.pop()
            spent_wall, spent_cpu = time.perf_counter() - wall, time.process_time() - cpu
            self.wall[name] = self.wall.get(name, 0.0) + spent_wall - inner_wall
            self.cpu[name] = self.cpu.get(name, 0.0) + spent_cpu - inner_cpu
            if self._open:
                self._open[-1][0] += spent_wall
                self._open[-1][1] += spent_cpu


class TimedField:
    """A coarse field whose ``density`` and ``albedo`` calls count as ``phase`` of ``times``."""

    def __init__(self, field: Any, times: PhaseTimes, phase: str = "forward") -> None:
        self.field, self.times, self.name = field, times, phase

    def density(self, points: Any) -> Any:
        with self.times.phase(self.name):
            return self.field.density(points)

    def albedo(self, points: Any) -> Any:
        with self.times.phase(self.name):
            return self.field.albedo(points)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.field, attr)
