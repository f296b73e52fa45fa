from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

pytest.importorskip("pxr")
from pxr import Kind, Sdf, Usd, UsdGeom, UsdShade  # noqa: E402

from exporters import AssetInfo, load_asset, write_usd, write_usdz  # noqa: E402
from exporters.common import placement  # noqa: E402
from exporters.validate import compliance_problems, nvidia_available, nvidia_problems  # noqa: E402

INFO = AssetInfo(name="a-red-ball", prompt="a red ball, shiny", seed=7, generator="magic3d", version="0.3")


@pytest.mark.parametrize("suffix", [".usdc", ".usda", ".usdz"])
def test_usd_round_trip_returns_the_source_mesh(tmp_path: Path, suffix: str, textured_mesh, same_mesh) -> None:
    mesh = textured_mesh()
    path = tmp_path / f"asset{suffix}"
    (write_usdz if suffix == ".usdz" else write_usd)(mesh, path, INFO, size_m=2.5)
    same_mesh(load_asset(path), mesh)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


@pytest.mark.parametrize("up_axis", ["Y", "Z"])
def test_usd_stage_is_scaled_placed_and_oriented(tmp_path: Path, up_axis: str, textured_mesh) -> None:
    mesh = textured_mesh()
    path = write_usd(mesh, tmp_path / "asset.usdc", INFO, up_axis=up_axis, size_m=0.3)
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == up_axis
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    points = load_asset(path, frame="stage").vertices
    up = 1 if up_axis == "Y" else 2
    size = points.max(0) - points.min(0)
    assert size.max() == pytest.approx(0.3, rel=1e-5)
    assert points[:, up].min() == pytest.approx(0.0, abs=1e-6)  # stands on the ground
    ground = [a for a in range(3) if a != up]
    np.testing.assert_allclose((points.max(0) + points.min(0))[ground] / 2, 0.0, atol=1e-6)
    expected = mesh.vertices @ placement(mesh.vertices, up_axis, 0.3)[:3, :3].T
    # Same shape up to the translation: compare centred coordinates.
    np.testing.assert_allclose(points - points.mean(0), expected - expected.mean(0), atol=1e-6)
    if up_axis == "Z":  # the front (+Z in generator space) faces -Y
        front = np.argmax(mesh.vertices[:, 2])
        assert points[front, 1] == pytest.approx(points[:, 1].min(), abs=1e-6)


def test_usd_conventions(tmp_path: Path, textured_mesh) -> None:
    path = write_usd(textured_mesh(), tmp_path / "asset.usdc", INFO)
    stage = Usd.Stage.Open(str(path))
    root = stage.GetDefaultPrim()
    assert root.GetPath() == Sdf.Path("/a_red_ball") and root.IsA(UsdGeom.Xform)
    model = Usd.ModelAPI(root)
    assert model.GetKind() == Kind.Tokens.component
    assert model.GetAssetName() == "a-red-ball" and model.GetAssetVersion() == "0.3"
    doc = root.GetDocumentation()
    assert "a red ball, shiny" in doc and "seed: 7" in doc and "magic3d" in doc
    assert [c.GetName() for c in root.GetChildren()] == ["Geometry", "Materials", "Physics"]
    assert all(c.GetTypeName() == "Scope" for c in root.GetChildren())

    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/a_red_ball/Geometry/mesh"))
    assert mesh.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    points = np.asarray(mesh.GetPointsAttr().Get())
    np.testing.assert_allclose(np.asarray(mesh.GetExtentAttr().Get()), [points.min(0), points.max(0)])
    normals = np.asarray(mesh.GetNormalsAttr().Get())
    assert normals.shape == points.shape and mesh.GetNormalsInterpolation() == UsdGeom.Tokens.vertex
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    st = UsdGeom.PrimvarsAPI(mesh).GetPrimvar("st")
    assert st.GetTypeName() == Sdf.ValueTypeNames.TexCoord2fArray and st.GetInterpolation() == "faceVarying"
    assert st.IsIndexed() and len(st.GetIndices()) == len(mesh.GetFaceVertexIndicesAttr().Get())
    assert root.GetCustomDataByKey("magic3d:prompt") == "a red ball, shiny"
    assert root.GetCustomDataByKey("magic3d:seed") == 7

    assert "MaterialBindingAPI" in mesh.GetPrim().GetAppliedSchemas()

    material, _ = UsdShade.MaterialBindingAPI(mesh.GetPrim()).ComputeBoundMaterial()
    assert material.GetPath() == Sdf.Path("/a_red_ball/Materials/material")
    surface = material.ComputeSurfaceSource()[0]
    assert surface.GetIdAttr().Get() == "UsdPreviewSurface"
    texture = UsdShade.Shader(surface.GetInput("diffuseColor").GetConnectedSources()[0][0].source.GetPrim())
    assert texture.GetIdAttr().Get() == "UsdUVTexture"
    assert texture.GetInput("sourceColorSpace").Get() == "sRGB"
    assert texture.GetInput("file").Get().path == "./Textures/albedo.png"
    assert (tmp_path / "Payload" / "Textures" / "albedo.png").is_file()
    reader = UsdShade.Shader(texture.GetInput("st").GetConnectedSources()[0][0].source.GetPrim())
    assert reader.GetIdAttr().Get() == "UsdPrimvarReader_float2"
    varname = reader.GetInput("varname")
    assert varname.GetTypeName() == Sdf.ValueTypeNames.String and varname.Get() == "st"


