"""SIGKILL a real `magic3d generate` at points across both stages and export; re-run until done.

The resumed run must end with the same parameters as an uninterrupted one, and no file in
the output may ever be truncated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["--set", "coarse.steps=24", "--set", "coarse.checkpoint_every=2", "--set", "fine.steps=12",
         "--set", "fine.checkpoint_every=2", "--set", "bake.texture_size=128", "--set", "export.preview_frames=3",
         "--set", "export.preview_resolution=48", "--set", "export.formats=usdc,usdz,glb"]


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "magic3d", "generate", "a red cube", "--prior", "builtin", "--preset", "builtin",
            "--seed", "3", "--device", "cpu", "--quiet", "--out", str(out), *STEPS]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run / "checkpoints").glob("fine-*.safetensors"))[-1]
    return load_file(str(newest))


def assert_every_output_opens(root: Path) -> None:
    import trimesh
    from PIL import Image
    from pxr import Usd

    for path in root.rglob("*"):
        if ".tmp" in path.name or not path.is_file():
            continue
        if path.suffix in (".usdc", ".usda", ".usdz"):
            assert Usd.Stage.Open(str(path)) is not None, path
        elif path.suffix == ".glb":
            assert len(trimesh.load(path, force="mesh").faces) > 0, path
        elif path.suffix in (".png", ".gif"):
            Image.open(path).load()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> bool:
    start = time.time()
    while time.time() - start < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def temp_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if ".tmp" in p.name}


def stage_points(run: Path) -> list:
    """Predicates in pipeline order, each true from some point of the run onwards: kills land
    in every stage (prompt cache, coarse, texture initialisation, fine, bake, export, preview)."""
    ckpt = run / "checkpoints"

    def exists(name: str):
        return lambda: (run / name).exists()

    def newest(stage: str) -> int:
        steps = [int(p.stem.split("-")[1]) for p in ckpt.glob(f"{stage}-*.safetensors") if p.stem.split("-")[1].isdigit()]
        return max(steps, default=-1)

    # At a checkpoint or past it: a step takes a few tens of ms, and older checkpoints are pruned,
    # so one exact file may come and go between two polls.
    def coarse_at(step: int):
        return lambda: newest("coarse") >= step or newest("fine") >= 0

    def fine_at(step: int):
        return lambda: newest("fine") >= step or (run / "checkpoints" / "baked.glb").exists()

    return [
        exists("run.json"),  # prompt embeddings being cached, coarse starting
        *(coarse_at(s) for s in range(2, 24, 2)),
        coarse_at(24),  # texture initialisation from the coarse field
        *(fine_at(s) for s in range(2, 12, 2)),
        fine_at(12),  # mesh extraction and bake
        exists("checkpoints/baked.glb"),  # the asset formats
        exists("asset.usdz"),  # the preview
    ]


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    """At least 20 SIGKILLs over every stage; after each, the next run sweeps what the kill left,
    and the final run's outputs are all there and equal an uninterrupted run's."""
    clean = tmp_path / "clean"
    subprocess.run(command(clean), env=env(), check=True, timeout=900, capture_output=True)
    expected = final_tensors(clean / "a-red-cube")

    out = tmp_path / "killed"
    run = out / "a-red-cube"
    points = stage_points(run)
    kills, left_by_kills, target = 0, set(), 20
    attempts = 0
    while kills < target and attempts < 40:
        attempts += 1
        point = points[min(kills, len(points) - 1)]
        proc = subprocess.Popen(command(out), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if wait_for(lambda p=point, left=left_by_kills: p() and not left & temp_files(out), proc):
            # The resumed run has swept what the previous kill left (checked by the wait above).
            # Up to 0.15 s past the point, so kills also land mid-write; a step takes ~50 ms, so a
            # longer wait would let a whole stage slip by between kills.
            time.sleep(0.05 * (kills % 4))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        proc.wait(timeout=600)
        assert_every_output_opens(out)
        left_by_kills = temp_files(out)
        if proc.returncode == 0:
            break  # the run finished before this kill landed: nothing left to interrupt
    final = subprocess.run(command(out), env=env(), timeout=900, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert kills >= target, f"only {kills} kills landed"
    assert temp_files(out) == set(), "temporary files survived the resume"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done"
    for name in record["files"].values():
        assert (run / name).is_file(), name
    for stage, steps in (("coarse", 24), ("fine", 12)):
        assert (run / "previews" / f"{stage}-{steps:06d}.png").is_file()
    assert_every_output_opens(out)
    got = final_tensors(run)
    assert expected.keys() == got.keys()
    # Parameters and optimizer moments; the process-global NumPy RNG is not part of the result.
    params = [key for key in expected if not key.startswith("rng/")]
    assert "dmtet/sdf" in params and any(key.startswith("optim/") for key in params)
    for key in params:
        assert torch.allclose(expected[key], got[key], atol=1e-6), key
