"""The README's main job, for real: prompt to USD on the shipped prior, on the CPU, default preset.

Seeds are fixed. The asset opens as USD, is one piece in the prompt's colour, sits in the stage
frame, and has the prompt's shape: the torus has one hole, the cube none and a near-cubic
oriented bounding box. (Kind recognition over 20 prompts is measured by scripts/eval_builtin.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporters import load_asset
from magic3d.guidance.builtin_world import dominant_colour, genus
from magic3d.pipeline import generate

# Shortest over longest side of the cube's oriented bounding box; a flat slab or a rod is far below.
CUBIC_RATIO = 0.8


@pytest.mark.slow
@pytest.mark.parametrize(("prompt", "colour", "holes"), [("a blue torus", "blue", 1), ("a green cube", "green", 0)])
def test_builtin_prompt_to_usd_on_cpu(tmp_path, prompt, colour, holes):
    result = generate(prompt, out=tmp_path, prior="builtin", seed=0, device="cpu")
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["config"]["prior"]["id"] == "builtin"
    assert {"usdc", "usdz", "glb", "preview"} <= set(result.files)

    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(result.files["usdc"]))
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 1
    assert len(UsdGeom.Mesh(meshes[0]).GetFaceVertexCountsAttr().Get()) > 500

    asset = load_asset(result.files["usdc"])
    assert dominant_colour(asset) == colour
    assert genus(asset) == holes
    if prompt.endswith("cube"):
        extents = np.sort(asset.bounding_box_oriented.primitive.extents)
        assert extents[0] / extents[2] > CUBIC_RATIO, extents
    placed = load_asset(result.files["usdc"], frame="stage")
    size = placed.bounds[1] - placed.bounds[0]
    assert np.isclose(size.max(), 1.0, atol=0.02)  # export.size_m: largest side one metre
    assert placed.bounds[0][1] == pytest.approx(0.0, abs=1e-3)  # standing on the ground (Y up)