def test_usdz_package_holds_the_layer_and_its_texture(tmp_path: Path, textured_mesh) -> None:
    import zipfile

    path = write_usdz(textured_mesh(), tmp_path / "asset.usdz", INFO)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert names[0].endswith(".usdc") and any(n.endswith("albedo.png") for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset.usdz"]  # nothing else left behind


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("suffix", [".usdc", ".usda", ".usdz"])
def test_compliance_checker_passes(tmp_path: Path, suffix: str, textured_mesh) -> None:
    path = tmp_path / f"asset{suffix}"
    (write_usdz if suffix == ".usdz" else write_usd)(textured_mesh(), path, INFO)
    assert compliance_problems(path) == []
    if suffix == ".usdz":
        assert compliance_problems(path, arkit=True) == []


@pytest.mark.skipif(not nvidia_available(), reason="usd-validation-nvidia is a dev dependency")
@pytest.mark.parametrize("suffix", [".usdc", ".usdz"])
def test_nvidia_validator_reports_no_issues(tmp_path: Path, suffix: str, textured_mesh) -> None:
    path = tmp_path / f"asset{suffix}"
    (write_usdz if suffix == ".usdz" else write_usd)(textured_mesh(), path, INFO, up_axis="Z")
    assert nvidia_problems(path, min_severity="INFO") == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_validators_catch_a_broken_asset(tmp_path: Path) -> None:
    """The wrappers must be able to fail: a stage without defaultPrim and a material binding that
    lacks MaterialBindingAPI is flagged by both."""
    path = tmp_path / "broken.usda"
    stage = Usd.Stage.CreateNew(str(path))
    mesh = UsdGeom.Mesh.Define(stage, "/Root/mesh")
    mesh.CreatePointsAttr([(0, 0, 0), (1, 0, 0), (0, 1, 0)])
    mesh.CreateFaceVertexCountsAttr([3])
    mesh.CreateFaceVertexIndicesAttr([0, 1, 2])
    material = UsdShade.Material.Define(stage, "/Root/mat")
    mesh.GetPrim().CreateRelationship("material:binding").AddTarget(material.GetPath())
    stage.GetRootLayer().Save()
    assert compliance_problems(path)
    if nvidia_available():
        assert nvidia_problems(path)


def test_bad_arguments_are_refused(tmp_path: Path, textured_mesh) -> None:
    with pytest.raises(ValueError, match="up_axis"):
        write_usd(textured_mesh(), tmp_path / "a.usdc", INFO, up_axis="X")
    with pytest.raises(ValueError, match=".usdc"):
        write_usd(textured_mesh(), tmp_path / "a.glb", INFO)
    with pytest.raises(ValueError, match="empty"):
        write_usd(trimesh.Trimesh(), tmp_path / "a.usdc", INFO)
    assert not (tmp_path / "a.usdc").exists()


def test_load_asset_reads_foreign_usd_quads_face_varying_uvs_and_z_up(tmp_path: Path) -> None:
    path = tmp_path / "foreign.usda"
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    xform = UsdGeom.Xform.Define(stage, "/Root")
    xform.AddTranslateOp().Set((0.0, 0.0, 2.0))
    mesh = UsdGeom.Mesh.Define(stage, "/Root/quad")
    mesh.CreatePointsAttr([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (2, 0, 0)])
    mesh.CreateFaceVertexCountsAttr([4, 3])
    mesh.CreateFaceVertexIndicesAttr([0, 1, 2, 3, 1, 4, 2])
    st = UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                 UsdGeom.Tokens.faceVarying)
    st.Set([(0, 0), (1, 0), (1, 1), (0, 1), (0.5, 0.5)])
    st.SetIndices([0, 1, 2, 3, 4, 4, 4])
    stage.GetRootLayer().Save()

    read = load_asset(path)
    assert read.faces.shape == (3, 3)  # the quad fanned into two triangles
    # Z-up with the translation applied, then turned Y-up: (x, y, z) -> (x, z, -y).
    corners = read.vertices[read.faces[0]]
    np.testing.assert_allclose(corners, [[0, 2, 0], [1, 2, 0], [1, 2, -1]], atol=1e-6)
    np.testing.assert_allclose(read.visual.uv[read.faces[1]], [[0, 0], [1, 1], [0, 1]], atol=1e-7)
    np.testing.assert_allclose(read.visual.uv[read.faces[2]], [[0.5, 0.5]] * 3, atol=1e-7)
    stage_frame = load_asset(path, frame="stage")
    np.testing.assert_allclose(stage_frame.vertices[stage_frame.faces[0]], [[0, 0, 2], [1, 0, 2], [1, 1, 2]])


