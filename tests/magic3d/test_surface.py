"""Baked surfaces are closed: holes left by vertex merging or decimation are filled, topology reported."""

from __future__ import annotations

import numpy as np
import trimesh

from magic3d.surface import boundary_loops, close_holes, surface_report


def holed_sphere(hole_faces: int = 5) -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    around = np.nonzero((sphere.faces == 0).any(1))[0][:hole_faces]  # the fan around vertex 0
    keep = np.setdiff1d(np.arange(len(sphere.faces)), around)
    return trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False)


def test_a_closed_sphere_and_torus_report_their_genus():
    for shape, genus in ((trimesh.creation.icosphere(), 0), (trimesh.creation.torus(1.0, 0.3), 1)):
        report = surface_report(shape.vertices, shape.faces)
        assert report.watertight and report.bodies == 1 and report.genus == genus
        assert close_holes(shape.vertices, shape.faces)[1] is shape.faces  # nothing to fill


def test_a_five_edge_hole_is_found_and_filled_with_consistent_winding():
    holed = holed_sphere()
    report = surface_report(holed.vertices, holed.faces)
    assert not report.watertight and report.boundary_edges == 5 and report.genus == -1
    loops = boundary_loops(holed.faces)
    assert [len(loop) for loop in loops] == [5]
    v, f = close_holes(holed.vertices, holed.faces)
    closed = surface_report(v, f)
    assert closed.watertight and closed.genus == 0 and closed.bodies == 1
    filled = trimesh.Trimesh(v, f, process=False)
    assert filled.is_winding_consistent and filled.is_watertight
    assert filled.volume > 0.95 * trimesh.creation.icosphere(subdivisions=2).volume  # outward, not inverted


def test_two_holes_and_two_bodies():
    a, b = holed_sphere(3), holed_sphere(4)
    v = np.concatenate([a.vertices, b.vertices + [3.0, 0, 0]])
    f = np.concatenate([a.faces, b.faces + len(a.vertices)])
    v, f = close_holes(v, f)
    report = surface_report(v, f)
    assert report.watertight and report.bodies == 2 and report.genus == 0


def test_bake_closes_the_hole_that_dropping_a_sliver_face_leaves():
    import torch

    from exporters.common import weld
    from magic3d.bake import BakeConfig, bake

    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices.copy()
    a, b, c = sphere.faces[0]
    # c onto the middle of edge a-b: face 0 keeps distinct vertices but no area, so clean-up drops
    # it, and the three edges around it are open.
    vertices[c] = (vertices[a] + vertices[b]) / 2
    mesh = bake(torch.tensor(vertices, dtype=torch.float32), torch.tensor(sphere.faces), lambda p: p * 0 + 0.5,
                BakeConfig(texture_size=64, merge_distance=1e-4))
    assert mesh.metadata["surface"]["watertight"] and mesh.metadata["surface"]["genus"] == 0
    points, of_vertex = weld(mesh.vertices)
    welded = trimesh.Trimesh(points, of_vertex[mesh.faces], process=False)
    assert welded.is_watertight and welded.body_count == 1
