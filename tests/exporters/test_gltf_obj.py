from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from exporters import FORMATS, AssetInfo, export_asset, load_asset, write_glb, write_obj
from exporters.common import placed, placement


def glb_json(path: Path) -> dict:
    data = path.read_bytes()
    length, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20 : 20 + length])


def test_glb_round_trip_and_explicit_white_base_colour(tmp_path: Path, textured_mesh, same_mesh) -> None:
    mesh = textured_mesh()
    path = write_glb(mesh, tmp_path / "asset.glb")
    same_mesh(load_asset(path), mesh)
    material = glb_json(path)["materials"][0]["pbrMetallicRoughness"]
    # trimesh's bare-texture default is a 0.4 grey factor that darkens every viewer's render.
    assert material.get("baseColorFactor", [1, 1, 1, 1]) == [1, 1, 1, 1]
    assert "baseColorTexture" in material
    assert material["roughnessFactor"] == pytest.approx(0.7) and material["metallicFactor"] == pytest.approx(0.1)


def test_glb_from_a_bare_texture_visual_is_not_darkened(tmp_path: Path, textured_mesh) -> None:
    mesh = textured_mesh()
    image = mesh.visual.material.baseColorTexture
    mesh.visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, image=image)
    material = glb_json(write_glb(mesh, tmp_path / "asset.glb"))["materials"][0]["pbrMetallicRoughness"]
    assert material.get("baseColorFactor", [1, 1, 1, 1]) == [1, 1, 1, 1]


def test_obj_round_trip_with_mtl_and_png(tmp_path: Path, textured_mesh) -> None:
    mesh = textured_mesh()
    path = write_obj(mesh, tmp_path / "thing.obj")
    mtl = (tmp_path / "thing.mtl").read_text()
    assert "map_Kd thing_albedo.png" in mtl and "Kd 1.000000 1.000000 1.000000" in mtl and "Pr 0.700000" in mtl
    assert "mtllib thing.mtl" in path.read_text()
    read = load_asset(path)
    np.testing.assert_allclose(read.vertices, mesh.vertices, atol=1e-7)  # 8 decimals in the text
    np.testing.assert_array_equal(read.faces, mesh.faces)
    np.testing.assert_allclose(read.visual.uv, mesh.visual.uv, atol=1e-7)
    pixels = np.asarray(Image.open(tmp_path / "thing_albedo.png"))
    np.testing.assert_array_equal(pixels, np.asarray(mesh.visual.material.baseColorTexture))


def test_export_asset_writes_every_format_with_one_placement(tmp_path: Path, textured_mesh) -> None:
    mesh = textured_mesh()
    info = AssetInfo(name="ball", prompt="a ball", seed=1)
    files = export_asset(mesh, tmp_path / "out", list(FORMATS), info, up_axis="Y", size_m=2.0)
    assert sorted(files) == sorted(FORMATS)
    assert all(p.is_file() and p.parent == tmp_path / "out" for p in files.values())
    assert not [p for p in (tmp_path / "out").rglob(".*")]  # no temporary names left
    expected = placed(mesh, placement(mesh.vertices, "Y", 2.0)).vertices
    for fmt, path in files.items():
        read = load_asset(path, frame="stage")
        np.testing.assert_allclose(read.vertices, expected, atol=1e-5, err_msg=fmt)
        np.testing.assert_array_equal(read.faces, mesh.faces, err_msg=fmt)


def test_export_asset_refuses_unknown_formats(tmp_path: Path, textured_mesh) -> None:
    with pytest.raises(ValueError, match="fbx"):
        export_asset(textured_mesh(), tmp_path, ["usdc", "fbx"])
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, textured_mesh) -> None:
    mesh = textured_mesh()
    path = write_glb(mesh, tmp_path / "asset.glb")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(trimesh.exchange.gltf, "export_glb", broken)
    with pytest.raises(OSError):
        write_glb(mesh, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["asset.glb"]


def test_load_asset_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "a.fbx").write_text("x")
    with pytest.raises(ValueError, match="fbx"):
        load_asset(tmp_path / "a.fbx")
    with pytest.raises(FileNotFoundError):
        load_asset(tmp_path / "missing.glb")


def test_glb_and_obj_record_where_the_asset_came_from(tmp_path: Path, textured_mesh) -> None:
    import json
    import struct

    info = AssetInfo(name="red-ball", prompt="a red ball,\nshiny", seed=11, generator="magic3d", version="0.4",
                     prior="builtin")
    files = export_asset(textured_mesh(), tmp_path, ["glb", "obj"], info)
    data = files["glb"].read_bytes()
    length, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    tree = json.loads(data[20 : 20 + length])
    assert tree["asset"]["generator"] == "magic3d 0.4"
    assert tree["asset"]["extras"] == {"prompt": "a red ball,\nshiny", "seed": 11, "generator": "magic3d 0.4",
                                       "prior": "builtin"}
    assert [n["name"] for n in tree["nodes"]] == ["red-ball"] and tree["meshes"][0]["name"] == "red-ball"
    assert "trimesh" not in json.dumps(tree)
    head = files["obj"].read_text().splitlines()[:5]
    assert head[:4] == ["# magic3d 0.4 asset 'red-ball'", "# prompt: a red ball, shiny", "# seed: 11", "# prior: builtin"]
    assert "o red-ball" in files["obj"].read_text().splitlines()
    assert len(load_asset(files["obj"]).faces) == len(textured_mesh().faces)  # still reads as before