def test_usd_points_are_shared_across_uv_seams_and_the_surface_is_one_closed_piece(tmp_path: Path, textured_mesh) -> None:
    whole = textured_mesh()
    # Every triangle its own UV island, as an atlas cut to the extreme: 320 pieces as given.
    corners = whole.faces.reshape(-1)
    uv = np.random.default_rng(1).random((len(corners), 2))
    split = trimesh.Trimesh(whole.vertices[corners], np.arange(len(corners)).reshape(-1, 3), process=False,
                            vertex_normals=whole.vertex_normals[corners])
    split.visual = trimesh.visual.TextureVisuals(uv=uv, material=whole.visual.material)
    assert split.body_count == len(split.faces)
    path = write_usd(split, tmp_path / "asset.usdc", INFO)
    stage = Usd.Stage.Open(str(path))
    usd_mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/a_red_ball/Geometry/mesh"))
    points = np.asarray(usd_mesh.GetPointsAttr().Get(), dtype=np.float64)
    faces = np.asarray(usd_mesh.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3)
    stored = trimesh.Trimesh(points, faces, process=False)
    assert len(points) == len(np.unique(np.round(split.vertices, 9), axis=0)) < len(split.vertices)
    assert stored.is_watertight and stored.body_count == 1
    # Reading it back splits the seams again, into the very vertices it was written from.
    back = load_asset(path)
    assert len(back.vertices) == len(split.vertices)
    np.testing.assert_allclose(back.visual.uv, split.visual.uv, atol=1e-6)


def test_the_asset_is_an_interface_layer_that_payloads_one_layer_per_domain(tmp_path: Path, textured_mesh) -> None:
    from PIL import Image

    info = AssetInfo(name="a-red-ball", prompt="a red ball", seed=7, label="ball")
    thumb = Image.new("RGB", (32, 32), (200, 30, 30))
    path = write_usd(textured_mesh(), tmp_path / "asset.usdc", info, thumbnail=thumb)
    interface = Sdf.Layer.FindOrOpen(str(path))
    root_spec = interface.GetPrimAtPath("/a_red_ball")
    assert interface.defaultPrim == "a_red_ball" and root_spec.kind == "component"
    assert [p.assetPath for p in root_spec.payloadList.prependedItems] == ["./Payload/Contents.usda"]
    assert list(root_spec.nameChildren) == []  # the content lives in the payload only
    contents = Sdf.Layer.FindOrOpen(str(tmp_path / "Payload" / "Contents.usda"))
    assert list(contents.subLayerPaths) == ["./Physics.usda", "./Materials.usda", "./Geometry.usdc"]
    for layer in ("Geometry.usdc", "Materials.usda", "Physics.usda"):
        assert Sdf.Layer.FindOrOpen(str(tmp_path / "Payload" / layer)).defaultPrim == "a_red_ball"

    stage = Usd.Stage.Open(str(path))
    root = stage.GetDefaultPrim()
    # Only the root is a model: nothing inside the component carries a kind.
    assert [p.GetPath() for p in stage.Traverse() if Usd.ModelAPI(p).GetKind()] == [root.GetPath()]
    assert root.GetAssetInfo()["name"] == "a-red-ball"
    hint = np.asarray(UsdGeom.ModelAPI(root).GetExtentsHint())
    points = np.asarray(UsdGeom.Mesh(stage.GetPrimAtPath("/a_red_ball/Geometry/mesh")).GetPointsAttr().Get())
    np.testing.assert_allclose(hint, [points.min(0), points.max(0)], atol=1e-6)
    from pxr import UsdMedia, UsdSemantics

    assert list(UsdSemantics.LabelsAPI(root, "class").GetLabelsAttr().Get()) == ["ball"]
    thumbnails = UsdMedia.AssetPreviewsAPI(root).GetDefaultThumbnails()
    resolved = thumbnails.defaultImage.resolvedPath or str(tmp_path / thumbnails.defaultImage.path)
    assert Path(resolved).is_file() and Image.open(resolved).getpixel((5, 5)) == (200, 30, 30)
    assert nvidia_problems(path, min_severity="INFO") == [] if nvidia_available() else True


