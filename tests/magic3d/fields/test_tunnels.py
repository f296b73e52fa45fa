"""Tunnels narrower than the seal width are closed before the final mesh, and handles thinner than
the cut width are cut; wide holes, concave corners, thick rings and bars on no loop keep their shape."""

from __future__ import annotations

import pytest
import torch

from magic3d.fields.dmtet import DMTet, marching_tetrahedra
from magic3d.fields.tunnels import cut_handles, seal_tunnels
from magic3d.surface import surface_report


def grid() -> DMTet:
    return DMTet(64)  # 32 cells of 0.0625 per side of [-1, 1]^3


def torus_sdf(points: torch.Tensor, major: float, minor: float) -> torch.Tensor:
    ring = torch.stack([points[:, [0, 2]].norm(dim=-1) - major, points[:, 1]], -1)
    return ring.norm(dim=-1) - minor


def genus(dmtet: DMTet, sdf: torch.Tensor) -> tuple[int, int]:
    v, f = marching_tetrahedra(dmtet.grid_vertices, dmtet.tets, sdf)
    report = surface_report(v.numpy(), f.numpy())
    assert report.watertight
    return report.genus, report.bodies


def test_a_torus_whose_hole_is_a_slit_is_sealed_to_a_ball():
    d = grid()
    sdf = torus_sdf(d.grid_vertices, major=0.34, minor=0.3)  # hole 0.08 across: about one cell
    assert genus(d, sdf) == (1, 1)
    sealed, count = seal_tunnels(sdf, d.tets, d.cells, iterations=1, depth=0.003)
    assert count == 1 and genus(d, sealed) == (0, 1)
    changed = sealed != sdf
    assert 0 < int(changed.sum()) < 40  # a membrane across the slit, nothing else
    assert (d.grid_vertices[changed][:, [0, 2]].norm(dim=-1) < 0.1).all()
    assert (sealed[changed] == -0.003).all()


def test_a_wide_hole_stays_open():
    d = grid()
    sdf = torus_sdf(d.grid_vertices, major=0.6, minor=0.25)
    sealed, count = seal_tunnels(sdf, d.tets, d.cells, iterations=2, depth=0.003)
    assert count == 0 and sealed is sdf and genus(d, sealed) == (1, 1)


def test_concave_corners_and_a_cup_are_not_filled():
    d = grid()
    p = d.grid_vertices
    box = lambda centre, half: ((p - torch.tensor(centre)).abs() - torch.tensor(half)).amax(-1)  # noqa: E731
    l_shape = torch.minimum(box([0, 0, 0], [0.5, 0.1, 0.5]), box([-0.4, 0.4, 0], [0.1, 0.4, 0.5]))
    cup = torch.maximum(box([0, 0, 0], [0.5, 0.5, 0.5]), -box([0, 0.3, 0], [0.4, 0.5, 0.4]))
    for sdf in (l_shape, cup):
        sealed, count = seal_tunnels(sdf, d.tets, d.cells, iterations=1, depth=0.003)
        assert count == 0 and sealed is sdf


def test_two_slits_are_both_sealed_and_counted():
    d = grid()
    p = d.grid_vertices
    left = torus_sdf(p - torch.tensor([-0.5, 0.0, 0.0]), major=0.22, minor=0.18)
    right = torus_sdf(p - torch.tensor([0.5, 0.0, 0.0]), major=0.22, minor=0.18)
    bar = ((p - torch.tensor([0.0, 0.0, 0.0])).abs() - torch.tensor([0.4, 0.1, 0.1])).amax(-1)
    sdf = torch.minimum(torch.minimum(left, right), bar)
    assert genus(d, sdf) == (2, 1)
    sealed, count = seal_tunnels(sdf, d.tets, d.cells, iterations=1, depth=0.003)
    assert count == 2 and genus(d, sealed) == (0, 1)


def test_extract_repaired_reports_the_seal_and_zero_width_turns_it_off():
    d = grid()
    d.sdf.data.copy_(torus_sdf(d.grid_vertices, major=0.34, minor=0.3))
    v, f, repairs = d.extract_repaired(0.1, 0.1)
    assert repairs == {"sealed_tunnels": 1, "cut_handles": 0} and surface_report(v.numpy(), f.numpy()).genus == 0
    v, f, repairs = d.extract_repaired(0.0, 0.0)
    assert repairs == {"sealed_tunnels": 0, "cut_handles": 0} and surface_report(v.numpy(), f.numpy()).genus == 1
    assert torch.equal(f, d.extract()[1])


def ball_with_loop(p: torch.Tensor, loop_minor: float) -> torch.Tensor:
    """A ball of radius 0.45 with a ring standing on its top (a chimney bent into a loop)."""
    ball = p.norm(dim=-1) - 0.45
    ring = torus_sdf((p - torch.tensor([0.0, 0.62, 0.0]))[:, [1, 0, 2]], major=0.22, minor=loop_minor)
    return torch.minimum(ball, ring)


