"""USD assets (.usdc, .usda, .usdz) built as NVIDIA's scalable asset structure and SimReady ask.

Files of one asset (``asset.usdc`` and what it loads, all by relative paths)::

    asset.usdc                   interface: /<name> Xform, defaultPrim, kind=component, assetInfo,
                                 extentsHint, documentation and customData (prompt, seed, prior),
                                 semantic label, thumbnail; payload -> Payload/Contents.usda
    thumbnails/asset.png         the thumbnail (UsdMediaAssetPreviewsAPI)
    Payload/Contents.usda        sublayers the domains, strongest first:
    Payload/Physics.usda           rigid body + mass on /<name>, collider on the mesh, Physics/PhysicsMaterial
    Payload/Materials.usda         Materials/material (UsdPreviewSurface <- UsdUVTexture) bound to the mesh
    Payload/Geometry.usdc          Geometry/mesh: welded points, face-varying indexed st, vertex normals
    Payload/Textures/albedo.png

Only the root has a model kind. The placement (scale to ``size_m``, object on the ground, up axis)
is baked into the points rather than authored as an xform on the root: a world stage that
payloads the asset and moves its root would otherwise replace our xformOpOrder and lose the
scale. The transform is kept in the root's customData (``magic3d:sourceTransform``) so readers
can recover the generator's coordinates. Files are written leaves first, the interface last, so
a reader never finds the interface pointing at a layer not yet there.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from exporters.common import (
    AssetInfo,
    atomic_output,
    check_up_axis,
    make_dirs,
    placement,
    surface,
    write_png,
)
from exporters.usd.geometry import PlacedMesh, define_mesh, place_mesh
from exporters.usd.material import define_material
from exporters.usd.physics import WOOD, Physics, define_physics

SOURCE_TRANSFORM_KEY = "magic3d:sourceTransform"
PAYLOAD_DIR = "Payload"
TEXTURE_PATH = "Textures/albedo.png"  # relative to the payload folder
NORMAL_PATH = "Textures/normal.png"
THUMBNAIL_DIR = "thumbnails"
DOMAINS = ("Physics", "Materials", "Geometry")  # sublayer order: strongest first


def prim_safe(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not out or not (out[0].isalpha() or out[0] == "_"):
        out = "_" + out
    return out


def _documentation(info: AssetInfo) -> str:
    return f"prompt: {info.prompt}\nseed: {info.seed}\ngenerator: {info.generator} {info.version}"


def _layer_stage(up_axis: str, root_name: str):
    """A stage on an anonymous layer with the metadata every layer of the asset carries."""
    from pxr import Sdf, Usd, UsdGeom

    # LoadNone: an authoring stage never opens the payload it writes (relative to an anonymous
    # layer it could not be found, and USD would warn).
    stage = Usd.Stage.Open(Sdf.Layer.CreateAnonymous(".usda"), load=Usd.Stage.LoadNone)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y if up_axis == "Y" else UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    stage.GetRootLayer().defaultPrim = root_name
    return stage


def _save(stage_or_layer, path: Path) -> Path:
    layer = stage_or_layer.GetRootLayer() if hasattr(stage_or_layer, "GetRootLayer") else stage_or_layer
    with atomic_output(path) as tmp:
        if not layer.Export(str(tmp)):
            raise OSError(f"USD could not write {str(path)!r}")
    return path


def write_usd(
    mesh: trimesh.Trimesh, path: str | Path, info: AssetInfo | None = None, up_axis: str = "Y",
    size_m: float | None = 1.0, physics: Physics | None = WOOD, thumbnail: Image.Image | None = None,
) -> Path:
    """Write ``mesh`` as an asset whose interface layer is ``path`` (``.usdc``, or ``.usda`` for a
    text interface), its content layers and texture under ``Payload/`` beside it. ``physics=None``
    leaves the physics layer out. Returns ``path``."""
    from pxr import Sdf, UsdGeom

    path = Path(path)
    if path.suffix not in (".usdc", ".usda", ".usd"):
        raise ValueError(f"write_usd writes .usdc, .usda or .usd, not {path.name!r}")
    if len(mesh.vertices) == 0 or len(mesh.faces) == 0:
        raise ValueError("cannot write an empty mesh to USD")
    info = info or AssetInfo(name=path.stem)
    axis = check_up_axis(up_axis)
    transform = placement(np.asarray(mesh.vertices, dtype=np.float64), axis, size_m)
    surf = surface(mesh)
    placed = place_mesh(mesh, surf.uv, transform)
    name = prim_safe(info.name or "asset")
    root_path = Sdf.Path("/" + name)
    mesh_path = root_path.AppendPath("Geometry/mesh")
    payload = path.parent / PAYLOAD_DIR

    if surf.image is not None:
        write_png(surf.image, payload / TEXTURE_PATH)
    if surf.normal_image is not None:
        write_png(surf.normal_image, payload / NORMAL_PATH)
    geometry = _layer_stage(axis, name)
    UsdGeom.Xform.Define(geometry, root_path)
    UsdGeom.Scope.Define(geometry, root_path.AppendChild("Geometry"))
    define_mesh(geometry, mesh_path, placed)
    _save(geometry, payload / "Geometry.usdc")

    materials = _layer_stage(axis, name)
    materials.OverridePrim(root_path)
    UsdGeom.Scope.Define(materials, root_path.AppendChild("Materials"))
    material = define_material(materials, root_path.AppendPath("Materials/material"), surf,
                               f"./{TEXTURE_PATH}" if surf.image is not None else None,
                               f"./{NORMAL_PATH}" if surf.normal_image is not None and surf.image is not None else None)
    from pxr import UsdShade

    UsdShade.MaterialBindingAPI.Apply(materials.OverridePrim(mesh_path)).Bind(material)
    _save(materials, payload / "Materials.usda")

    domains = list(DOMAINS)
    if physics is not None:
        layer = _layer_stage(axis, name)
        define_physics(layer, root_path, mesh_path, placed.trimesh(), physics)
        _save(layer, payload / "Physics.usda")
    else:
        domains.remove("Physics")
    # A bare layer, not a stage: a stage would try to compose the sublayers from an anonymous
    # layer's (missing) folder and warn.
    contents = Sdf.Layer.CreateAnonymous(".usda")
    contents.defaultPrim = name
    contents.pseudoRoot.SetInfo(UsdGeom.Tokens.upAxis, UsdGeom.Tokens.y if axis == "Y" else UsdGeom.Tokens.z)
    contents.pseudoRoot.SetInfo(UsdGeom.Tokens.metersPerUnit, 1.0)
    contents.subLayerPaths = [f"./{d}.usd{'c' if d == 'Geometry' else 'a'}" for d in domains]
    _save(contents, payload / "Contents.usda")

    thumbnail_rel = None
    if thumbnail is not None:
        thumbnail_rel = f"./{THUMBNAIL_DIR}/{path.stem}.png"
        write_png(thumbnail.convert("RGB"), path.parent / THUMBNAIL_DIR / f"{path.stem}.png")
    interface = _interface(axis, name, root_path, info, transform, placed, thumbnail_rel, path)
    return _save(interface, path)


def _interface(axis: str, name: str, root_path, info: AssetInfo, transform: np.ndarray, placed: PlacedMesh,
               thumbnail_rel: str | None, path: Path):
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdMedia, UsdSemantics, Vt

    stage = _layer_stage(axis, name)
    stage.GetRootLayer().documentation = f"{info.generator} asset {info.name!r}"
    root = UsdGeom.Xform.Define(stage, root_path).GetPrim()
    model = Usd.ModelAPI(root)
    model.SetKind(Kind.Tokens.component)
    model.SetAssetName(info.name)
    model.SetAssetVersion(str(info.version))
    model.SetAssetIdentifier(Sdf.AssetPath(path.name))
    root.SetDocumentation(_documentation(info))
    for key, value in info.provenance().items():
        root.SetCustomDataByKey(f"magic3d:{key}", value)
    root.SetCustomDataByKey(SOURCE_TRANSFORM_KEY, Gf.Matrix4d(transform.T.tolist()))
    lo, hi = placed.extent
    UsdGeom.ModelAPI(root).SetExtentsHint(Vt.Vec3fArray([Gf.Vec3f(*lo.tolist()), Gf.Vec3f(*hi.tolist())]))
    if info.label:
        UsdSemantics.LabelsAPI.Apply(root, "class").CreateLabelsAttr(Vt.TokenArray([info.label]))
    if thumbnail_rel is not None:
        previews = UsdMedia.AssetPreviewsAPI.Apply(root)
        thumbnails = UsdMedia.AssetPreviewsAPI.Thumbnails()
        thumbnails.defaultImage = Sdf.AssetPath(thumbnail_rel)
        previews.SetDefaultThumbnails(thumbnails)
    root.GetPayloads().AddPayload(f"./{PAYLOAD_DIR}/Contents.usda")
    return stage


# ARKit packaging announces that it flattens the asset (it must: AR Quick Look reads one layer),
# then warns that it cannot find on disk the names it has already given the textures inside the
# package ("0/albedo.png"): noise on every run, not problems of the asset.
_PACKAGE_NOISE = re.compile(rb"^Warning: in (_EnqueueDependency .*Failed to resolve reference @\d+/[^@]*@"
                            rb"|UsdUtilsCreateNewARKitUsdzPackage .*Flattening it to a single \.usdc file)")


@contextlib.contextmanager
def quiet_packaging_warnings() -> Iterator[None]:
    """Hold back the packager's own spurious warnings (written by C++ straight to file descriptor
    2, beyond Python's reach); every other line it writes is passed on unchanged."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().splitlines(keepends=True) if not _PACKAGE_NOISE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def write_usdz(
    mesh: trimesh.Trimesh, path: str | Path, info: AssetInfo | None = None, up_axis: str = "Y",
    size_m: float | None = 1.0, arkit: bool = True, physics: Physics | None = WOOD,
    thumbnail: Image.Image | None = None,
) -> Path:
    """Write a ``.usdz`` package of the whole asset (layers, texture, thumbnail). ``arkit=True``
    packages with Apple's extra rules (AR Quick Look needs Y up), which flatten it to one layer."""
    from pxr import Sdf, UsdUtils

    path = Path(path)
    if path.suffix != ".usdz":
        raise ValueError(f"write_usdz writes .usdz, not {path.name!r}")
    info = info or AssetInfo(name=path.stem)
    make_dirs(path.parent)
    # Named like atomic_output's temporaries, so a run killed while packaging leaves nothing the
    # next run's sweep does not remove.
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent) as work:
        layer = write_usd(mesh, Path(work) / f"{path.stem}.usdc", info, up_axis, size_m, physics, thumbnail)
        with atomic_output(path) as tmp:
            tmp.unlink()  # the packager refuses to overwrite an existing file
            make = UsdUtils.CreateNewARKitUsdzPackage if arkit else UsdUtils.CreateNewUsdzPackage
            with quiet_packaging_warnings():
                packed = make(Sdf.AssetPath(str(layer)), str(tmp))
            if not packed:
                raise OSError(f"USD could not package {str(path)!r}")
    return path


__all__ = ["SOURCE_TRANSFORM_KEY", "WOOD", "Physics", "prim_safe", "write_usd", "write_usdz"]