@pytest.mark.parametrize("shape, collider", [("sphere", "convexHull"), ("torus", "convexDecomposition")])
def test_physics_makes_a_rigid_body_with_the_mass_of_its_volume(tmp_path: Path, shape: str, collider: str) -> None:
    from pxr import UsdPhysics

    from exporters.usd import Physics

    mesh = trimesh.creation.icosphere(subdivisions=3) if shape == "sphere" else trimesh.creation.torus(1.0, 0.35)
    path = write_usd(mesh, tmp_path / "asset.usdc", INFO, size_m=0.5, physics=Physics(density=600.0))
    stage = Usd.Stage.Open(str(path))
    root = stage.GetDefaultPrim()
    usd_mesh = stage.GetPrimAtPath("/a_red_ball/Geometry/mesh")
    assert root.HasAPI(UsdPhysics.RigidBodyAPI) and usd_mesh.HasAPI(UsdPhysics.CollisionAPI)
    assert UsdPhysics.MeshCollisionAPI(usd_mesh).GetApproximationAttr().Get() == collider
    placed = load_asset(path, frame="stage")
    welded = trimesh.Trimesh(*[np.asarray(a) for a in (
        UsdGeom.Mesh(usd_mesh).GetPointsAttr().Get(),
        np.asarray(UsdGeom.Mesh(usd_mesh).GetFaceVertexIndicesAttr().Get()).reshape(-1, 3))], process=False)
    assert welded.is_watertight and placed.bounds[1].max() > 0
    mass = UsdPhysics.MassAPI(root).GetMassAttr().Get()
    assert mass > 0 and mass == pytest.approx(welded.volume * 600.0, rel=0.01)
    from pxr import UsdShade

    bound, _ = UsdShade.MaterialBindingAPI(usd_mesh).ComputeBoundMaterial("physics")
    api = UsdPhysics.MaterialAPI(bound.GetPrim())
    assert api.GetStaticFrictionAttr().Get() == pytest.approx(0.5) and api.GetDensityAttr().Get() == 600.0
    look, _ = UsdShade.MaterialBindingAPI(usd_mesh).ComputeBoundMaterial()
    assert look.GetPath() == Sdf.Path("/a_red_ball/Materials/material")  # renderers keep the look


def test_physics_none_leaves_the_physics_layer_out(tmp_path: Path, textured_mesh) -> None:
    from pxr import UsdPhysics

    path = write_usd(textured_mesh(), tmp_path / "asset.usdc", INFO, physics=None)
    assert not (tmp_path / "Payload" / "Physics.usda").exists()
    stage = Usd.Stage.Open(str(path))
    assert not any(p.HasAPI(UsdPhysics.CollisionAPI) or p.HasAPI(UsdPhysics.RigidBodyAPI) for p in stage.Traverse())
    assert compliance_problems(path) == []


def test_writing_an_asset_prints_nothing(tmp_path: Path, textured_mesh, capfd) -> None:
    """USD's C++ warnings go straight to file descriptor 2: the writers must not trigger any
    (an authoring stage never opens its own payload), and ARKit packaging's own spurious notices
    are held back while anything else it says is passed on."""
    from PIL import Image

    write_usd(textured_mesh(), tmp_path / "a" / "asset.usdc", INFO, thumbnail=Image.new("RGB", (8, 8)))
    write_usdz(textured_mesh(), tmp_path / "b" / "asset.usdz", INFO, thumbnail=Image.new("RGB", (8, 8)))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_the_packaging_filter_passes_on_what_it_does_not_know(capfd) -> None:
    import os

    from exporters.usd import quiet_packaging_warnings

    with quiet_packaging_warnings():
        os.write(2, b"Warning: in _EnqueueDependency at line 104 -- Failed to resolve reference @0/albedo.png@ x\n")
        os.write(2, b"Warning: something real\n")
    assert capfd.readouterr().err == "Warning: something real\n"
