"""The normal map carries the full-resolution surface's detail onto the decimated mesh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from magic3d.bake import BakeConfig, bake, texel_samples
from magic3d.normal_map import unit, vertex_frames


def bumpy_sphere(subdivisions: int = 5) -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = sphere.vertices
    bumps = 1.0 + 0.04 * np.sin(10 * v[:, 0]) * np.sin(10 * v[:, 1]) * np.sin(10 * v[:, 2] + 1.0)
    return trimesh.Trimesh(v * bumps[:, None], sphere.faces, process=False)


def baked(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    return bake(torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces), lambda p: p * 0 + 0.6,
                BakeConfig(texture_size=192, face_budget=face_budget, dilate_px=4))


def angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((unit(a) * unit(b)).sum(1), -1.0, 1.0)))


@pytest.fixture(scope="module")
def detailed():
    high = bumpy_sphere()
    return high, baked(high, face_budget=600)


def test_decoded_normals_follow_the_full_resolution_surface_not_the_decimated_one(detailed):
    high, low = detailed
    assert len(low.faces) <= 700 < len(high.faces)
    image = low.visual.material.normalTexture
    assert image is not None and image.size == (192, 192)
    uv = np.asarray(low.visual.uv)
    positions, faces = np.asarray(low.vertices), np.asarray(low.faces)
    texels = texel_samples(positions, faces, uv, 192)
    rows, cols = np.nonzero(texels.covered)
    pick = np.random.default_rng(0).choice(len(rows), 1500, replace=False)
    points = texels.points[0][pick]
    bary = texels.bary(uv, faces)[pick]
    corners = faces[texels.tri[pick]]
    normals = np.asarray(low.vertex_normals)
    tangent, bitangent = vertex_frames(positions, faces, uv, normals)
    n = unit((bary[..., None] * normals[corners]).sum(1))
    t = unit((bary[..., None] * tangent[corners]).sum(1))
    b = unit((bary[..., None] * bitangent[corners]).sum(1))
    texel = np.asarray(image, dtype=np.float64)[::-1][rows[pick], cols[pick]] / 255.0 * 2.0 - 1.0
    decoded = t * texel[:, :1] + b * texel[:, 1:2] + n * texel[:, 2:3]
    _, _, tri = trimesh.proximity.closest_point(high, points)
    truth = high.face_normals[tri]
    with_map, without = angle_deg(decoded, truth).mean(), angle_deg(n, truth).mean()
    assert with_map < 0.5 * without, (with_map, without)
    assert with_map < 6.0


def test_every_format_wires_the_normal_map(detailed, tmp_path):
    from pxr import Usd, UsdShade

    from exporters import AssetInfo, export_asset

    _, low = detailed
    files = export_asset(low, tmp_path, ["usdc", "glb", "obj"], AssetInfo(name="bumpy"))
    stage = Usd.Stage.Open(str(files["usdc"]))
    surface = UsdShade.Shader(stage.GetPrimAtPath("/bumpy/Materials/material/PreviewSurface"))
    source = surface.GetInput("normal").GetConnectedSources()[0][0].source
    normal = UsdShade.Shader(source.GetPrim())
    assert normal.GetInput("sourceColorSpace").Get() == "raw"
    assert tuple(normal.GetInput("bias").Get()) == (-1.0, -1.0, -1.0, 0.0)
    assert (tmp_path / "Payload" / "Textures" / "normal.png").is_file()
    assert trimesh.load(files["glb"], force="mesh").visual.material.normalTexture is not None
    assert "map_Bump -bm 1.000000 asset_normal.png" in (tmp_path / "asset.mtl").read_text()


def test_no_normal_map_when_nothing_was_decimated(tmp_path):
    mesh = baked(bumpy_sphere(3), face_budget=100_000)
    assert mesh.visual.material.normalTexture is None


def test_the_normal_map_survives_the_baked_glb_that_re_export_reads(detailed, tmp_path):
    import numpy as np

    from exporters import load_asset, write_glb

    _, low = detailed
    back = load_asset(write_glb(low, tmp_path / "baked.glb"))
    got = back.visual.material.normalTexture
    assert got is not None
    assert np.array_equal(np.asarray(got.convert("RGB")), np.asarray(low.visual.material.normalTexture.convert("RGB")))
