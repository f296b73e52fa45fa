"""Read any exported asset back into a ``trimesh.Trimesh`` (UVs + PBR material): USD via pxr, GLB/OBJ via trimesh.

``frame="source"`` (default) returns the generator's coordinates: the placement our USD writer baked
into the points is undone with the transform it recorded (files from elsewhere are only turned Y-up). ``frame="stage"`` returns the points as
the file stores them (after each mesh's own transforms).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
from PIL import Image

from exporters.common import Surface, pbr_material, placed
from exporters.usd import SOURCE_TRANSFORM_KEY

Frame = Literal["source", "stage"]
READABLE = (".usd", ".usda", ".usdc", ".usdz", ".glb", ".gltf", ".obj")


def load_asset(path: str | Path, frame: Frame = "source") -> trimesh.Trimesh:
    """One mesh (all meshes of the file concatenated) with UVs and material where the file has them."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE:
        raise ValueError(f"cannot read {path.name!r}: expected one of {', '.join(READABLE)}")
    if not path.is_file():
        raise FileNotFoundError(f"no such asset: {str(path)!r}")
    if suffix.startswith(".usd"):
        return _load_usd(path, frame)
    loaded = trimesh.load(str(path), process=False, maintain_order=True)
    mesh = loaded
    if isinstance(loaded, trimesh.Scene):
        nodes = loaded.graph.nodes_geometry
        if len(nodes) == 1:  # the usual case; force="mesh" would drop the file's normals
            transform, name = loaded.graph[nodes[0]]
            mesh = loaded.geometry[name]
            if not np.allclose(transform, np.eye(4)):
                mesh = placed(mesh, np.asarray(transform, dtype=np.float64))
        else:
            mesh = loaded.to_mesh()
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise ValueError(f"{str(path)!r} holds no triangle mesh")
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.texture.TextureVisuals) and isinstance(
        visual.material, trimesh.visual.material.SimpleMaterial
    ):
        visual.material = visual.material.to_pbr()
    return mesh


def _triangulate(counts: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons; returns faces "F 3" into the point array and, per triangle corner,
    the index into the face-vertex list (to fetch faceVarying primvars)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tris, corners = [], []
    for k in range(3, int(counts.max(initial=3)) + 1):
        poly = starts[counts == k]
        for j in range(1, k - 1):
            c = np.stack([poly, poly + j, poly + j + 1], axis=1)
            corners.append(c)
    if not corners:
        return np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64)
    corner = np.concatenate(corners)
    corner = corner[np.argsort(corner[:, 0], kind="stable")]
    tris = indices[corner]
    return tris, corner


def _read_texture(shader_file) -> Image.Image | None:
    resolved = str(shader_file.resolvedPath or "")
    if not resolved:
        return None
    if "[" in resolved and resolved.endswith("]"):  # inside a usdz package: "pkg.usdz[inner/path]"
        package, inner = resolved[:-1].split("[", 1)
        with zipfile.ZipFile(package) as zf:
            data = zf.read(inner)
        return Image.open(io.BytesIO(data)).copy()
    return Image.open(resolved).copy()


def _material(prim) -> Surface:
    from pxr import UsdShade

    image, base, roughness, metallic = None, (1.0, 1.0, 1.0, 1.0), 1.0, 0.0
    material, _ = UsdShade.MaterialBindingAPI(prim).ComputeBoundMaterial()
    if material:
        source = material.ComputeSurfaceSource()[0]
        if source:
            for name, default in (("roughness", 1.0), ("metallic", 0.0)):
                value = source.GetInput(name).Get() if source.GetInput(name) else None
                if name == "roughness":
                    roughness = float(value) if value is not None else default
                else:
                    metallic = float(value) if value is not None else default
            diffuse = source.GetInput("diffuseColor")
            if diffuse:
                connected = diffuse.GetConnectedSources()[0]
                if connected:
                    texture = UsdShade.Shader(connected[0].source.GetPrim())
                    file_input = texture.GetInput("file")
                    if file_input:
                        image = _read_texture(file_input.Get())
                    scale = texture.GetInput("scale")
                    if scale and scale.Get() is not None:
                        base = tuple(float(c) for c in scale.Get())
                elif diffuse.Get() is not None:
                    base = (*[float(c) for c in diffuse.Get()], 1.0)
    return Surface(uv=None, image=image, base_color=base, roughness=roughness, metallic=metallic)  # type: ignore[arg-type]


