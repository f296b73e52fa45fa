"""Regulariser schedules: (step, weight) points read linearly, as threestudio's lambda lists do."""

from __future__ import annotations

import pytest
import torch

from magic3d.fields.nerf import FieldConfig
from magic3d.stages.coarse import CoarseConfig, CoarseModel
from magic3d.stages.losses import scheduled_weight

# threestudio's lambda_orient [0, 10., 1000., 5000]: 10 at step 0 rising to 1000 at step 5000.
ORIENT = ((0.0, 10.0), (5000.0, 1000.0))


@pytest.mark.parametrize(
    ("step", "weight"),
    [(0, 10.0), (1, 10.198), (2500, 505.0), (4999, 999.802), (5000, 1000.0), (9999, 1000.0)],
)
def test_orientation_schedule_ramps_linearly_then_holds(step, weight):
    assert scheduled_weight(ORIENT, step, constant=0.5) == pytest.approx(weight)


def test_schedule_with_several_pieces_and_a_late_start():
    points = ((100.0, 0.0), (200.0, 4.0), (400.0, 2.0))
    values = [scheduled_weight(points, s, constant=9.0) for s in (0, 100, 150, 200, 300, 400, 10**6)]
    assert values == pytest.approx([0.0, 0.0, 2.0, 4.0, 3.0, 2.0, 2.0])


def test_no_schedule_keeps_the_constant_weight():
    assert scheduled_weight((), 1234, constant=0.01) == 0.01
    assert CoarseConfig().orientation_schedule == ()  # presets without one keep orientation_weight


def test_coarse_step_weighs_orientation_by_the_schedule():
    def zero_loss(rgb, cams, ratio, generator, shading="albedo"):
        return rgb.sum() * 0.0, {}

    field = FieldConfig(levels=4, log2_hashmap_size=12, max_res=32, hidden=16)
    cfg = CoarseConfig(resolution=16, samples_per_ray=16, field=field, albedo_warmup=0, shading=(0.0, 0.0, 1.0),
                       opacity_weight=0.0, orientation_schedule=((0.0, 0.0), (10.0, 2.0)))
    torch.manual_seed(0)
    model = CoarseModel(cfg, zero_loss, torch.device("cpu"))

    def loss_at(step: int) -> float:
        loss, _ = model.step(step, 0.0, torch.Generator().manual_seed(3))
        return float(loss.detach())

    assert loss_at(0) == 0.0
    assert loss_at(5) > 0.0
    assert loss_at(10) == pytest.approx(2.0 * loss_at(5), rel=1e-5)
    assert loss_at(50) == pytest.approx(loss_at(10), rel=1e-5)
