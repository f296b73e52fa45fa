"""USD assets (.usdc, .usda, .usdz) that pass UsdUtils.ComplianceChecker and the NVIDIA validator.

Layout of one asset::

    /<name>            Xform, defaultPrim, kind=component, assetInfo, documentation (prompt, seed, generator)
      Geometry/        Scope
        mesh           Mesh: subdivisionScheme none, extent, vertex normals, primvars:st, MaterialBindingAPI
      Materials/       Scope
        material       Material -> UsdPreviewSurface <- UsdUVTexture (sRGB) <- UsdPrimvarReader_float2 ("st")

The placement (scale to ``size_m``, object on the ground, up axis) is baked into the points rather
than authored as an xform on the root: a world stage that payloads the asset and moves its root
would otherwise replace our xformOpOrder and lose the scale. The transform is kept in the root's
customData (``magic3d:sourceTransform``) so readers can recover the generator's coordinates.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from exporters.common import (
    AssetInfo,
    Surface,
    atomic_output,
    check_up_axis,
    make_dirs,
    placement,
    surface,
    weld,
    write_png,
)

TEXTURE_DIR = "textures"
TEXTURE_NAME = "albedo.png"
SOURCE_TRANSFORM_KEY = "magic3d:sourceTransform"


def prim_safe(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not out or not (out[0].isalpha() or out[0] == "_"):
        out = "_" + out
    return out


def _documentation(info: AssetInfo) -> str:
    return f"prompt: {info.prompt}\nseed: {info.seed}\ngenerator: {info.generator} {info.version}"


def _vertex_normals(mesh: trimesh.Trimesh, linear: np.ndarray) -> np.ndarray:
    # Normals follow the inverse transpose; with a uniform scale and a rotation that is the
    # rotation itself, renormalised.
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64) @ np.linalg.inv(linear)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.where(length > 0, length, 1.0)


def unique_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in order of first appearance, index of each input row into them): each UV
    stored once, and a file with distinct UVs per vertex keeps their order (see read._split_seams)."""
    table, first, inverse = np.unique(values, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return table[order], rank[inverse.reshape(-1)]


def build_stage(
    mesh: trimesh.Trimesh, layer_path: str, info: AssetInfo, up_axis: str, size_m: float | None,
    texture_path: str | None,
):
    """An in-memory stage for ``mesh``; ``texture_path`` is the (relative) asset path of the base colour."""
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdShade, Vt

    axis = check_up_axis(up_axis)
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if len(vertices) == 0 or len(faces) == 0:
        raise ValueError("cannot write an empty mesh to USD")
    transform = placement(vertices, axis, size_m)
    points = vertices @ transform[:3, :3].T + transform[:3, 3]
    surf: Surface = surface(mesh)

    stage = Usd.Stage.CreateInMemory(layer_path)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y if axis == "Y" else UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.GetRootLayer().documentation = f"{info.generator} asset {info.name!r}"

    root_path = Sdf.Path("/" + prim_safe(info.name or "asset"))
    root = UsdGeom.Xform.Define(stage, root_path).GetPrim()
    stage.SetDefaultPrim(root)
    model = Usd.ModelAPI(root)
    model.SetKind(Kind.Tokens.component)
    model.SetAssetName(info.name)
    model.SetAssetVersion(str(info.version))
    model.SetAssetIdentifier(Sdf.AssetPath(Path(layer_path).name))
    root.SetDocumentation(_documentation(info))
    for key, value in info.provenance().items():
        root.SetCustomDataByKey(f"magic3d:{key}", value)
    root.SetCustomDataByKey(SOURCE_TRANSFORM_KEY, Gf.Matrix4d(transform.T.tolist()))

    UsdGeom.Scope.Define(stage, root_path.AppendChild("Geometry"))
    usd_mesh = UsdGeom.Mesh.Define(stage, root_path.AppendPath("Geometry/mesh"))
    usd_mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    usd_mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    # Points are shared (USD's own model of a closed surface: one piece, not one per UV island);
    # UVs are a face-varying primvar indexed by each corner's original vertex, so seams stay sharp
    # in the texture only.
    shared, of_vertex = weld(vertices)
    first = np.full(len(shared), -1, dtype=np.int64)
    first[of_vertex[::-1]] = np.arange(len(vertices))[::-1]  # one representative vertex per point
    points = shared @ transform[:3, :3].T + transform[:3, 3]
    usd_mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points.astype(np.float32)))
    usd_mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(faces), 3, dtype=np.int32)))
    usd_mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(of_vertex[faces].reshape(-1).astype(np.int32)))
    normals = _vertex_normals(mesh, transform[:3, :3])[first]  # the baker's normals agree across seams
    usd_mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(normals.astype(np.float32)))
    usd_mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    lo, hi = points.astype(np.float32).min(0), points.astype(np.float32).max(0)
    usd_mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*lo.tolist()), Gf.Vec3f(*hi.tolist())]))
    if surf.uv is not None:
        st = UsdGeom.PrimvarsAPI(usd_mesh).CreatePrimvar(
            "st", Sdf.ValueTypeNames.TexCoord2fArray, UsdGeom.Tokens.faceVarying
        )
        table, of_vertex_uv = unique_rows(surf.uv.astype(np.float32))
        st.Set(Vt.Vec2fArray.FromNumpy(table))
        st.SetIndices(Vt.IntArray.FromNumpy(of_vertex_uv[faces].reshape(-1).astype(np.int32)))

    UsdGeom.Scope.Define(stage, root_path.AppendChild("Materials"))
    material = _define_material(stage, root_path.AppendPath("Materials/material"), surf, texture_path)
    binding = UsdShade.MaterialBindingAPI.Apply(usd_mesh.GetPrim())
    binding.Bind(material)
    return stage


