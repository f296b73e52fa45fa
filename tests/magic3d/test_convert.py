"""``magic3d convert``: other tools' files to validator-clean assets, exactly when they have one
material, baked into one texture when they have more; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

pytest.importorskip("pxr")

from exporters.common import weld  # noqa: E402
from exporters.read import load_parts  # noqa: E402
from exporters.validate import compliance_problems, nvidia_available, nvidia_problems  # noqa: E402
from magic3d import cli  # noqa: E402
from renderers.turntable import render_turntable  # noqa: E402


def run_cli(argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.lstat().st_size for p in root.rglob("*")}


def seamed_box() -> tuple[trimesh.Trimesh, Image.Image]:
    """A box split along UV seams as glTF stores it (every triangle its own UV island: 36 vertices
    over 8 points) with a non-square random texture."""
    rng = np.random.default_rng(3)
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4))
    corners = box.faces.reshape(-1)
    image = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    mesh = trimesh.Trimesh(box.vertices[corners], np.arange(len(corners)).reshape(-1, 3), process=False)
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=[255, 255, 255, 255])
    mesh.visual = trimesh.visual.TextureVisuals(uv=rng.random((len(corners), 2)), material=material)
    return mesh, image


def test_glb_converts_to_a_clean_usdz_with_the_same_welded_vertices_and_texture(tmp_path, capsys, monkeypatch) -> None:
    mesh, image = seamed_box()
    source = tmp_path / "crate.glb"
    source.write_bytes(trimesh.Scene(mesh).export(file_type="glb"))  # trimesh's writer, not ours
    code, out, err = run_cli(["convert", str(source), "--format", "usdz,glb"], capsys, monkeypatch)
    assert code == 0, err
    usdz = tmp_path / "crate" / "asset.usdz"  # default: <stem>/ beside the input
    assert f"usdz: {usdz}" in out and (tmp_path / "crate" / "asset.glb").is_file()
    assert compliance_problems(usdz) == []
    assert compliance_problems(usdz, arkit=True) == []
    if nvidia_available():
        assert nvidia_problems(usdz) == []
    [part] = load_parts(usdz)
    assert len(weld(part.vertices)[0]) == len(weld(mesh.vertices)[0]) == 8
    assert len(part.vertices) == len(mesh.vertices)  # split along the same seams again
    np.testing.assert_array_equal(np.asarray(part.material.image.convert("RGB")), np.asarray(image))
    # Each corner keeps its UV: the same (point order aside) set of UVs per face.
    ours = np.sort(np.round(part.uv[part.faces].reshape(-1, 2), 5), axis=0)
    theirs = np.sort(np.round(np.asarray(mesh.visual.uv)[mesh.faces].reshape(-1, 2), 5), axis=0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    extent = part.vertices.max(0) - part.vertices.min(0)
    np.testing.assert_allclose(extent / extent.max(), [1.0, 0.6, 0.4], atol=1e-5)  # shape kept, largest side 1
    from pxr import Usd

    stage = Usd.Stage.Open(str(usdz))
    made = stage.GetDefaultPrim().GetCustomDataByKey("magic3d:generator")
    assert str(made).startswith("magic3d convert"), made  # provenance: who wrote it


def test_two_materials_are_baked_into_one_texture(tmp_path, capsys, monkeypatch) -> None:
    scene = trimesh.Scene()
    for name, x, rgb in (("red", -0.6, [230, 25, 25, 255]), ("blue", 0.6, [25, 25, 230, 255])):
        box = trimesh.creation.box(extents=(1, 1, 1))
        box.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=rgb))
        scene.add_geometry(box, geom_name=name, transform=trimesh.transformations.translation_matrix([x, 0, 0]))
    source = tmp_path / "pair.glb"
    source.write_bytes(scene.export(file_type="glb"))
    code, _, err = run_cli(["convert", str(source), "--format", "usdc", "--out", str(tmp_path / "out")], capsys, monkeypatch)
    assert code == 0, err
    [part] = load_parts(tmp_path / "out" / "asset.usdc")
    assert part.material.image is not None and len(weld(part.vertices)[0]) == 16
    img = render_turntable([part], frames=1, resolution=64, elevation=0.0, lit=False)[0].astype(int)
    left, right = img[32, 16], img[32, 48]
    assert left[0] > 200 > left[2] and right[2] > 200 > right[0], (left, right)


def bad_case(name: str, tmp: Path) -> list[str]:
    inputs = tmp / "inputs"
    inputs.mkdir()
    good = inputs / "good.stl"
    good.write_bytes(trimesh.creation.box().export(file_type="stl"))
    out = ["--out", str(tmp / "out")]
    if name == "missing file":
        return ["convert", str(inputs / "missing.glb"), *out]
    if name == "unknown format":
        return ["convert", str(good), "--format", "usdz,fbx", *out]
    if name == "unknown input kind":
        (inputs / "mesh.fbx").write_bytes(b"Kaydara FBX Binary")
        return ["convert", str(inputs / "mesh.fbx"), *out]
    if name == "unreadable file":
        (inputs / "broken.glb").write_bytes(b"glTF\x02\x00\x00\x00garbage")
        return ["convert", str(inputs / "broken.glb"), *out]
    if name == "broken USD":
        (inputs / "broken.usda").write_text('#usda 1.0\ndef Mesh "m" {\n  point3f[] points = [(0, 0, 0), (1,\n')
        return ["convert", str(inputs / "broken.usda"), *out]
    if name == "empty out":
        return ["convert", str(good), "--out", ""]
    if name == "empty mesh":
        (inputs / "points.ply").write_bytes(trimesh.PointCloud(np.eye(3)).export(file_type="ply"))
        return ["convert", str(inputs / "points.ply"), *out]
    if name == "stage without a mesh":
        (inputs / "empty.usda").write_text("#usda 1.0\ndef Xform \"World\"\n{\n}\n")
        return ["convert", str(inputs / "empty.usda"), *out]
    if name == "a folder":
        (inputs / "folder.glb").mkdir()
        return ["convert", str(inputs / "folder.glb"), *out]
    if name == "a FIFO":
        os.mkfifo(inputs / "pipe.glb")
        return ["convert", str(inputs / "pipe.glb"), *out]
    if name == "up axis X":
        return ["convert", str(good), "--up-axis", "X", *out]
    if name == "negative size":
        return ["convert", str(good), "--size", "-1", *out]
    if name == "out is a file":
        (tmp / "taken").write_text("mine")
        return ["convert", str(good), "--out", str(tmp / "taken")]
    raise AssertionError(name)


BAD = ["missing file", "unknown format", "unknown input kind", "unreadable file", "broken USD", "empty out", "empty mesh", "stage without a mesh",
       "a folder", "a FIFO", "up axis X", "negative size", "out is a file"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_written(name, tmp_path, capsys, monkeypatch) -> None:
    argv = bad_case(name, tmp_path)
    monkeypatch.chdir(tmp_path)  # a write to the current folder ("--out ''" read as ".") shows up too
    before = snapshot(tmp_path)
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2, (name, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert out == ""
    assert snapshot(tmp_path) == before, name


def test_stl_converts_exactly(tmp_path, capsys, monkeypatch) -> None:
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    source = tmp_path / "plain.stl"
    source.write_bytes(box.export(file_type="stl"))
    code, _, err = run_cli(["convert", str(source), "--format", "usdc,obj", "--up-axis", "Z", "--size", "3"], capsys,
                           monkeypatch)
    assert code == 0, err
    [part] = load_parts(tmp_path / "plain" / "asset.usdc", frame="stage")
    assert len(weld(part.vertices)[0]) == 8 and len(part.faces) == 12
    extent = part.vertices.max(0) - part.vertices.min(0)
    np.testing.assert_allclose(extent, [3.0, 1.5, 1.5], atol=1e-5)  # Z-up: depth along -Y, height along Z
