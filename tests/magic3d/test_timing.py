"""Phase times keep each phase's own seconds: an inner phase is taken out of the one around it."""

from __future__ import annotations

import time

from magic3d.timing import PhaseTimes, TimedField


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_nested_phase_is_taken_out_of_the_outer_one():
    times = PhaseTimes()
    with times.phase("mesh"):
        busy(0.05)
        with times.phase("forward"):
            busy(0.1)
        with times.phase("forward"):  # a phase met twice adds up
            busy(0.1)
    assert 0.19 <= times.cpu["forward"] < 0.3
    assert 0.04 <= times.cpu["mesh"] < 0.1  # its own 0.05 s, not the 0.25 s it spanned
    assert times.wall["mesh"] < times.wall["forward"]


def test_timed_field_counts_its_evaluations_and_passes_the_rest_through():
    class Field:
        cfg = "the config"

        def density(self, points):
            busy(0.05)
            return [p * 2 for p in points]

        def albedo(self, points):
            return [p + 1 for p in points]

    times = PhaseTimes()
    field = TimedField(Field(), times)
    with times.phase("mesh"):
        assert field.density([1, 2]) == [2, 4] and field.albedo([1]) == [2]
    assert field.cfg == "the config"
    assert times.cpu["forward"] >= 0.05 and times.cpu["mesh"] < 0.05
