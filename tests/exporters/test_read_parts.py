"""Reading other tools' files: each part with its own material, textures wrapped as the file says,
and the turntable's pixels showing each material where it belongs. Every file is built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

pxr = pytest.importorskip("pxr")
from pxr import Gf, Sdf, Usd, UsdGeom, UsdShade  # noqa: E402

from exporters import AssetInfo, export_asset  # noqa: E402
from exporters.read import load_asset, load_parts  # noqa: E402
from exporters.scene import WorldEntry, asset_extent, write_world  # noqa: E402
from renderers.turntable import render_turntable  # noqa: E402

RED, GREEN, BLUE = (0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.1, 0.9)


def front_view(path: Path, resolution: int = 64) -> np.ndarray:
    """The preview's first frame, unlit, seen from +Z: image x is +x, image rows go down in y."""
    return render_turntable(load_parts(path), frames=1, resolution=resolution, elevation=0.0, lit=False)[0].astype(int)


def near(pixel: np.ndarray, rgb: tuple[float, float, float], tol: int = 6) -> bool:
    return bool(np.abs(pixel - np.round(np.asarray(rgb) * 255)).max() <= tol)


def quad(stage, path: str, x0: float, x1: float, y0: float = -1.0, y1: float = 1.0):
    mesh = UsdGeom.Mesh.Define(stage, path)
    mesh.CreatePointsAttr([(x0, y0, 0), (x1, y0, 0), (x1, y1, 0), (x0, y1, 0)])
    mesh.CreateFaceVertexCountsAttr([4])
    mesh.CreateFaceVertexIndicesAttr([0, 1, 2, 3])
    return mesh


def constant_material(stage, path: str, rgb) -> UsdShade.Material:
    material = UsdShade.Material.Define(stage, path)
    shader = UsdShade.Shader.Define(stage, f"{path}/surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).Set(Gf.Vec3f(*rgb))
    material.CreateSurfaceOutput().ConnectToSource(shader.CreateOutput("surface", Sdf.ValueTypeNames.Token))
    return material


def textured_material(stage, path: str, file: str, wrap: str = "repeat", fallback=None,
                      scale2d: tuple[float, float] | None = None) -> UsdShade.Material:
    material = UsdShade.Material.Define(stage, path)
    shader = UsdShade.Shader.Define(stage, f"{path}/surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    reader = UsdShade.Shader.Define(stage, f"{path}/uv")
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.Token).Set("st")
    texture = UsdShade.Shader.Define(stage, f"{path}/texture")
    texture.CreateIdAttr("UsdUVTexture")
    texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(file)
    st = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)
    if scale2d is not None:  # a UsdTransform2d between the primvar and the texture, as Blender writes
        move = UsdShade.Shader.Define(stage, f"{path}/mapping")
        move.CreateIdAttr("UsdTransform2d")
        move.CreateInput("in", Sdf.ValueTypeNames.Float2).ConnectToSource(st)
        move.CreateInput("scale", Sdf.ValueTypeNames.Float2).Set(Gf.Vec2f(*scale2d))
        st = move.CreateOutput("result", Sdf.ValueTypeNames.Float2)
    texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st)
    texture.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set(wrap)
    texture.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set(wrap)
    if fallback is not None:
        texture.CreateInput("fallback", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*fallback))
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(
        texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3))
    material.CreateSurfaceOutput().ConnectToSource(shader.CreateOutput("surface", Sdf.ValueTypeNames.Token))
    return material


def bind(prim, material) -> None:
    UsdShade.MaterialBindingAPI.Apply(prim).Bind(material)


def checker(cells: int = 2, px: int = 8) -> Image.Image:
    """``cells`` x ``cells`` black and white squares of ``px`` texels; the top-left one black."""
    board = (np.indices((cells, cells)).sum(0) % 2).repeat(px, 0).repeat(px, 1)
    return Image.fromarray((board * 255).astype(np.uint8)).convert("RGB")


def transitions(row: np.ndarray) -> int:
    """How often a row of pixels flips between dark and light."""
    light = row.mean(-1) > 127
    return int(np.count_nonzero(light[1:] != light[:-1]))


