"""The README's main job, for real: prompt to USD on the shipped prior, on the CPU, default preset.

Seeds are fixed. What is asserted is what the shipped prior delivers today: the asset opens as
USD, is one closed-looking piece in the prompt's colour, and sits in the stage frame. (The
shape checks of the built-in prior issue, genus and kind, are measured by scripts/eval_builtin.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporters import load_asset
from magic3d.guidance.builtin_world import dominant_colour
from magic3d.pipeline import generate


@pytest.mark.slow
@pytest.mark.parametrize(("prompt", "colour"), [("a blue torus", "blue"), ("a green cube", "green")])
def test_builtin_prompt_to_usd_on_cpu(tmp_path, prompt, colour):
    result = generate(prompt, out=tmp_path, prior="builtin", seed=0, device="cpu")
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["config"]["prior"]["id"] == "builtin"
    assert {"usdc", "usdz", "glb", "preview"} <= set(result.files)

    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(result.files["usdc"]))
    meshes = [p for p in stage.Traverse() if p.IsA(UsdGeom.Mesh)]
    assert len(meshes) == 1
    assert len(UsdGeom.Mesh(meshes[0]).GetFaceVertexCountsAttr().Get()) > 500

    assert dominant_colour(load_asset(result.files["usdc"])) == colour
    placed = load_asset(result.files["usdc"], frame="stage")
    size = placed.bounds[1] - placed.bounds[0]
    assert np.isclose(size.max(), 1.0, atol=0.02)  # export.size_m: largest side one metre
    assert placed.bounds[0][1] == pytest.approx(0.0, abs=1e-3)  # standing on the ground (Y up)
