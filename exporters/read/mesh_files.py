"""glTF (``.glb``, ``.gltf`` + ``.bin``), OBJ, PLY and STL files as parts, read by trimesh.

trimesh gives a scene: each geometry keeps its material and is placed by its node's transform.
trimesh drops glTF samplers, so the wrap modes are read from the file's JSON: each material is
tagged with its index before trimesh parses it, and ``textures[baseColorTexture.index].sampler``
gives ``wrapS``/``wrapT`` (REPEAT when absent, as glTF says); a ``KHR_texture_transform`` on it
moves the part's UVs. OBJ textures repeat (as MTL viewers
do); PLY vertex or face colours become vertex colours; STL has no colour.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import trimesh

from exporters.read.parts import Material, Part

GL_WRAP = {33071: "clamp", 33648: "mirror", 10497: "repeat"}
TAG = "magic3d-material-"


def load_mesh_file_parts(path: Path) -> list[Part]:
    suffix = path.suffix.lower()
    wraps: list[tuple[str, str, np.ndarray | None]] = []
    if suffix in (".glb", ".gltf"):
        loaded, wraps = _load_gltf(path)
    else:
        loaded = trimesh.load(str(path), process=False, maintain_order=True)
    if isinstance(loaded, trimesh.Scene):
        meshes = []
        for node in loaded.graph.nodes_geometry:
            transform, name = loaded.graph[node]
            geometry = loaded.geometry[name]
            if isinstance(geometry, trimesh.Trimesh):
                meshes.append((str(node), geometry, np.asarray(transform, dtype=np.float64)))
    else:
        meshes = [(path.stem, loaded, np.eye(4))] if isinstance(loaded, trimesh.Trimesh) else []
    parts = []
    for name, mesh, transform in meshes:
        if len(mesh.faces) == 0:
            continue
        part = _part(name, mesh, wraps, repeat_default=suffix != ".ply")
        parts.append(part if np.allclose(transform, np.eye(4)) else part.transformed(transform))
    if not parts:
        raise ValueError(f"{str(path)!r} holds no triangle mesh")
    return parts


def _part(name: str, mesh: trimesh.Trimesh, wraps: list[tuple[str, str, np.ndarray | None]], repeat_default: bool) -> Part:
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    # Only normals the file gave: trimesh computes them on demand otherwise.
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64) if "vertex_normals" in mesh._cache else None
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        material = visual.material
        uv = np.asarray(visual.uv, dtype=np.float64) if visual.uv is not None and len(visual.uv) == len(vertices) else None
        colors = visual.vertex_attributes.get("color") if hasattr(visual, "vertex_attributes") else None
        colors = _unit_colors(colors) if colors is not None and len(colors) == len(vertices) else None
        index = _tag(material)
        if uv is not None and index is not None and wraps[index][2] is not None:
            moved = wraps[index][2]  # KHR_texture_transform, in trimesh's UVs
            uv = uv @ moved[:2, :2].T + moved[:2, 2]
        return Part(name, vertices, faces, uv=uv, normals=normals, colors=colors,
                    material=_material(material, wraps, repeat_default))
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.defined:
        if visual.kind == "face":  # a colour per face: every corner its own vertex
            flat = faces.reshape(-1)
            colors = np.repeat(_unit_colors(visual.face_colors), 3, axis=0)
            return Part(name, vertices[flat], np.arange(len(flat)).reshape(-1, 3),
                        normals=normals[flat] if normals is not None else None, colors=colors,
                        material=Material(name="vertex colours"))
        return Part(name, vertices, faces, normals=normals, colors=_unit_colors(visual.vertex_colors),
                    material=Material(name="vertex colours"))
    return Part(name, vertices, faces, normals=normals, material=None)


def _unit_colors(colors) -> np.ndarray:
    rgba = np.asarray(colors, dtype=np.float64)
    if rgba.ndim == 2 and rgba.shape[1] == 3:
        rgba = np.column_stack([rgba, np.full(len(rgba), 255.0 if rgba.max(initial=0) > 1 else 1.0)])
    return rgba / 255.0 if np.asarray(colors).dtype.kind in "ui" or rgba.max(initial=0) > 1.0 else rgba


def _tag(material) -> int | None:
    """The glTF material index ``_load_gltf`` wrote into the name, or None."""
    name = str(getattr(material, "name", "") or "")
    return int(name[len(TAG):].partition(":")[0]) if name.startswith(TAG) else None


def _uv_transform(texture: dict) -> np.ndarray | None:
    """KHR_texture_transform (offset, rotation, scale: uv' = T R S uv, v down) as a 3x3 matrix on
    trimesh's UVs (v up, v_trimesh = 1 - v_gltf)."""
    ext = (texture.get("extensions") or {}).get("KHR_texture_transform")
    if not ext:
        return None
    sx, sy = (float(c) for c in ext.get("scale", (1.0, 1.0)))
    ox, oy = (float(c) for c in ext.get("offset", (0.0, 0.0)))
    r = float(ext.get("rotation", 0.0))
    c, s = np.cos(r), np.sin(r)
    gltf = np.array([[1, 0, ox], [0, 1, oy], [0, 0, 1]]) @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) @ np.diag([sx, sy, 1])
    flip = np.array([[1.0, 0, 0], [0, -1, 1], [0, 0, 1]])
    return flip @ gltf @ flip