def _define_material(stage, path, surf: Surface, texture_path: str | None):
    from pxr import Gf, Sdf, UsdShade

    material = UsdShade.Material.Define(stage, path)
    shader = UsdShade.Shader.Define(stage, path.AppendChild("PreviewSurface"))
    shader.CreateIdAttr("UsdPreviewSurface")
    shader.CreateInput("roughness", Sdf.ValueTypeNames.Float).Set(float(surf.roughness))
    shader.CreateInput("metallic", Sdf.ValueTypeNames.Float).Set(float(surf.metallic))
    shader.CreateInput("useSpecularWorkflow", Sdf.ValueTypeNames.Int).Set(0)
    diffuse = shader.CreateInput("diffuseColor", Sdf.ValueTypeNames.Color3f)
    surface_out = shader.CreateOutput("surface", Sdf.ValueTypeNames.Token)
    material.CreateSurfaceOutput().ConnectToSource(surface_out)

    if texture_path is None:
        diffuse.Set(Gf.Vec3f(*surf.base_color[:3]))
        return material
    reader = UsdShade.Shader.Define(stage, path.AppendChild("TexCoordReader"))
    reader.CreateIdAttr("UsdPrimvarReader_float2")
    reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
    reader_out = reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)

    texture = UsdShade.Shader.Define(stage, path.AppendChild("BaseColorTexture"))
    texture.CreateIdAttr("UsdUVTexture")
    texture.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(Sdf.AssetPath(texture_path))
    texture.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set("sRGB")
    texture.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(reader_out)
    texture.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("repeat")
    texture.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("repeat")
    if any(abs(c - 1.0) > 1e-6 for c in surf.base_color):
        texture.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(*surf.base_color))
    rgb = texture.CreateOutput("rgb", Sdf.ValueTypeNames.Float3)
    diffuse.ConnectToSource(rgb)
    return material


def write_usd(
    mesh: trimesh.Trimesh, path: str | Path, info: AssetInfo | None = None, up_axis: str = "Y",
    size_m: float | None = 1.0,
) -> Path:
    """Write ``mesh`` as ``.usdc`` (binary, the main format) or ``.usda``; the texture goes to
    ``textures/albedo.png`` beside it, referenced by a relative path. Returns ``path``."""
    path = Path(path)
    if path.suffix not in (".usdc", ".usda", ".usd"):
        raise ValueError(f"write_usd writes .usdc, .usda or .usd, not {path.name!r}")
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise ValueError("cannot write an empty mesh to USD")
    info = info or AssetInfo(name=path.stem)
    surf = surface(mesh)
    texture_rel = None
    if surf.image is not None:
        write_png(surf.image, path.parent / TEXTURE_DIR / TEXTURE_NAME)
        texture_rel = f"./{TEXTURE_DIR}/{TEXTURE_NAME}"
    stage = build_stage(mesh, str(path), info, up_axis, size_m, texture_rel)
    with atomic_output(path) as tmp:
        if not stage.GetRootLayer().Export(str(tmp)):
            raise OSError(f"USD could not write {str(path)!r}")
    return path


def write_usdz(
    mesh: trimesh.Trimesh, path: str | Path, info: AssetInfo | None = None, up_axis: str = "Y",
    size_m: float | None = 1.0, arkit: bool = True,
) -> Path:
    """Write a ``.usdz`` package (a binary layer plus its texture). ``arkit=True`` packages with
    Apple's extra rules (AR Quick Look needs Y up)."""
    from pxr import Sdf, UsdUtils

    path = Path(path)
    if path.suffix != ".usdz":
        raise ValueError(f"write_usdz writes .usdz, not {path.name!r}")
    info = info or AssetInfo(name=path.stem)
    make_dirs(path.parent)
    # Named like atomic_output's temporaries, so a run killed while packaging leaves nothing the
    # next run's sweep does not remove.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as work:
        layer = write_usd(mesh, Path(work) / f"{path.stem}.usdc", info, up_axis, size_m)
        with atomic_output(path) as tmp:
            tmp.unlink()  # the packager refuses to overwrite an existing file
            make = UsdUtils.CreateNewARKitUsdzPackage if arkit else UsdUtils.CreateNewUsdzPackage
            if not make(Sdf.AssetPath(str(layer)), str(tmp)):
                raise OSError(f"USD could not package {str(path)!r}")
    return path
