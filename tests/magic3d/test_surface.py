"""Baked surfaces are closed: holes left by vertex merging or decimation are filled, topology reported."""

from __future__ import annotations

import numpy as np
import trimesh

from magic3d.surface import boundary_loops, close_holes, self_intersections, surface_report


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


def concatenated(*meshes: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
    return (np.concatenate([m.vertices for m in meshes]),
            np.concatenate([m.faces + o for m, o in zip(meshes, offsets, strict=True)]))


def test_clean_sphere_and_torus_do_not_intersect_themselves():
    for shape in (trimesh.creation.icosphere(subdivisions=3), trimesh.creation.torus(1.0, 0.3)):
        assert self_intersections(shape.vertices, shape.faces) == 0


def test_interpenetrating_spheres_intersect_and_separate_ones_do_not():
    a = trimesh.creation.icosphere(subdivisions=3)
    overlapping = a.copy()
    overlapping.apply_translation([1.0, 0.1, 0.0])
    apart = a.copy()
    apart.apply_translation([2.01, 0.0, 0.0])  # a gap of 0.01 between the unit spheres
    assert self_intersections(*concatenated(a, overlapping)) > 20  # a whole circle of crossing pairs
    assert self_intersections(*concatenated(a, apart)) == 0


def test_a_vertex_pushed_through_the_far_side_intersects():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices.copy()
    vertices[0] = -1.3 * vertices[0]  # its fan now pierces the opposite side
    assert self_intersections(vertices, sphere.faces) > 0


def test_single_pairs_crossing_touching_coplanar_and_sharing_a_vertex():
    flat = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], dtype=float)
    cases = {
        "crossing": (np.array([[0.5, 0.5, -1], [0.5, 0.5, 1], [1.5, 0.5, 1]]), 1),
        "above": (np.array([[0.5, 0.5, 0.1], [0.5, 0.5, 1], [1.5, 0.5, 1]]), 0),
        "coplanar overlap": (np.array([[0.5, 0.5, 0], [3, 0.5, 0], [0.5, 3, 0]]), 1),
        "coplanar apart": (np.array([[3, 3, 0], [4, 3, 0], [3, 4, 0]]), 0),
        "beside the hypotenuse": (np.array([[1.1, 1.1, -1], [1.1, 1.1, 1], [3, 3, 0]]), 0),
    }
    for name, (other, expected) in cases.items():
        vertices = np.concatenate([flat, other])
        assert self_intersections(vertices, np.array([[0, 1, 2], [3, 4, 5]])) == expected, name
    # Sharing a vertex (adjacent in the mesh) is never counted, even where the triangles cross.
    vertices = np.concatenate([flat, [[0.5, 0.5, -1], [0.5, 0.5, 1]]])
    assert self_intersections(vertices, np.array([[0, 1, 2], [0, 3, 4]])) == 0