def test_a_thin_loop_on_a_ball_is_cut_and_nothing_else_moves():
    d = grid()
    sdf = ball_with_loop(d.grid_vertices, loop_minor=0.05)  # the bar ~1.6 cells thick, its hole ~5 cells wide
    assert genus(d, sdf) == (1, 1)
    assert seal_tunnels(sdf, d.tets, d.cells, iterations=1, depth=0.003)[1] == 0  # too wide to seal
    cut, count = cut_handles(sdf, d.tets, d.cells, iterations=1, depth=0.003)
    assert count == 1 and genus(d, cut) == (0, 1)
    changed = cut != sdf
    # Opening takes all of a bar that is thin everywhere: the loop goes, the ball keeps every vertex.
    assert 0 < int(changed.sum()) < 60
    assert (d.grid_vertices[changed][:, 1] > 0.4).all()
    assert (cut[changed] == 0.003).all()


def test_thick_rings_bars_on_no_loop_and_a_dumbbell_keep_their_material():
    d = grid()
    p = d.grid_vertices
    box = lambda centre, half: ((p - torch.tensor(centre)).abs() - torch.tensor(half)).amax(-1)  # noqa: E731
    torus = torus_sdf(p, major=0.5, minor=0.22)
    table = box([0, 0.3, 0], [0.5, 0.06, 0.5])
    for x in (-0.4, 0.4):
        for z in (-0.4, 0.4):
            table = torch.minimum(table, box([x, -0.1, z], [0.05, 0.4, 0.05]))  # thin legs, on no loop
    balls = torch.minimum((p - torch.tensor([-0.5, 0, 0])).norm(dim=-1) - 0.3,
                          (p - torch.tensor([0.5, 0, 0])).norm(dim=-1) - 0.3)
    dumbbell = torch.minimum(balls, box([0, 0, 0], [0.5, 0.05, 0.05]))  # cutting the bar would split it
    for sdf, expected in ((torus, (1, 1)), (table, (0, 1)), (dumbbell, (0, 1))):
        assert genus(d, sdf) == expected
        cut, count = cut_handles(sdf, d.tets, d.cells, iterations=1, depth=0.003)
        assert count == 0 and cut is sdf


def test_a_fine_stage_skipped_exports_the_sealed_surface_and_the_key_is_checked():
    import pytest

    from magic3d.config import load_config
    from magic3d.errors import ConfigError
    from magic3d.stages.fine import extract_mesh

    class SlitRing:  # a coarse field whose density is a torus with a one-cell hole
        def density(self, points: torch.Tensor) -> torch.Tensor:
            return 10.0 * (torus_sdf(points, major=0.34, minor=0.3) < 0).float()

        def albedo(self, points: torch.Tensor) -> torch.Tensor:
            return torch.full_like(points, 0.5)

    level = ["fine.surface=density"]  # the sealer's own case: by sight, no camera sees through the slit
    by_sight = extract_mesh(SlitRing(), load_config(overrides=["fine.steps=0", "fine.seal_tunnels=0",
                                                               "fine.surface=sight"]).fine, "cpu")
    assert surface_report(by_sight.vertices.numpy(), by_sight.faces.numpy()).genus == 0
    cfg = load_config(overrides=["fine.steps=0", *level]).fine
    result = extract_mesh(SlitRing(), cfg, "cpu")
    assert result.metrics["sealed_tunnels"] == 1
    assert surface_report(result.vertices.numpy(), result.faces.numpy()).genus == 0
    kept = extract_mesh(SlitRing(), load_config(overrides=["fine.seal_tunnels=0", *level]).fine, "cpu")
    assert kept.metrics["sealed_tunnels"] == 0
    assert surface_report(kept.vertices.numpy(), kept.faces.numpy()).genus == 1
    for bad in ("fine.seal_tunnels=2", "fine.seal_tunnels=-0.1", "fine.seal_tunnels=.nan"):
        with pytest.raises(ConfigError, match="seal_tunnels"):
            load_config(overrides=[bad])
    for bad in ("fine.cut_handles=2", "fine.cut_handles=-0.1"):
        with pytest.raises(ConfigError, match="cut_handles"):
            load_config(overrides=[bad])


@pytest.mark.parametrize("high", [50, 3_000_000])  # int64 keys; past 2**63 for triangles, np.unique's rows
def test_unique_rows_match_numpys(high):
    import numpy as np

    from magic3d.fields.tunnels import _unique_rows

    rows = np.random.default_rng(0).integers(0, high, size=(4000, 3))
    rows = np.concatenate([rows, rows[::3, ::-1]])  # repeats, some in another order
    assert np.array_equal(_unique_rows(rows), np.unique(np.sort(rows, 1), axis=0))
    assert np.array_equal(_unique_rows(rows[:, :2]), np.unique(np.sort(rows[:, :2], 1), axis=0))