def test_two_meshes_with_two_materials_preview_each_in_its_own_colour(tmp_path: Path) -> None:
    path = tmp_path / "two.usda"
    stage = Usd.Stage.CreateNew(str(path))
    left = quad(stage, "/Root/left", -1.0, -0.1)
    right = quad(stage, "/Root/right", 0.1, 1.0)
    bind(left.GetPrim(), constant_material(stage, "/Root/Looks/red", RED))
    bind(right.GetPrim(), constant_material(stage, "/Root/Looks/blue", BLUE))
    stage.GetRootLayer().Save()

    parts = load_parts(path)
    assert [p.material.base_color[:3] for p in parts] == [pytest.approx(RED), pytest.approx(BLUE)]
    img = front_view(path)
    assert near(img[32, 16], RED) and near(img[32, 48], BLUE), (img[32, 16], img[32, 48])
    # One mesh for single-mesh callers: the two colours survive as vertex colours.
    merged = load_asset(path)
    colours = np.asarray(merged.visual.vertex_colors)[:, :3]
    distinct = np.unique(colours, axis=0).astype(float)
    np.testing.assert_allclose(distinct, np.asarray([BLUE, RED]) * 255, atol=1)


def test_geom_subsets_bound_to_materials_colour_their_faces(tmp_path: Path) -> None:
    path = tmp_path / "subsets.usda"
    stage = Usd.Stage.CreateNew(str(path))
    mesh = UsdGeom.Mesh.Define(stage, "/Root/strip")
    xs = np.linspace(-1.0, 1.0, 4)
    mesh.CreatePointsAttr([(x, y, 0.0) for y in (-0.5, 0.5) for x in xs])
    mesh.CreateFaceVertexCountsAttr([4, 4, 4])
    mesh.CreateFaceVertexIndicesAttr([0, 1, 5, 4, 1, 2, 6, 5, 2, 3, 7, 6])
    bind(mesh.GetPrim(), constant_material(stage, "/Root/Looks/blue", BLUE))  # the faces no subset claims
    binding = UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim())
    for name, faces, rgb in (("red", [0], RED), ("green", [2], GREEN)):
        subset = binding.CreateMaterialBindSubset(name, faces, UsdGeom.Tokens.face)
        bind(subset.GetPrim(), constant_material(stage, f"/Root/Looks/{name}", rgb))
    stage.GetRootLayer().Save()

    assert len(load_parts(path)) == 3
    img = front_view(path)
    row = 32
    assert near(img[row, 12], RED) and near(img[row, 32], BLUE) and near(img[row, 52], GREEN), img[row, ::10]


def test_repeating_texture_with_uvs_past_one_shows_every_repeat(tmp_path: Path) -> None:
    checker().save(tmp_path / "checker.png")
    for wrap, expect in (("repeat", 5), ("clamp", 1)):
        path = tmp_path / f"{wrap}.usda"
        stage = Usd.Stage.CreateNew(str(path))
        mesh = quad(stage, "/Root/quad", -1.0, 1.0)
        st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
        st.Set([(0, 0), (3, 0), (3, 3), (0, 3)])
        bind(mesh.GetPrim(), textured_material(stage, "/Root/Looks/checker", "./checker.png", wrap))
        stage.GetRootLayer().Save()
        part = load_parts(path)[0]
        assert (part.material.wrap_s, part.material.wrap_t) == (wrap, wrap)
        img = front_view(path, 96)
        # UVs 0..3 over a 2x2 checker: six squares across when it repeats, one edge past u = 1 when clamped.
        assert transitions(img[40, 20:76]) == expect, (wrap, img[40, 20:76:4, 0])


def test_transform2d_scale_repeats_the_texture(tmp_path: Path) -> None:
    checker().save(tmp_path / "checker.png")
    path = tmp_path / "mapped.usda"
    stage = Usd.Stage.CreateNew(str(path))
    mesh = quad(stage, "/Root/quad", -1.0, 1.0)
    st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex)
    st.Set([(0, 0), (1, 0), (1, 1), (0, 1)])
    bind(mesh.GetPrim(), textured_material(stage, "/Root/Looks/checker", "./checker.png", scale2d=(3.0, 3.0)))
    stage.GetRootLayer().Save()
    np.testing.assert_allclose(load_parts(path)[0].uv.max(0), [3.0, 3.0])
    assert transitions(front_view(path, 96)[40, 20:76]) == 5


