"""The shipped presets: the paper preset holds the reference's values, the others keep their grids.

The paper preset follows threestudio's Magic3D configs (configs/magic3d-coarse-if.yaml and
configs/magic3d-refine-sd.yaml) where the paper gives no number; a drift from them fails here.
"""

from __future__ import annotations

import pytest

from magic3d.config import load_config
from magic3d.fields.dmtet import grid_cells
from magic3d.pipeline import memory_knobs
from magic3d.stages.losses import scheduled_weight


def grid_counts(tet_resolution: int) -> tuple[int, int]:
    """Vertices and tetrahedra of the fine stage's grid (what tet_grid builds, without building it)."""
    cells = grid_cells(tet_resolution)
    return (cells + 1) ** 3, 6 * cells**3


def test_paper_coarse_stage_is_threestudios_magic3d_coarse_if():
    c = load_config("paper").coarse
    assert (c.sds.guidance_scale, c.sds.weighting) == (20.0, "uniform")
    assert (c.sds.t_min, c.sds.t_max) == (0.02, 0.98)
    assert (c.steps, c.batch_size, c.resolution, c.lr) == (10000, 1, 64, 1e-2)
    assert c.orbit.distance == (1.5, 2.0)
    assert c.orbit.fov_y == (40.0, 70.0) and c.orbit.elevation == (-10.0, 90.0)
    assert c.albedo_warmup == 2001  # ambient_only_steps
    assert c.shading == pytest.approx((0.25, 0.375, 0.375))
    # lambda_sparsity 1 and lambda_orient [0, 10., 1000., 5000], at the same SDS loss scale (batch 1).
    assert c.opacity_weight == 1.0
    assert [scheduled_weight(c.orientation_schedule, s, c.orientation_weight) for s in (0, 2500, 5000, 9999)] \
        == pytest.approx([10.0, 505.0, 1000.0, 1000.0])
    # 512 samples per ray before culling = a step of the radius-2 box diagonal / 512; ours places its
    # samples in occupied space only, over at most the radius-1 sphere's diameter.
    reference_step = 3**0.5 * 2 * 2.0 / 512
    assert c.samples_per_ray * reference_step >= 2 * c.field.bound
    assert (c.samples_per_ray - 1) * reference_step < 2 * c.field.bound
    # Hash grid 16 x 2, 2^19 entries, resolutions 16..4096 over [-2, 2]^3 = 8..2048 over [-1, 1]^3.
    f = c.field
    assert (f.levels, f.features_per_level, f.log2_hashmap_size) == (16, 2, 19)
    assert (f.min_res / f.bound, f.max_res / f.bound) == (16 / 2.0, 4096 / 2.0)
    assert (f.blob, f.blob_density, f.blob_radius) == ("magic3d", 10.0, 0.5)


def test_paper_fine_stage_is_threestudios_magic3d_refine_sd():
    f = load_config("paper").fine
    assert (f.sds.guidance_scale, f.sds.weighting, f.sds.t_min, f.sds.t_max) == (100.0, "sds", 0.02, 0.5)
    assert (f.steps, f.batch_size, f.resolution) == (5000, 1, 512)
    assert (f.lr, f.sdf_lr, f.deform_lr) == (1e-2, 1e-2, 1e-2)
    assert f.orbit.distance == (1.5, 2.0) and f.orbit.fov_y == (30.0, 45.0) and f.orbit.elevation == (-10.0, 45.0)
    assert f.normal_consistency_weight == 1e4 and f.laplacian_weight == 0.0  # refine-sd has no Laplacian
    # isosurface_resolution 128: 64 cells per side, about the reference 128 grid's size.
    assert f.tet_resolution == 128 and grid_cells(f.tet_resolution) == 64
    assert grid_counts(f.tet_resolution) == (274_625, 1_572_864)
    assert (f.texture.levels, f.texture.log2_hashmap_size, f.texture.min_res, f.texture.max_res) == (16, 19, 8, 2048)


# Counted before fine.tet_resolution took the reference's meaning (then: cells per side 32 and 64).
@pytest.mark.parametrize(("preset", "counts"), [("builtin", (35_937, 196_608)), ("fast", (274_625, 1_572_864))])
def test_builtin_and_fast_keep_the_grid_they_had(preset, counts):
    assert grid_counts(load_config(preset).fine.tet_resolution) == counts


def test_builtin_grid_is_built_as_counted():
    from magic3d.fields.dmtet import tet_grid

    vertices, tets = tet_grid(load_config("builtin").fine.tet_resolution)
    assert (vertices.shape[0], tets.shape[0]) == (35_937, 196_608)


def test_memory_advice_halves_the_cells_per_side_and_stops_at_the_builtin_grid():
    assert "fine.tet_resolution=64" in memory_knobs("fine", load_config("paper"))
    assert not any(k.startswith("fine.tet_resolution") for k in memory_knobs("fine", load_config("builtin")))
    fifty_cells = load_config("paper", ["fine.tet_resolution=100"])
    assert "fine.tet_resolution=50" in memory_knobs("fine", fifty_cells)
    assert all(load_config("paper", [k]) for k in memory_knobs("fine", load_config("paper", ["fine.tet_resolution=132"])))
