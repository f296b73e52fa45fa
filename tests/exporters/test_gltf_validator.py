"""The Khronos glTF validator passes our GLB with nothing to say and catches a broken one.

Skipped where Node or the pinned npm package (installed by .ci/run into .ci/node) is missing.
"""

from __future__ import annotations

import json
import struct

import pytest

from exporters import AssetInfo, write_glb
from exporters.validate import (
    GltfValidatorMissing,
    gltf_problems,
    gltf_report,
    gltf_validator_available,
)

pytestmark = pytest.mark.skipif(
    not gltf_validator_available(), reason="node or the gltf-validator npm package is missing"
)


def split_glb(data: bytes) -> tuple[dict, bytes]:
    """(JSON chunk, BIN chunk) of a GLB."""
    magic, _, _ = struct.unpack_from("<4sII", data)
    assert magic == b"glTF"
    length, kind = struct.unpack_from("<I4s", data, 12)
    assert kind == b"JSON"
    tree = json.loads(data[20 : 20 + length])
    rest = data[20 + length :]
    bin_length, bin_kind = struct.unpack_from("<I4s", rest)
    assert bin_kind == b"BIN\0"
    return tree, rest[8 : 8 + bin_length]


def join_glb(tree: dict, binary: bytes) -> bytes:
    text = json.dumps(tree).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    chunks = (
        struct.pack("<I4s", len(text), b"JSON")
        + text
        + struct.pack("<I4s", len(binary), b"BIN\0")
        + binary
    )
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def test_our_textured_glb_has_no_errors_or_warnings(tmp_path, textured_mesh):
    path = write_glb(
        textured_mesh(), tmp_path / "ball.glb", AssetInfo(name="ball", prompt="a ball", seed=3)
    )
    report = gltf_report(path)
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report["messages"]
    assert gltf_problems(path) == []


def test_an_accessor_running_past_its_buffer_is_an_error(tmp_path, textured_mesh):
    good = write_glb(textured_mesh(), tmp_path / "ball.glb")
    tree, binary = split_glb(good.read_bytes())
    repacked = tmp_path / "repacked.glb"
    repacked.write_bytes(join_glb(tree, binary))
    assert gltf_problems(repacked) == []  # the repacking alone breaks nothing
    position = tree["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
    tree["accessors"][position]["count"] += 1000  # 12 kB more than its buffer view holds
    broken = tmp_path / "broken.glb"
    broken.write_bytes(join_glb(tree, binary))
    report = gltf_report(broken)
    assert report["numErrors"] > 0
    problems = gltf_problems(broken)
    assert any(
        p.startswith("error: [ACCESSOR_TOO_LONG]") and p.endswith(f"at /accessors/{position}")
        for p in problems
    ), problems
    assert all(p.split(":")[0] in ("error", "warning") for p in problems)


def test_a_file_that_is_not_gltf_is_one_unreadable_error(tmp_path):
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"not a model at all")
    problems = gltf_problems(junk)
    assert len(problems) == 1 and problems[0].startswith("error: [UNREADABLE]")


def test_a_missing_validator_is_a_clear_error(tmp_path, monkeypatch, textured_mesh):
    path = write_glb(textured_mesh(), tmp_path / "ball.glb")
    monkeypatch.setenv("MAGIC3D_GLTF_VALIDATOR", str(tmp_path / "nowhere"))
    assert not gltf_validator_available()
    with pytest.raises(GltfValidatorMissing, match="gltf-validator"):
        gltf_problems(path)
