"""`magic3d generate` end to end on a tiny random Stable-Diffusion-shaped prior (a plumbing check)."""

from __future__ import annotations

import json
import sys

import pytest
from PIL import Image

from magic3d import cli

TINY_STEPS = ["--set", "coarse.steps=30", "--set", "fine.steps=4", "--set", "bake.texture_size=128",
              "--set", "export.preview_frames=4", "--set", "export.preview_resolution=64"]


@pytest.mark.slow
def test_generate_writes_assets_checkpoints_previews_and_record(tiny_prior_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["magic3d", "generate", "a red cube", "--prior", str(tiny_prior_dir), "--preset", "fast",
            "--out", str(out), "--seed", "7", "--device", "cpu", "--quiet", *TINY_STEPS]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0, capsys.readouterr().err
    run = out / "a-red-cube"
    record = json.loads((run / "run.json").read_text())
    assert record["prompt"] == "a red cube"
    assert record["seed"] == 7
    assert record["status"] == "done"
    assert record["config"]["coarse"]["steps"] == 30
    assert record["versions"]["torch"].startswith("2.")
    assert {"coarse", "fine", "bake", "export"} <= set(record["timings"])
    assert sorted((run / "checkpoints").glob("coarse-*.safetensors"))
    assert sorted((run / "checkpoints").glob("fine-*.safetensors"))
    previews = sorted((run / "previews").glob("*.png"))
    assert previews
    assert Image.open(previews[0]).size[0] > 0
    for fmt in ("usdc", "usdz", "glb"):
        path = run / record["files"][fmt]
        assert path.is_file() and path.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "usdc:" in printed

    # A second run of the same command finds the finished run and does no work.
    stamp = (run / "run.json").stat().st_mtime_ns
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    assert (run / "run.json").stat().st_mtime_ns == stamp

    # Re-export in other formats without optimising again.
    monkeypatch.setattr(sys, "argv", ["magic3d", "export", str(run), "--format", "obj,usda", "--up-axis", "Z"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    assert (run / "asset.obj").is_file() and (run / "asset.usda").is_file()
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(run / "asset.usda"))
    assert UsdGeom.GetStageUpAxis(stage) == "Z"

    # A different config on the same folder is refused rather than silently mixed.
    monkeypatch.setattr(sys, "argv", [*argv, "--set", "coarse.steps=31"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    assert "--restart" in capsys.readouterr().err
