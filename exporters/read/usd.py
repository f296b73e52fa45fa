"""USD stages (``.usd``, ``.usda``, ``.usdc``, ``.usdz``) as parts, one per mesh and bound material.

Every ``UsdGeom.Mesh`` the stage composes (references, payloads and instances included; invisible
and guide prims left out, proxies only where there is nothing else) is placed by its world
transform. Each mesh is one part drawn with its bound material, or several: one per ``GeomSubset``
of the ``materialBind`` family, with the faces no subset claims on the mesh's own material. A mesh
without a material shows its ``displayColor`` (constant, per face, per vertex or per corner).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.read.parts import Material, Part
from exporters.read.usd_material import TextureCache, read_material
from exporters.usd import SOURCE_TRANSFORM_KEY

Z_TO_Y = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


def load_usd_parts(path: Path, frame: str) -> list[Part]:
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path))
    if stage is None:
        raise ValueError(f"cannot open {str(path)!r} as a USD stage")
    time = Usd.TimeCode.EarliestTime()
    cache = UsdGeom.XformCache(time)
    textures = TextureCache()
    found: dict[str, list[Part]] = {"render": [], "proxy": []}
    for prim in stage.Traverse(Usd.TraverseInstanceProxies(Usd.PrimDefaultPredicate)):
        if not prim.IsA(UsdGeom.Mesh):
            continue
        imageable = UsdGeom.Imageable(prim)
        if imageable.ComputeVisibility(time) == UsdGeom.Tokens.invisible:
            continue
        purpose = imageable.ComputePurpose()
        if purpose == UsdGeom.Tokens.guide:
            continue
        world = np.asarray(cache.GetLocalToWorldTransform(prim), dtype=np.float64).T
        parts = _mesh_parts(UsdGeom.Mesh(prim), time, textures)
        found["proxy" if purpose == UsdGeom.Tokens.proxy else "render"] += [p.transformed(world) for p in parts]
    parts = found["render"] or found["proxy"]
    if not parts:
        raise ValueError(f"{str(path)!r} holds no mesh")
    back = np.eye(4)
    if frame == "source":
        root = stage.GetDefaultPrim()
        recorded = root.GetCustomDataByKey(SOURCE_TRANSFORM_KEY) if root else None
        if recorded is not None:
            back = np.linalg.inv(np.asarray(recorded, dtype=np.float64).T)
        elif UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.z:  # someone else's Z-up file: make it Y-up
            back = Z_TO_Y
    return [p.transformed(back) for p in parts] if not np.array_equal(back, np.eye(4)) else parts


def triangulate(counts: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fan-triangulate polygons: faces "F 3" into the points, each triangle corner's index into the
    face-vertex list (to fetch faceVarying primvars), and each triangle's polygon (for subsets)."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    corners = []
    for k in range(3, int(counts.max(initial=3)) + 1):
        poly = starts[counts == k]
        for j in range(1, k - 1):
            corners.append(np.stack([poly, poly + j, poly + j + 1], axis=1))
    if not corners:
        return np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    corner = np.concatenate(corners)
    corner = corner[np.argsort(corner[:, 0], kind="stable")]
    polygon = np.searchsorted(starts, corner[:, 0], side="right") - 1
    return indices[corner], corner, polygon


def split_seams(st, points, faces, corners):
    """One vertex per distinct (point, UV) pair of a face-varying ``st``: split along UV seams only,
    as glTF and trimesh need. With indexed UVs the pairs keep the order of the UV indices, so a
    file we wrote reads back with the vertices, in the order, it was written from.
    Returns (the point each new vertex comes from, new faces, UVs)."""
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
    return pairs[:, 1], of_corner.reshape(-1, 3), table[pairs[:, 0]]


def _uv_primvar(api, name: str | None):
    from pxr import Sdf

    for candidate in (name, "st", "UVMap", "uv"):
        if candidate and api.HasPrimvar(candidate):
            primvar = api.GetPrimvar(candidate)
            if primvar.HasValue():
                return primvar
    for primvar in api.GetPrimvarsWithValues():  # any texture-coordinate primvar
        if primvar.GetTypeName().role == Sdf.ValueTypeNames.TexCoord2f.role:
            return primvar
    return None


def _mesh_parts(mesh, time, textures: TextureCache) -> list[Part]:
    from pxr import UsdGeom, UsdShade

    prim = mesh.GetPrim()
    points = np.asarray(mesh.GetPointsAttr().Get(time) or [], dtype=np.float64).reshape(-1, 3)
    counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get(time) or [], dtype=np.int64)
    indices = np.asarray(mesh.GetFaceVertexIndicesAttr().Get(time) or [], dtype=np.int64)
    if len(points) == 0 or len(counts) == 0 or counts.sum() != len(indices):
        return []
    if len(indices) and (indices.min() < 0 or indices.max() >= len(points)):
        raise ValueError(f"{prim.GetPath()} indexes points it does not have")
    faces, corners, polygon = triangulate(counts, indices)
    if mesh.GetOrientationAttr().Get() == UsdGeom.Tokens.leftHanded:
        faces, corners = faces[:, ::-1], corners[:, ::-1]

    # Material groups: the mesh's own binding, then each materialBind subset's faces.
    binding = UsdShade.MaterialBindingAPI(prim)
    group = np.zeros(len(counts), dtype=np.int64)
    bound = [binding.ComputeBoundMaterial()[0]]
    for subset in binding.GetMaterialBindSubsets():
        members = np.asarray(subset.GetIndicesAttr().Get(time) or [], dtype=np.int64)
        members = members[(members >= 0) & (members < len(counts))]
        group[members] = len(bound)
        bound.append(UsdShade.MaterialBindingAPI(subset.GetPrim()).ComputeBoundMaterial()[0])
    materials, uv_inputs = [], []
    for material in bound:
        read = read_material(material, textures) if material else (None, None)
        materials.append(read[0])
        uv_inputs.append(read[1])

    api = UsdGeom.PrimvarsAPI(prim)
    source = np.arange(len(points))
    uv = None
    st = _uv_primvar(api, next((u.name for u in uv_inputs if u is not None and u.name), None))
    if st is not None:
        values = np.asarray(st.ComputeFlattened(time), dtype=np.float64)
        interp = st.GetInterpolation()
        if interp in (UsdGeom.Tokens.vertex, UsdGeom.Tokens.varying) and len(values) == len(points):
            uv = values
        elif interp == UsdGeom.Tokens.faceVarying and len(values) == len(indices):
            source, faces, uv = split_seams(st, points, faces, corners)
    normals = mesh.GetNormalsAttr().Get(time)
    normals = np.asarray(normals, dtype=np.float64) if normals is not None else None
    if normals is None or len(normals) != len(points) or mesh.GetNormalsInterpolation() == UsdGeom.Tokens.faceVarying:
        normals = None
    else:
        normals = normals[source]

    parts = []
    for k, material in enumerate(materials):
        tris = np.nonzero(group[polygon] == k)[0]
        if len(tris) == 0:
            continue
        part_uv = uv
        moved = uv_inputs[k]
        if uv is not None and moved is not None and not np.allclose(moved.transform, np.eye(3)):
            part_uv = uv @ moved.transform[:2, :2].T + moved.transform[:2, 2]
        part = Part(name=str(prim.GetPath()), vertices=points[source], faces=faces, uv=part_uv, normals=normals,
                    material=material)
        if material is None:
            part = _display_color(part, api, source, corners, polygon, time, len(points), len(indices), len(counts))
        if len(tris) < len(faces):
            part = _subset(part, tris, polygon)
        parts.append(part)
    return parts


def _subset(part: Part, tris: np.ndarray, polygon: np.ndarray) -> Part:
    used, local = np.unique(part.faces[tris], return_inverse=True)
    pick = (lambda a: a[used] if a is not None else None)  # noqa: E731
    return Part(name=part.name, vertices=part.vertices[used], faces=local.reshape(-1, 3), uv=pick(part.uv),
                normals=pick(part.normals), colors=pick(part.colors), material=part.material)


def _display_color(part: Part, api, source, corners, polygon, time, n_points: int, n_corners: int,
                   n_polygons: int) -> Part:
    """The part coloured by ``primvars:displayColor`` (and ``displayOpacity``) where it has one."""
    from pxr import UsdGeom

    primvar = api.GetPrimvar("displayColor")
    if not primvar or not primvar.HasValue():
        return part
    rgb = np.asarray(primvar.ComputeFlattened(time), dtype=np.float64).reshape(-1, 3)
    interp = primvar.GetInterpolation()
    if interp == UsdGeom.Tokens.constant or len(rgb) == 1:
        return Part(**{**part.__dict__, "material": Material(name="displayColor", base_color=(*rgb[0], 1.0))})
    if interp in (UsdGeom.Tokens.vertex, UsdGeom.Tokens.varying) and len(rgb) == n_points:
        colors = np.column_stack([rgb[source], np.ones(len(source))])
        return Part(**{**part.__dict__, "colors": colors})
    if interp == UsdGeom.Tokens.uniform and len(rgb) == n_polygons:
        per_corner = np.repeat(rgb[polygon], 3, axis=0)
    elif interp == UsdGeom.Tokens.faceVarying and len(rgb) == n_corners:
        per_corner = rgb[corners.reshape(-1)]
    else:
        return part
    # Colours per face or corner: every corner gets its own vertex.
    flat = part.faces.reshape(-1)
    return Part(name=part.name, vertices=part.vertices[flat], faces=np.arange(len(flat)).reshape(-1, 3),
                uv=part.uv[flat] if part.uv is not None else None,
                normals=part.normals[flat] if part.normals is not None else None,
                colors=np.column_stack([per_corner, np.ones(len(flat))]))