def test_the_grid_finds_every_crossing_a_brute_force_edge_test_finds():
    rng = np.random.default_rng(1)
    count = 300
    triangles = rng.random((count, 1, 3)) + 0.08 * rng.standard_normal((count, 3, 3))
    i, j = np.triu_indices(count, 1)

    def pierces(p: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Whether an edge of p crosses q (Moller-Trumbore on segments); generic position, so
        two triangles meet exactly when an edge of one crosses the other."""
        hit = np.zeros(len(p), dtype=bool)
        e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
        for k in range(3):
            origin, d = p[:, k], p[:, (k + 1) % 3] - p[:, k]
            h = np.cross(d, e2)
            inv = 1.0 / (e1 * h).sum(1)
            s = origin - q[:, 0]
            u, qv = inv * (s * h).sum(1), np.cross(s, e1)
            w, t = inv * (d * qv).sum(1), inv * (e2 * qv).sum(1)
            hit |= (u >= 0) & (w >= 0) & (u + w <= 1) & (t >= 0) & (t <= 1)
        return hit

    expected = int((pierces(triangles[i], triangles[j]) | pierces(triangles[j], triangles[i])).sum())
    assert expected > 50  # the soup really crosses itself
    faces = np.arange(3 * count).reshape(count, 3)
    assert self_intersections(triangles.reshape(-1, 3), faces) == expected


def test_untangle_pulls_a_pierced_spike_back_and_moves_only_its_neighbourhood():
    from magic3d.surface import untangle

    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices.copy()
    vertices[0] = -1.3 * vertices[0]
    assert self_intersections(vertices, sphere.faces) > 0
    fixed, left = untangle(vertices, sphere.faces)
    assert left == 0 and self_intersections(fixed, sphere.faces) == 0
    report = surface_report(fixed, sphere.faces)
    assert report.watertight and report.genus == 0 and report.bodies == 1
    # Far from the spike's root and from where it came out, the surface has not moved at all.
    axis = sphere.vertices[0] / np.linalg.norm(sphere.vertices[0])
    far = np.abs(sphere.vertices @ axis) < 0.5
    assert far.sum() > 100
    np.testing.assert_array_equal(fixed[far], vertices[far])
    moved = np.linalg.norm(fixed - vertices, axis=1) > 0
    assert moved[0] and moved.sum() < len(vertices) // 3


def test_untangle_leaves_a_clean_surface_untouched():
    from magic3d.surface import untangle

    torus = trimesh.creation.torus(1.0, 0.3)
    fixed, left = untangle(torus.vertices, torus.faces)
    assert left == 0 and fixed is torus.vertices


def test_bake_never_hands_on_a_surface_that_passes_through_itself():
    import torch

    from exporters.common import weld
    from magic3d.bake import BakeConfig, bake

    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = sphere.vertices.copy()
    vertices[0] = -1.3 * vertices[0]
    mesh = bake(torch.tensor(vertices, dtype=torch.float32), torch.tensor(sphere.faces), lambda p: p * 0 + 0.5,
                BakeConfig(texture_size=64, normal_map=False))
    assert mesh.metadata["surface"]["self_intersections"] == 0 and mesh.metadata["surface"]["watertight"]
    points, of_vertex = weld(mesh.vertices)
    assert self_intersections(points, of_vertex[mesh.faces]) == 0


def fans_are_disks(faces: np.ndarray) -> bool:
    """Every vertex's faces form one fan (no pinch point where two sheets meet)."""
    for v in np.unique(faces):
        around = faces[(faces == v).any(1)]
        rims = [tuple(sorted(int(w) for w in f if w != v)) for f in around]
        graph = trimesh.graph.nx.Graph(rims)
        if trimesh.graph.nx.number_connected_components(graph) != 1:
            return False
    return True


def test_weld_keeps_two_closed_sheets_that_touch_apart():
    from magic3d.bake import clean_mesh

    # Two spheres whose vertices nearest each other fall in one merge cell: merging by position
    # alone pinched them into one vertex shared by two sheets (non-manifold).
    a = trimesh.creation.icosphere(subdivisions=1)
    b = a.copy()
    tip_a = int(np.argmax(a.vertices[:, 0]))
    b.apply_translation(a.vertices[tip_a] - b.vertices[int(np.argmin(b.vertices[:, 0]))] + [2e-6, 0, 0])
    both = trimesh.util.concatenate([a, b])
    v, f, stats = clean_mesh(both.vertices, both.faces, merge_distance=1e-5, min_component_fraction=0.0)
    report = surface_report(v, f)
    assert stats.merged_vertices == 0 and len(f) == len(both.faces)
    assert report.watertight and report.bodies == 2 and fans_are_disks(f)


def test_weld_collapses_a_short_edge_only_where_the_surface_stays_a_manifold():
    from magic3d.bake import clean_mesh

    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = sphere.vertices.copy()
    a, b = (int(x) for x in sphere.edges_unique[0])
    v[b] = v[a] + 1e-7  # an edge far shorter than merge_distance: its two faces collapse
    out_v, out_f, stats = clean_mesh(v, sphere.faces, merge_distance=1e-5, min_component_fraction=0.0)
    report = surface_report(out_v, out_f)
    assert stats.merged_vertices == 1 and len(out_f) == len(sphere.faces) - 2
    assert report.watertight and report.genus == 0 and fans_are_disks(out_f)
    # A tetrahedron's edges fail the link condition (its ends share a third neighbour off the
    # edge's two faces): collapsing one would fold the rest onto itself, so it stays.
    tet = trimesh.Trimesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]]),
                          np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]))
    tv = tet.vertices.copy()
    tv[1] = tv[0] + 1e-7
    out_v, out_f, stats = clean_mesh(tv, tet.faces, merge_distance=1e-5, min_component_fraction=0.0)
    assert stats.merged_vertices == 0 and len(out_f) == 4 and surface_report(out_v, out_f).watertight


def test_mend_cuts_an_edge_of_four_faces_out_and_closes_the_holes():
    from magic3d.surface import mend_nonmanifold

    # Two boxes that share one edge (x = y = 1): that edge has four faces.
    a = trimesh.creation.box(bounds=[[0, 0, 0], [1, 1, 1]])
    b = trimesh.creation.box(bounds=[[1, 1, 0], [2, 2, 1]])
    joined = trimesh.Trimesh(*concatenated(a, b), process=True)  # the shared corners merged
    before = surface_report(joined.vertices, joined.faces)
    assert before.nonmanifold_edges == 1 and not before.watertight
    after = surface_report(*mend_nonmanifold(np.asarray(joined.vertices), np.asarray(joined.faces)))
    assert after.watertight and after.nonmanifold_edges == 0 and after.boundary_edges == 0
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v, f = mend_nonmanifold(sphere.vertices, sphere.faces)
    assert np.array_equal(f, sphere.faces) and np.array_equal(v, sphere.vertices)  # nothing to mend: unchanged


def test_bake_mends_the_edges_decimation_collapses_two_sheets_onto():
    import fast_simplification
    import torch

    from magic3d.bake import BakeConfig, bake
    from magic3d.fields.dmtet import DMTet

    dmtet = DMTet(64)
    p = dmtet.grid_vertices
    bumps = torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(0))
    cell = ((p + 1) / 2 * 7).round().long()
    with torch.no_grad():  # a lumpy ball, as SDS leaves one
        dmtet.sdf.copy_(p.norm(dim=-1) - 0.6 + 0.08 * bumps[cell[:, 0], cell[:, 1], cell[:, 2]])
    vertices, faces = (t.detach() for t in dmtet.extract())
    # The decimator alone leaves edges of more than two faces on this surface.
    v, f = fast_simplification.simplify(vertices.numpy(), faces.numpy().astype(np.int32), 1 - 2000 / len(faces))
    assert surface_report(*close_holes(np.asarray(v, np.float64), np.asarray(f, np.int64))).nonmanifold_edges > 0
    mesh = bake(vertices, faces, lambda q: q * 0 + 0.5, BakeConfig(texture_size=64, face_budget=2000))
    report = mesh.metadata["surface"]
    assert report["watertight"] and report["nonmanifold_edges"] == 0 and len(mesh.faces) < 2500
