"""The geometry content layer: one welded Mesh under ``/<asset>/Geometry``.

Points are shared (USD's own model of a closed surface: one piece, not one per UV island); UVs
are a face-varying ``st`` primvar indexed per corner, each distinct UV stored once, so seams are
sharp in the texture only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from exporters.common import weld


@dataclass(frozen=True)
class PlacedMesh:
    """The welded surface in the asset's frame (metres, up axis applied), as every layer sees it."""

    points: np.ndarray  # "P 3" float64, shared points
    faces: np.ndarray  # "F 3" into points
    normals: np.ndarray  # "P 3", one per point
    uv: np.ndarray | None  # "U 2" distinct UVs
    uv_indices: np.ndarray | None  # "F 3" into uv

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        pts = self.points.astype(np.float32)
        return pts.min(0), pts.max(0)

    def trimesh(self) -> trimesh.Trimesh:
        return trimesh.Trimesh(self.points, self.faces, process=False)


def unique_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct rows in order of first appearance, index of each input row into them): each UV
    stored once, and a file with distinct UVs per vertex keeps their order (see read._split_seams)."""
    table, first, inverse = np.unique(values, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return table[order], rank[inverse.reshape(-1)]


def place_mesh(mesh: trimesh.Trimesh, uv: np.ndarray | None, transform: np.ndarray) -> PlacedMesh:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    shared, of_vertex = weld(vertices)
    first = np.full(len(shared), -1, dtype=np.int64)
    first[of_vertex[::-1]] = np.arange(len(vertices))[::-1]  # one representative vertex per point
    linear = transform[:3, :3]
    # Normals follow the inverse transpose; with a uniform scale and a rotation that is the
    # rotation itself, renormalised. The baker's normals agree across seams.
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)[first] @ np.linalg.inv(linear)
    normals /= np.where((n := np.linalg.norm(normals, axis=1, keepdims=True)) > 0, n, 1.0)
    table, of_vertex_uv = unique_rows(uv.astype(np.float32)) if uv is not None else (None, None)
    return PlacedMesh(
        points=shared @ linear.T + transform[:3, 3],
        faces=of_vertex[faces],
        normals=normals,
        uv=table,
        uv_indices=of_vertex_uv[faces] if of_vertex_uv is not None else None,
    )


def define_mesh(stage, path, placed: PlacedMesh):
    """Author ``placed`` as a UsdGeom.Mesh at ``path``."""
    from pxr import Gf, Sdf, UsdGeom, Vt

    usd_mesh = UsdGeom.Mesh.Define(stage, path)
    usd_mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    usd_mesh.CreateOrientationAttr(UsdGeom.Tokens.rightHanded)
    usd_mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(placed.points.astype(np.float32)))
    usd_mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(placed.faces), 3, dtype=np.int32)))
    usd_mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(placed.faces.reshape(-1).astype(np.int32)))
    usd_mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy(placed.normals.astype(np.float32)))
    usd_mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
    lo, hi = placed.extent
    usd_mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*lo.tolist()), Gf.Vec3f(*hi.tolist())]))
    if placed.uv is not None and placed.uv_indices is not None:
        st = UsdGeom.PrimvarsAPI(usd_mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                         UsdGeom.Tokens.faceVarying)
        st.Set(Vt.Vec2fArray.FromNumpy(placed.uv))
        st.SetIndices(Vt.IntArray.FromNumpy(placed.uv_indices.reshape(-1).astype(np.int32)))
    return usd_mesh
