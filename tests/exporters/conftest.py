"""Shared test meshes for the exporter tests (fixtures, since tests/ is not a package)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image


def make_textured_mesh(subdivisions: int = 2) -> trimesh.Trimesh:
    """An off-centre sphere with random UVs and a non-square random texture (catches transposes)."""
    rng = np.random.default_rng(0)
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.7)
    mesh.apply_translation([0.1, -0.2, 0.05])
    uv = rng.random((len(mesh.vertices), 2))
    image = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    material = trimesh.visual.material.PBRMaterial(
        baseColorTexture=image, baseColorFactor=[255, 255, 255, 255], roughnessFactor=0.7, metallicFactor=0.1
    )
    mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    # Exact radial normals differ from trimesh's recomputed ones (~1e-3), so readers must keep the file's.
    radial = mesh.vertices - mesh.vertices.mean(0)
    mesh.vertex_normals = radial / np.linalg.norm(radial, axis=1, keepdims=True)
    return mesh


def assert_same_mesh(read: trimesh.Trimesh, source: trimesh.Trimesh, atol: float = 2e-6) -> None:
    assert read.vertices.shape == source.vertices.shape
    np.testing.assert_allclose(read.vertices, source.vertices, atol=atol)
    np.testing.assert_array_equal(read.faces, source.faces)
    np.testing.assert_allclose(read.vertex_normals, source.vertex_normals, atol=1e-5)  # the file's, not recomputed
    np.testing.assert_allclose(read.visual.uv, source.visual.uv, atol=1e-7)  # float32 rounding
    got = np.asarray(read.visual.material.baseColorTexture.convert("RGB"))
    np.testing.assert_array_equal(got, np.asarray(source.visual.material.baseColorTexture))
    assert read.visual.material.roughnessFactor == pytest.approx(0.7, abs=1e-6)
    assert read.visual.material.metallicFactor == pytest.approx(0.1, abs=1e-6)


@pytest.fixture
def textured_mesh():
    return make_textured_mesh


@pytest.fixture
def same_mesh():
    return assert_same_mesh
