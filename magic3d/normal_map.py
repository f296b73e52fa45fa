"""A tangent-space normal map that carries the full-resolution surface's detail onto the
decimated mesh, so the face budget costs no visible detail.

Per texel: the low mesh's tangent frame (tangent along +u, bitangent along +v, the OpenGL and glTF
convention: green is up in the image), and the high mesh's normal near that point. Tangents are
per-vertex averages of the faces' UV derivatives, as MikkTSpace computes them for smooth meshes,
so viewers that derive their own from the UVs see the same frames.
"""

from __future__ import annotations

import numpy as np


def vertex_frames(positions: np.ndarray, faces: np.ndarray, uv: np.ndarray,
                  normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tangents "V 3", bitangents "V 3") orthonormal to ``normals``, bitangents with the UVs'
    handedness."""
    p0, p1, p2 = (positions[faces[:, i]] for i in range(3))
    t0, t1, t2 = (uv[faces[:, i]] for i in range(3))
    e1, e2 = p1 - p0, p2 - p0
    d1, d2 = t1 - t0, t2 - t0
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    r = np.where(np.abs(det) > 1e-20, 1.0 / np.where(det == 0, 1.0, det), 0.0)[:, None]
    face_t = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * r
    face_b = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * r
    tangent = np.zeros_like(positions)
    bitangent = np.zeros_like(positions)
    for i in range(3):
        np.add.at(tangent, faces[:, i], face_t)
        np.add.at(bitangent, faces[:, i], face_b)
    return orthonormal(normals, tangent, bitangent)


def orthonormal(n: np.ndarray, t: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = unit(n)
    t = t - n * (n * t).sum(1, keepdims=True)
    # Where a vertex has no usable UV derivative, any direction in the tangent plane will do.
    fallback = unit(np.cross(n, np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])))
    t = np.where(np.linalg.norm(t, axis=1, keepdims=True) > 1e-12, unit(t), fallback)
    handed = np.where((np.cross(n, t) * b).sum(1, keepdims=True) < 0, -1.0, 1.0)
    return t, np.cross(n, t) * handed


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def detail_normals(points: np.ndarray, fallback: np.ndarray, hi_vertices: np.ndarray,
                   hi_normals: np.ndarray, k: int = 4) -> np.ndarray:
    """The high mesh's normal at each point ("N 3"): its ``k`` nearest vertices' normals, nearer
    ones weighing more; those facing away from ``fallback`` (the far side of a thin part) are left
    out, and ``fallback`` stands where none remain."""
    from scipy.spatial import cKDTree

    distance, index = cKDTree(hi_vertices).query(points, k=k)
    near = hi_normals[index]  # "N k 3"
    weight = 1.0 / np.maximum(distance, 1e-9)
    weight = weight * ((near * fallback[:, None, :]).sum(-1) > 0.0)
    summed = (near * weight[..., None]).sum(1)
    ok = weight.sum(1) > 0
    return np.where(ok[:, None], unit(summed), fallback)


def tangent_space(normal: np.ndarray, n: np.ndarray, t: np.ndarray, b: np.ndarray) -> np.ndarray:
    """World normals in the (t, b, n) frames, encoded as colours in [0, 1]."""
    local = np.stack([(normal * t).sum(1), (normal * b).sum(1), (normal * n).sum(1)], axis=1)
    local[:, 2] = np.maximum(local[:, 2], 1e-3)  # never below the surface
    return unit(local) * 0.5 + 0.5


def normal_map_values(
    points: np.ndarray, tri: np.ndarray, bary: np.ndarray, positions: np.ndarray, faces: np.ndarray,
    uv: np.ndarray, normals: np.ndarray, hi_vertices: np.ndarray, hi_faces: np.ndarray,
) -> np.ndarray:
    """Encoded tangent-space normals ("N 3" in [0, 1]) of the high mesh at texels whose surface
    points on the low mesh are ``points`` (triangle ``tri``, barycentric weights ``bary``)."""
    import trimesh

    tangent, bitangent = vertex_frames(positions, faces, uv, normals)
    corners = faces[tri]
    n = unit((bary[..., None] * normals[corners]).sum(1))
    t, b = orthonormal(n, (bary[..., None] * tangent[corners]).sum(1), (bary[..., None] * bitangent[corners]).sum(1))
    hi_normals = np.asarray(trimesh.Trimesh(hi_vertices, hi_faces, process=False).vertex_normals)
    detail = detail_normals(points, n, hi_vertices, hi_normals)
    return tangent_space(detail, n, t, b)