def _split_seams(st, points, normals, faces, corners):
    """One vertex per distinct (point, UV) pair of a face-varying ``st``: split along UV seams only,
    as glTF and trimesh need. With indexed UVs the pairs keep the order of the UV indices, so a
    file we wrote reads back with the vertices, in the order, it was written from."""
    if st.IsIndexed():
        by_corner = np.asarray(st.GetIndices(), dtype=np.int64)[corners.reshape(-1)]
        table = np.asarray(st.Get(), dtype=np.float64)
    else:
        by_corner = corners.reshape(-1)
        table = np.asarray(st.ComputeFlattened(), dtype=np.float64)
    # Pairs of (UV row, point): equal UV values under different rows would split needlessly, so
    # rows are first merged by value.
    _, uv_first, uv_row = np.unique(table, axis=0, return_index=True, return_inverse=True)
    uv_key = uv_first[uv_row.reshape(-1)][by_corner]
    pairs, of_corner = np.unique(np.column_stack([uv_key, faces.reshape(-1)]), axis=0, return_inverse=True)
    source = pairs[:, 1]
    normals = normals[source] if normals is not None else None
    return points[source], normals, of_corner.reshape(-1, 3), table[pairs[:, 0]]


def _load_usd(path: Path, frame: Frame) -> trimesh.Trimesh:
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    if stage is None:
        raise ValueError(f"cannot open {str(path)!r} as a USD stage")
    cache = UsdGeom.XformCache(Usd.TimeCode.Default())
    parts = []
    normal_parts: list[np.ndarray | None] = []
    surf: Surface | None = None
    for prim in stage.Traverse():
        if not prim.IsA(UsdGeom.Mesh):
            continue
        mesh = UsdGeom.Mesh(prim)
        points = np.asarray(mesh.GetPointsAttr().Get(), dtype=np.float64)
        counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get(), dtype=np.int64)
        indices = np.asarray(mesh.GetFaceVertexIndicesAttr().Get(), dtype=np.int64)
        if len(points) == 0 or len(counts) == 0:
            continue
        faces, corners = _triangulate(counts, indices)
        if mesh.GetOrientationAttr().Get() == UsdGeom.Tokens.leftHanded:
            faces, corners = faces[:, ::-1], corners[:, ::-1]
        world = np.asarray(cache.GetLocalToWorldTransform(prim), dtype=np.float64).T
        points = points @ world[:3, :3].T + world[:3, 3]
        normals = mesh.GetNormalsAttr().Get()
        normals = np.asarray(normals, dtype=np.float64) if normals is not None else None
        if normals is not None and len(normals) == len(points):
            normals = normals @ np.linalg.inv(world[:3, :3])
        else:
            normals = None
        uv = None
        st = UsdGeom.PrimvarsAPI(prim).GetPrimvar("st")
        if st and st.HasValue():
            values = np.asarray(st.ComputeFlattened(), dtype=np.float64)
            interp = st.GetInterpolation()
            if interp in (UsdGeom.Tokens.vertex, UsdGeom.Tokens.varying) and len(values) == len(points):
                uv = values
            elif interp == UsdGeom.Tokens.faceVarying and len(values) == len(indices):
                points, normals, faces, uv = _split_seams(st, points, normals, faces, corners)
        parts.append((points, faces, uv))
        normal_parts.append(normals)
        if surf is None:
            surf = _material(prim)
    if not parts:
        raise ValueError(f"{str(path)!r} holds no mesh")

    offsets = np.cumsum([0] + [len(p) for p, _, _ in parts[:-1]])
    vertices = np.concatenate([p for p, _, _ in parts])
    faces = np.concatenate([f + o for (_, f, _), o in zip(parts, offsets, strict=True)])
    uvs = [u for _, _, u in parts]
    uv = np.concatenate(uvs) if all(u is not None for u in uvs) else None

    normals = np.concatenate(normal_parts) if all(n is not None for n in normal_parts) else None

    back = np.eye(4)
    if frame == "source":
        root = stage.GetDefaultPrim()
        recorded = root.GetCustomDataByKey(SOURCE_TRANSFORM_KEY) if root else None
        if recorded is not None:
            back = np.linalg.inv(np.asarray(recorded, dtype=np.float64).T)
        elif UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z:  # someone else's Z-up file: make it Y-up
            back[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]
    elif frame != "stage":
        raise ValueError(f"frame must be 'source' or 'stage', not {frame!r}")
    vertices = vertices @ back[:3, :3].T + back[:3, 3]
    if normals is not None:
        normals = normals @ np.linalg.inv(back[:3, :3])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)

    out = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_normals=normals, process=False)
    surf = surf or Surface(uv=None, image=None, base_color=(1.0, 1.0, 1.0, 1.0), roughness=1.0, metallic=0.0)
    if uv is not None:
        full = Surface(uv=uv, image=surf.image, base_color=surf.base_color, roughness=surf.roughness,
                       metallic=surf.metallic)
        out.visual = trimesh.visual.TextureVisuals(uv=uv, material=pbr_material(full))
    return out
