"""The path almost every user takes, run here: a real-shaped prior on CUDA, under the device harness.

DeepFloyd IF (tiny, hub layout: T5 + sentencepiece tokenizer, 6-channel UNet) for the coarse
stage and Stable Diffusion (tiny) for the fine stage, as the paper preset pairs them; the run
device is ``cuda`` as far as the code can tell, so every CUDA branch runs (fp16 priors, bf16
autocast for the fields, the nvdiffrast fallback), and any tensor made on the host that meets
one on the device fails the test. It also holds the host syncs per training step down.
"""

from __future__ import annotations

import json

from device_harness import DeviceHarness, per_step_syncs

from magic3d.pipeline import generate

SMALL = ["coarse.steps=6", "coarse.resolution=32", "coarse.checkpoint_every=3", "coarse.occupancy_every=2",
         "fine.steps=4", "fine.resolution=64", "fine.tet_resolution=32", "fine.checkpoint_every=100",
         "fine.texture_init_steps=5", "fine.texture.log2_hashmap_size=12", "fine.texture.max_res=128",
         "bake.texture_size=64", "export.preview_frames=2", "export.preview_resolution=32",
         "export.formats=[usdc,glb,obj]"]


def test_paper_pairing_runs_every_stage_on_cuda_with_few_host_syncs(tiny_if_dir, tiny_prior_dir, tmp_path):
    overrides = [f"prior.id={tiny_if_dir}", f"prior.fine_id={tiny_prior_dir}", *SMALL]
    # The PyTorch rasterizer stands in for nvdiffrast here; its syncs are counted apart.
    with DeviceHarness(ignore_syncs_in=("raster/torch_backend.py",)) as harness:
        progress, syncs = per_step_syncs(harness)
        result = generate("a red chair", out=tmp_path, preset="paper", overrides=overrides, device="cuda",
                          progress=progress)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["device"].startswith("cuda")
    assert {p.suffix for p in result.files.values()} >= {".usdc", ".glb", ".obj"}
    assert all(p.stat().st_size > 0 for p in result.files.values())
    assert result.metrics["faces"] > 0
    # A plain step: the loop's one read and the volume renderer's culling of empty samples. (Each
    # entry counts from the previous step's progress call, so a checkpoint (steps 3, 6) shows in
    # the step after it and an occupancy update (every 2nd step) in its own.)
    coarse = [n for i, n in enumerate(syncs["coarse"], 1) if i % 2 and (i - 1) % 3 and i > 1]
    assert coarse and max(coarse) <= 2, (syncs, harness.sync_lines.most_common(8))
    fine = syncs["fine"][1:]  # marching tetrahedra's output size depends on the SDF: a few syncs
    assert fine and max(fine) <= 12, (syncs, harness.sync_lines.most_common(12))
