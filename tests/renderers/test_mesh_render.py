"""Mesh rendering and turntables against scenes whose images are known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from renderers.cameras import orbit_cameras
from renderers.mesh_render import render_mesh
from renderers.shading import Light
from renderers.turntable import render_turntable, write_gif

QUADRANTS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 0]]], dtype=np.uint8)  # row 0 on top


@pytest.fixture(autouse=True)
def single_thread():
    # Two OpenMP threads on two shared, busy cores spin-wait on each other (30x slower niced).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def textured_quad() -> trimesh.Trimesh:
    verts = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], dtype=np.float64)
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    # 8x8 texels in four blocks: bilinear filtering inside a block reads one colour, whether the
    # edges repeat (glTF's default sampler, what the turntable does) or clamp.
    image = Image.fromarray(QUADRANTS.repeat(4, axis=0).repeat(4, axis=1))
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image)
    return trimesh.Trimesh(verts, [[0, 1, 2], [0, 2, 3]], visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
                           process=False)


def sphere_tensors(subdiv: int = 3, radius: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    s = trimesh.creation.icosphere(subdiv, radius=radius)
    return torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)


def test_sphere_coverage_matches_its_projected_disc():
    v, f = sphere_tensors(4, 0.7)
    n, distance, fov = 64, 3.0, 40.0
    cams = orbit_cameras([10.0], [30.0], distance, fov, n)
    out = render_mesh(v, f, cams, vertex_colors=torch.full_like(v, 0.2), background=0.0)
    # A sphere of radius r at distance d subtends a cone of half-angle asin(r/d).
    half = math.asin(0.7 / distance)
    disc_radius_px = math.tan(half) / math.tan(math.radians(fov) / 2) * n / 2
    expected = math.pi * disc_radius_px**2 / n**2
    coverage = out.alpha.mean().item()
    assert coverage == pytest.approx(expected, rel=0.03)  # icosphere facets sit slightly inside the sphere
    inside = out.alpha[..., 0] > 0.999
    assert torch.allclose(out.rgb[inside], torch.tensor(0.2))
    # Antialiased colour is the alpha blend of the surface over the background.
    assert torch.allclose(out.rgb[..., 0], 0.2 * out.alpha[..., 0], atol=1e-5)
    # Surface points lie on the sphere, normals point out, depth is the distance to the camera.
    hit = out.rast[..., 3] > 0
    r = out.points[hit].norm(dim=-1)
    assert ((r > 0.69) & (r < 0.7001)).all()
    cos = (out.normals[hit] * out.points[hit] / r.unsqueeze(-1)).sum(-1)
    assert (cos > 0.99).all()
    dist = (out.points[hit] - cams.positions[0]).norm(dim=-1)
    assert torch.allclose(out.depth[..., 0][hit], dist, atol=1e-5)


def test_albedo_fn_is_queried_only_at_covered_pixels_and_diffuse_follows_lambert():
    v, f = sphere_tensors(3, 0.8)
    cams = orbit_cameras([0.0], [0.0], 3.0, 45.0, 32)
    seen = []

    def albedo_fn(points):
        seen.append(points.shape[0])
        return torch.ones_like(points) * torch.tensor([0.5, 1.0, 0.25])

    light = Light(position=cams.positions.clone(), ambient=0.2, strength=0.8)
    out = render_mesh(v, f, cams, albedo_fn=albedo_fn, mode="diffuse", light=light, antialias=False, smooth_normals=True)
    hit = out.rast[..., 3] > 0
    assert seen == [int(hit.sum())]
    to_light = torch.nn.functional.normalize(light.position[0] - out.points[hit], dim=-1)
    lambert = (out.normals[hit] * to_light).sum(-1).clamp(min=0)
    expected = (torch.tensor([0.5, 1.0, 0.25]) * (0.2 + 0.8 * lambert).unsqueeze(-1)).clamp(max=1)
    assert torch.allclose(out.rgb[hit], expected, atol=1e-5)
    # The centre of the disc faces the light head-on.
    assert torch.allclose(out.rgb[0, 16, 16], torch.tensor([0.5, 1.0, 0.25]), atol=0.01)


def test_textured_quad_shows_its_texture_the_right_way_up():
    frames = render_turntable(textured_quad(), frames=1, resolution=32, elevation=0.0, lit=False)
    img = frames[0].astype(int)
    assert img.shape == (32, 32, 3) and frames[0].dtype == np.uint8
    # The quad's bounding sphere fills the view: its quadrants sit around the image centre.
    for (row, col), colour in {(10, 10): QUADRANTS[0, 0], (10, 21): QUADRANTS[0, 1],
                               (21, 10): QUADRANTS[1, 0], (21, 21): QUADRANTS[1, 1]}.items():
        assert np.abs(img[row, col] - colour).max() <= 2, (row, col, img[row, col])
    assert (img[0, 0] == 255).all()  # the white background outside the quad


def test_lit_turntable_of_a_coloured_cube_and_its_gif(tmp_path):
    cube = trimesh.creation.box(extents=(1, 1, 1))
    cube.visual.face_colors = [200, 30, 30, 255]
    frames = render_turntable(cube, frames=4, resolution=24)
    assert len(frames) == 4
    centre = frames[0][12, 12].astype(int)
    assert centre[0] > 2 * centre[1] and centre[0] > 2 * centre[2]  # red, shaded
    assert not np.array_equal(frames[0], frames[1])  # the object turns
    path = write_gif(frames, tmp_path / "preview.gif")
    assert [p.name for p in tmp_path.iterdir()] == ["preview.gif"]  # no temporary left behind
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (24, 24)
        first = np.asarray(gif.convert("RGB")).astype(int)
    assert np.abs(first - frames[0]).mean() < 8  # GIF palette quantisation only


def test_texture_wrap_modes_read_uvs_past_the_edge_as_usd_and_gltf_say():
    from renderers.mesh_render import Texture, sample_texture
    from renderers.raster import get_rasterizer

    ramp = torch.arange(4, dtype=torch.float32).view(1, 4, 1).expand(4, 4, 3) / 3.0  # columns 0, 1/3, 2/3, 1
    u = torch.tensor([0.125, 1.125, -0.875, 1.875, 0.0])  # texel 0, past either edge, the seam at u = 0
    uv = torch.stack([u, torch.full_like(u, 0.5)], dim=-1)
    raster = get_rasterizer("cpu")
    read = {w: sample_texture(raster, Texture(ramp, wrap_s=w, wrap_t="clamp"), uv)[:, 0] for w in
            ("repeat", "clamp", "mirror", "black")}
    assert torch.allclose(read["repeat"], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.5]), atol=1e-6)  # seam: both edges
    assert torch.allclose(read["clamp"], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(read["mirror"], torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]), atol=1e-6)  # u -> 0.875 twice
    assert torch.allclose(read["black"], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0]), atol=1e-6)
    with pytest.raises(ValueError, match="wrap"):
        sample_texture(raster, Texture(ramp, wrap_s="tile"), uv)  # type: ignore[arg-type]


def test_closed_mesh_skips_faces_turned_away_without_changing_the_image():
    """``closed`` culls back faces: the same turntable of a closed sphere, and an open hemisphere
    seen from inside (back faces only) vanishes, which shows the culling really happens."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    sphere.visual.vertex_colors = np.tile([200, 60, 40, 255], (len(sphere.vertices), 1))
    plain = np.stack(render_turntable(sphere, frames=4, resolution=48)).astype(float)
    culled = np.stack(render_turntable(sphere, frames=4, resolution=48, closed=True)).astype(float)
    assert (np.abs(plain - culled).max(-1) > 2).mean() < 1e-3  # z-ties on the silhouette at most

    cams = orbit_cameras([0.0], [0.0], 3.0, 40.0, 32)  # on +Z, looking at the origin
    bowl = sphere.slice_plane([0.0, 0.0, 0.0], [0.0, 0.0, -1.0])  # the far half: the camera sees its inside
    v = torch.tensor(bowl.vertices, dtype=torch.float32)
    f = torch.tensor(bowl.faces, dtype=torch.int64)
    seen = {closed: render_mesh(v, f, cams, vertex_colors=torch.ones_like(v), closed=closed).alpha.sum()
            for closed in (False, True)}
    assert seen[False] > 100 and seen[True] == 0