def test_missing_texture_reads_as_the_textures_fallback_colour(tmp_path: Path) -> None:
    path = tmp_path / "fallback.usda"
    stage = Usd.Stage.CreateNew(str(path))
    mesh = quad(stage, "/Root/quad", -1.0, 1.0)
    UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.vertex).Set(
        [(0, 0), (1, 0), (1, 1), (0, 1)])
    bind(mesh.GetPrim(), textured_material(stage, "/Root/Looks/gone", "./nowhere.png", fallback=(*GREEN, 1.0)))
    stage.GetRootLayer().Save()
    assert near(front_view(path)[32, 32], GREEN)


def test_display_color_without_a_material(tmp_path: Path) -> None:
    path = tmp_path / "display.usda"
    stage = Usd.Stage.CreateNew(str(path))
    mesh = quad(stage, "/Root/quad", -1.0, 1.0)
    mesh.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex).Set([RED, BLUE, BLUE, RED])
    stage.GetRootLayer().Save()
    img = front_view(path)
    assert img[32, 14, 0] > 180 > img[32, 14, 2] and img[32, 50, 2] > 180 > img[32, 50, 0], (img[32, 14], img[32, 50])


def test_world_stage_of_assets_previews_each_asset_in_its_colour(tmp_path: Path) -> None:
    entries = []
    for name, rgb in (("red_box", RED), ("blue_box", BLUE), ("green_box", GREEN)):
        box = trimesh.creation.box(extents=(1, 1, 1))
        box.visual = trimesh.visual.ColorVisuals(box, face_colors=[*np.round(np.asarray(rgb) * 255).astype(int), 255])
        files = export_asset(box, tmp_path / name, ["usdc"], AssetInfo(name=name))
        lo, hi = asset_extent(files["usdc"])
        entries.append(WorldEntry(name=name, asset_path=files["usdc"], extent_min=lo, extent_max=hi))
    world = write_world(entries, tmp_path / "world.usda", layout=None)
    parts = load_parts(world)
    assert len(parts) == 3
    frame = render_turntable(parts, frames=1, resolution=96, elevation=89.0, lit=False)[0].astype(int)
    for rgb in (RED, GREEN, BLUE):
        assert sum(np.allclose(p.material.base_color[:3], rgb, atol=2 / 255) for p in parts) == 1
        # Seen from above, each box covers a patch of the frame in its own colour.
        patch = sum(near(px, rgb, 8) for px in frame.reshape(-1, 3))
        assert patch > 100, (rgb, patch)


def test_ply_vertex_colours_and_stl(tmp_path: Path) -> None:
    left = trimesh.creation.box(extents=(0.8, 1, 0.2))
    left.apply_translation([-0.5, 0, 0])
    right = left.copy()
    right.apply_translation([1.0, 0, 0])
    both = trimesh.util.concatenate([left, right])
    colours = np.where(both.vertices[:, :1] < 0, [255, 20, 20, 255], [20, 20, 255, 255]).astype(np.uint8)
    both.visual = trimesh.visual.ColorVisuals(both, vertex_colors=colours)
    ply = tmp_path / "colours.ply"
    ply.write_bytes(both.export(file_type="ply"))
    part = load_parts(ply)[0]
    assert len(part.vertices) == 16 and part.colors is not None
    img = front_view(ply)
    assert img[32, 18, 0] > 200 > img[32, 18, 2] and img[32, 46, 2] > 200 > img[32, 46, 0], (img[32, 18], img[32, 46])

    stl = tmp_path / "plain.stl"
    stl.write_bytes(left.export(file_type="stl"))
    [part] = load_parts(stl)
    assert part.material is None and len(part.faces) == 12
    assert near(front_view(stl)[32, 32], (0.75, 0.75, 0.75), 3)  # no colour in the file: light grey