def _material(material, wraps: list[tuple[str, str, np.ndarray | None]], repeat_default: bool) -> Material:
    if isinstance(material, trimesh.visual.material.SimpleMaterial):
        bare = material.image is not None  # an image is the colour; trimesh's 0.4 grey diffuse is not
        simple_name = material.name
        material = material.to_pbr()
        material.name = simple_name
        if bare:
            material.baseColorFactor = np.array([255, 255, 255, 255], dtype=np.uint8)
    name = str(getattr(material, "name", "") or "")
    wrap = ("repeat", "repeat") if repeat_default else ("clamp", "clamp")
    if name.startswith(TAG):
        index, _, name = name[len(TAG):].partition(":")
        wrap = wraps[int(index)][:2]
        material.name = name or None
    factor = (1.0, 1.0, 1.0, 1.0)
    image, roughness, metallic, normal = None, 1.0, 0.0, None
    if isinstance(material, trimesh.visual.material.PBRMaterial):
        image = material.baseColorTexture
        normal = material.normalTexture
        if material.baseColorFactor is not None:
            raw = np.asarray(material.baseColorFactor, dtype=np.float64)
            factor = tuple(float(c) for c in (raw / 255.0 if raw.max(initial=0) > 1.0 or raw.dtype.kind in "ui" else raw))
            if len(factor) == 3:
                factor = (*factor, 1.0)
        roughness = 1.0 if material.roughnessFactor is None else float(material.roughnessFactor)
        metallic = 0.0 if material.metallicFactor is None else float(material.metallicFactor)  # as the writers read it
    if image is not None and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    if normal is not None and normal.mode != "RGB":
        normal = normal.convert("RGB")
    return Material(name=name, base_color=factor, image=image, wrap_s=wrap[0], wrap_t=wrap[1],  # type: ignore[arg-type]
                    roughness=roughness, metallic=metallic, normal_image=normal)


def _load_gltf(path: Path) -> tuple[trimesh.Scene, list[tuple[str, str, np.ndarray | None]]]:
    """The scene, and by material index its base-colour texture's (wrapS, wrapT, UV transform or None)."""
    data = path.read_bytes()
    binary = None
    if path.suffix.lower() == ".glb":
        header, binary = _glb_chunks(data)
    else:
        header = json.loads(data.decode("utf-8-sig"))
    wraps = []
    for index, material in enumerate(header.get("materials", [])):
        texture = material.get("pbrMetallicRoughness", {}).get("baseColorTexture")
        sampler = {}
        if texture is not None and texture.get("index") is not None:
            tex = header.get("textures", [])[texture["index"]]
            if tex.get("sampler") is not None:
                sampler = header.get("samplers", [])[tex["sampler"]]
        wraps.append((GL_WRAP.get(sampler.get("wrapS", 10497), "repeat"), GL_WRAP.get(sampler.get("wrapT", 10497), "repeat"),
                      _uv_transform(texture) if texture is not None else None))
        material["name"] = f"{TAG}{index}:{material.get('name', '')}"
    text = json.dumps(header).encode("utf-8")
    if binary is None:
        resolver = trimesh.resolvers.FilePathResolver(str(path))
        loaded = trimesh.load(io.BytesIO(text), file_type="gltf", resolver=resolver, process=False, maintain_order=True)
    else:
        loaded = trimesh.load(io.BytesIO(_glb(text, binary)), file_type="glb", process=False, maintain_order=True)
    return loaded, wraps


def _glb_chunks(data: bytes) -> tuple[dict, bytes | None]:
    magic, _version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or length > len(data):
        raise ValueError("not a binary glTF file")
    header, binary, offset = None, None, 12
    while offset + 8 <= length:
        size, kind = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8 : offset + 8 + size]
        if kind == 0x4E4F534A:
            header = json.loads(chunk.decode("utf-8"))
        elif kind == 0x004E4942 and binary is None:
            binary = chunk
        offset += 8 + size
    if header is None:
        raise ValueError("a binary glTF file without its JSON chunk")
    return header, binary if binary is not None else b""


def _glb(text: bytes, binary: bytes) -> bytes:
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text
    if binary:
        chunks += struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks
