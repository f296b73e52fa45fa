from __future__ import annotations

from pathlib import Path

import pytest

pxr = pytest.importorskip("pxr")
from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdUtils  # noqa: E402

from exporters.scene import (  # noqa: E402
    GridLayout,
    WorldEntry,
    asset_extent,
    grid_positions,
    prim_name,
    write_world,
)


def write_cube_asset(path: Path, size: float = 1.0, offset: tuple[float, float, float] = (0, 0, 0)) -> Path:
    """A tiny valid asset: /Asset (kind=component, defaultPrim) holding one cube mesh."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = Usd.Stage.CreateNew(str(path))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/Asset")
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind(Kind.Tokens.component)
    h = size / 2
    pts = [Gf.Vec3f(offset[0] + x * h, offset[1] + y * h, offset[2] + z * h)
           for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    mesh = UsdGeom.Mesh.Define(stage, "/Asset/geo")
    mesh.CreatePointsAttr(pts)
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    mesh.CreateFaceVertexCountsAttr([4] * 6)
    mesh.CreateFaceVertexIndicesAttr([i for q in quads for i in q])
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    face_normals = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]  # one per quad above
    mesh.CreateNormalsAttr([Gf.Vec3f(*n) for n in face_normals for _ in range(4)])
    mesh.SetNormalsInterpolation(UsdGeom.Tokens.faceVarying)
    mesh.CreateExtentAttr(UsdGeom.Boundable.ComputeExtentFromPlugins(mesh, Usd.TimeCode.Default()))
    stage.GetRootLayer().Save()
    return path


def entries_for(tmp_path: Path, sizes: list[float]) -> list[WorldEntry]:
    out = []
    for i, s in enumerate(sizes):
        asset = write_cube_asset(tmp_path / f"asset-{i}" / "asset.usdc", size=s, offset=(0.0, s / 2, 0.0))
        lo, hi = asset_extent(asset)
        out.append(WorldEntry(name=f"asset-{i}", asset_path=asset, extent_min=lo, extent_max=hi,
                              display_name=f"prompt {i}", custom_data={"seed": i}))
    return out


def test_world_references_exactly_the_given_assets(tmp_path: Path) -> None:
    entries = entries_for(tmp_path, [1.0, 2.0, 0.5])
    world = write_world(entries, tmp_path / "world.usda")
    stage = Usd.Stage.Open(str(world))
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path("/World")
    assert Usd.ModelAPI(stage.GetDefaultPrim()).GetKind() == Kind.Tokens.assembly
    children = [p.GetName() for p in stage.GetDefaultPrim().GetChildren()]
    assert children == ["asset_0", "asset_1", "asset_2"]
    layer = stage.GetRootLayer()
    refs = sorted(layer.GetExternalReferences())
    assert refs == sorted(f"./asset-{i}/asset.usdc" for i in range(3))
    for i, name in enumerate(children):
        prim = stage.GetPrimAtPath(f"/World/{name}")
        model = Usd.ModelAPI(prim)
        assert model.GetKind() == Kind.Tokens.component
        assert model.GetAssetName() == f"asset-{i}"
        assert model.GetAssetIdentifier().path == f"./asset-{i}/asset.usdc"
        assert prim.HasAuthoredPayloads()
        assert prim.GetCustomDataByKey("seed") == i
        # loaded: the payload's mesh is there
        assert stage.GetPrimAtPath(f"/World/{name}/geo").IsA(UsdGeom.Mesh)


def test_unloaded_world_still_has_bounds_and_grid_does_not_overlap(tmp_path: Path) -> None:
    entries = entries_for(tmp_path, [1.0, 2.0, 0.5, 1.5])
    world = write_world(entries, tmp_path / "world.usda")
    stage = Usd.Stage.Open(str(world), Usd.Stage.LoadNone)
    cache = UsdGeom.BBoxCache(Usd.TimeCode.Default(), [UsdGeom.Tokens.default_], useExtentsHint=True)
    boxes = []
    for i, e in enumerate(entries):
        prim = stage.GetPrimAtPath(f"/World/asset_{i}")
        assert not prim.IsLoaded()
        assert not prim.GetChildren()  # nothing from the asset was composed
        hint = UsdGeom.ModelAPI(prim).GetExtentsHint()
        assert [c for v in hint for c in v] == pytest.approx([*e.extent_min, *e.extent_max])
        box = cache.ComputeWorldBound(prim).ComputeAlignedRange()
        assert not box.IsEmpty()
        size = [hi - lo for lo, hi in zip(e.extent_min, e.extent_max, strict=True)]
        assert tuple(box.GetSize()) == pytest.approx(size, abs=1e-5)
        assert box.GetMin()[1] == pytest.approx(0.0, abs=1e-5)  # stands on the ground
        boxes.append(box)
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            overlap = Gf.Range3d.GetIntersection(boxes[i], boxes[j])
            assert overlap.IsEmpty(), (i, j)


def usd_problems(path: Path) -> list[str]:
    """exporters.validate (ComplianceChecker + NVIDIA rules) when present, else the checker alone."""
    try:
        from exporters.validate import validate_asset
    except ImportError:
        checker = UsdUtils.ComplianceChecker(arkit=False)
        checker.CheckCompliance(str(path))
        return [*checker.GetErrors(), *checker.GetFailedChecks()]
    return validate_asset(path)


@pytest.mark.filterwarnings("ignore:Use of UsdUtils.ComplianceChecker is deprecated")
def test_world_passes_compliance_checker(tmp_path: Path) -> None:
    entries = entries_for(tmp_path, [1.0, 0.7])
    world = write_world(entries, tmp_path / "out" / "world.usda")
    assert usd_problems(world) == []


def test_empty_world_is_valid_and_rewrite_is_atomic(tmp_path: Path) -> None:
    path = write_world([], tmp_path / "world.usda")
    stage = Usd.Stage.Open(str(path))
    assert stage.GetDefaultPrim().GetChildren() == []
    del stage  # let go of the cached layer so the re-open below reads the new file
    entries = entries_for(tmp_path, [1.0])
    write_world(entries, path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert len(Usd.Stage.Open(str(path)).GetDefaultPrim().GetChildren()) == 1


def test_grid_spacing_follows_the_largest_footprint() -> None:
    e = [WorldEntry(f"a{i}", Path("x.usdc"), (-1, 0, -1), (1, 2, 1)) for i in range(4)]
    pos = grid_positions(e, "Y", GridLayout(gap=0.5, columns=2))
    assert pos == [(0, 0, 0), (3.0, 0, 0), (0, 0, 3.0), (3.0, 0, 3.0)]
    z = grid_positions([WorldEntry("a", Path("x"), (0, 0, -1), (2, 2, 1))], "Z", GridLayout())
    assert z == [(-1.0, -1.0, 1.0)]


def test_bad_input_is_refused(tmp_path: Path) -> None:
    e = WorldEntry("a", tmp_path / "a.usdc", (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="share the prim name"):
        write_world([e, WorldEntry("a", tmp_path / "b.usdc", (0, 0, 0), (1, 1, 1))], tmp_path / "w.usda")
    with pytest.raises(ValueError, match="min <= max"):
        write_world([WorldEntry("b", tmp_path / "b.usdc", (1, 0, 0), (0, 1, 1))], tmp_path / "w.usda")
    with pytest.raises(ValueError, match="up_axis"):
        write_world([e], tmp_path / "w.usda", up_axis="X")
    with pytest.raises(ValueError, match=".usda"):
        write_world([e], tmp_path / "w.usdc")
    assert not (tmp_path / "w.usda").exists()
    assert prim_name("3-red-cubes") == "_3_red_cubes"