def test_gltf_with_bin_reads_every_mesh_with_its_material_transform_and_sampler(tmp_path: Path) -> None:
    scene = trimesh.Scene()
    image = checker()
    for name, x, rgb in (("red", -0.6, RED), ("blue", 0.6, BLUE)):
        box = trimesh.creation.box(extents=(1, 1, 1))
        uv = (box.vertices[:, :2] + 0.5) * 3.0  # 0..3: past the edge of the texture
        material = trimesh.visual.material.PBRMaterial(
            name=name, baseColorTexture=image, baseColorFactor=[*np.round(np.asarray(rgb) * 255).astype(int), 255])
        box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
        scene.add_geometry(box, node_name=name, geom_name=name,
                           transform=trimesh.transformations.translation_matrix([x, 0, 0]))
    files = scene.export(file_type="gltf")
    header = json.loads(files["model.gltf"])
    header["samplers"] = [{"wrapS": 33071, "wrapT": 33648}]  # CLAMP_TO_EDGE, MIRRORED_REPEAT
    for texture in header["textures"]:
        texture["sampler"] = 0
    files["model.gltf"] = json.dumps(header).encode()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    parts = sorted(load_parts(tmp_path / "model.gltf"), key=lambda p: p.vertices[:, 0].mean())
    assert [p.material.name for p in parts] == ["red", "blue"]
    assert [p.material.base_color[:3] for p in parts] == [pytest.approx(RED, abs=3e-3), pytest.approx(BLUE, abs=3e-3)]
    assert all((p.material.wrap_s, p.material.wrap_t) == ("clamp", "mirror") for p in parts)
    np.testing.assert_allclose([p.vertices[:, 0].mean() for p in parts], [-0.6, 0.6], atol=1e-6)
    assert np.asarray(parts[0].material.image).shape == (16, 16, 3)
    img = render_turntable(parts, frames=1, resolution=64, elevation=0.0, lit=False)[0].astype(int)
    assert img[32, 14, 0] > 2 * img[32, 14, 2] and img[32, 50, 2] > 2 * img[32, 50, 0]


def test_gltf_texture_transform_moves_the_uvs(tmp_path: Path) -> None:
    mesh = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    mesh.visual = trimesh.visual.TextureVisuals(
        uv=[[0, 0], [1, 0], [1, 1], [0, 1]], material=trimesh.visual.material.PBRMaterial(baseColorTexture=checker()))
    files = trimesh.Scene(mesh).export(file_type="gltf")
    header = json.loads(files["model.gltf"])
    header["extensionsUsed"] = ["KHR_texture_transform"]
    texture = header["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]
    texture["extensions"] = {"KHR_texture_transform": {"scale": [3.0, 3.0], "offset": [0.5, 0.0]}}
    files["model.gltf"] = json.dumps(header).encode()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    [part] = load_parts(tmp_path / "model.gltf")
    # glTF's v runs down: (u, v_gltf) -> (3u + 0.5, 3 v_gltf), and trimesh's v is 1 - v_gltf.
    np.testing.assert_allclose(part.uv[:, 0], 3 * np.array([0, 1, 1, 0]) + 0.5, atol=1e-6)
    np.testing.assert_allclose(part.uv[:, 1], 1 - 3 * (1 - np.array([0, 0, 1, 1])), atol=1e-6)
    img = render_turntable([part], frames=1, resolution=96, elevation=0.0, lit=False)[0]
    assert transitions(img[40, 20:76].astype(int)) == 5


def test_glb_default_sampler_repeats(tmp_path: Path) -> None:
    mesh = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    mesh.visual = trimesh.visual.TextureVisuals(
        uv=[[0, 0], [3, 0], [3, 3], [0, 3]], material=trimesh.visual.material.PBRMaterial(baseColorTexture=checker()))
    path = tmp_path / "box.glb"
    path.write_bytes(trimesh.Scene(mesh).export(file_type="glb"))
    header_samplers = {(p.material.wrap_s, p.material.wrap_t) for p in load_parts(path)}
    assert header_samplers == {("repeat", "repeat")}
    img = render_turntable(load_parts(path), frames=1, resolution=96, elevation=0.0, lit=False)[0]
    assert transitions(img[40, 20:76].astype(int)) == 5


def test_obj_with_two_materials_draws_each_where_it_is_used(tmp_path: Path) -> None:
    (tmp_path / "two.mtl").write_text("newmtl red\nKd 0.9 0.1 0.1\nnewmtl blue\nKd 0.1 0.1 0.9\n")
    vertices = "".join(f"v {x} {y} 0\n" for x0, x1 in ((-1, -0.1), (0.1, 1)) for x, y in
                       ((x0, -1), (x1, -1), (x1, 1), (x0, 1)))
    (tmp_path / "two.obj").write_text(f"mtllib two.mtl\n{vertices}usemtl red\nf 1 2 3 4\nusemtl blue\nf 5 6 7 8\n")
    parts = load_parts(tmp_path / "two.obj")
    assert sorted(len(p.vertices) for p in parts) == [4, 4]  # no unused vertices carried along
    img = front_view(tmp_path / "two.obj")
    assert near(img[32, 16], RED, 3) and near(img[32, 48], BLUE, 3), (img[32, 16], img[32, 48])


def test_material_interface_inputs_and_instanced_references(tmp_path: Path) -> None:
    """A colour that reaches the shader through the material's own input, on an asset that a
    stage references twice as instances and once more with another colour."""
    asset = tmp_path / "asset.usda"
    stage = Usd.Stage.CreateNew(str(asset))
    root = UsdGeom.Xform.Define(stage, "/Asset")
    stage.SetDefaultPrim(root.GetPrim())
    mesh = quad(stage, "/Asset/quad", -0.4, 0.4, -0.4, 0.4)
    material = UsdShade.Material.Define(stage, "/Asset/Looks/paint")
    tint = material.CreateInput("tint", Sdf.ValueTypeNames.Color3f)
    tint.Set(Gf.Vec3f(*RED))
    shader = UsdShade.Shader.Define(stage, "/Asset/Looks/paint/surface")
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f).ConnectToSource(tint)
    material.CreateSurfaceOutput().ConnectToSource(shader.CreateOutput("surface", Sdf.ValueTypeNames.Token))
    bind(mesh.GetPrim(), material)
    stage.GetRootLayer().Save()

    world = tmp_path / "world.usda"
    stage = Usd.Stage.CreateNew(str(world))
    for name, x, instanced in (("a", -1.0, True), ("b", 0.0, True), ("c", 1.0, False)):
        prim = UsdGeom.Xform.Define(stage, f"/World/{name}")
        prim.AddTranslateOp().Set(Gf.Vec3d(x, 0, 0))
        prim.GetPrim().GetReferences().AddReference("./asset.usda")
        prim.GetPrim().SetInstanceable(instanced)
    # The third copy overrides the material's input: it alone is blue.
    UsdShade.Material(stage.GetPrimAtPath("/World/c/Looks/paint")).GetInput("tint").Set(Gf.Vec3f(*BLUE))
    stage.GetRootLayer().Save()

    parts = sorted(load_parts(world), key=lambda p: p.vertices[:, 0].mean())
    assert len(parts) == 3
    assert [p.material.base_color[:3] for p in parts] == [pytest.approx(RED), pytest.approx(RED), pytest.approx(BLUE)]
    np.testing.assert_allclose([p.vertices[:, 0].mean() for p in parts], [-1.0, 0.0, 1.0], atol=1e-6)


def test_damaged_meshes_are_refused_by_the_reader(tmp_path: Path) -> None:
    good = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False).export(
        file_type="ply", encoding="ascii").decode()
    assert "3 0 1 2" in good and "\n1.00000000 0.00000000 0.00000000\n" in good
    (tmp_path / "index.ply").write_text(good.replace("3 0 1 2", "3 0 1 7"))
    (tmp_path / "nan.ply").write_text(good.replace("\n1.00000000 0.00000000 0.00000000\n", "\nnan 0 0\n"))
    with pytest.raises(ValueError, match="past its vertices"):
        load_parts(tmp_path / "index.ply")
    with pytest.raises(ValueError, match="not finite"):
        load_parts(tmp_path / "nan.ply")
