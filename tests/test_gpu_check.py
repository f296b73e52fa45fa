"""scripts/gpu_check.py --dry-run on the CPU: every part runs through the project's code and is recorded."""

from __future__ import annotations

import json
import math
import shutil

import pytest


@pytest.fixture(scope="module")
def dry_run(load_script, tmp_path_factory):
    gpu_check = load_script("gpu_check")
    out = tmp_path_factory.mktemp("gpu-check") / "gpu.json"
    real = gpu_check.DEFAULT_OUT
    before = real.read_bytes() if real.is_file() else None
    assert gpu_check.main(["--dry-run", "--out", str(out)]) == 0
    after = real.read_bytes() if real.is_file() else None
    return gpu_check, json.loads(out.read_text(encoding="utf-8")), before == after


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_dry_run_never_touches_the_real_gpu_result(dry_run):
    gpu_check, data, unchanged = dry_run
    assert unchanged, "--dry-run wrote samples/benchmarks/gpu.json"
    assert gpu_check.DRY_RUN_OUT != gpu_check.DEFAULT_OUT
    assert data["dry_run"] is True


def test_machine_and_commit_are_recorded(dry_run):
    _, data, _ = dry_run
    assert data["machine"]["torch"] and data["machine"]["device_name"] == "cpu"
    assert data["commit"] is None or len(data["commit"]) == 40
    assert positive(data["total_wall_s"])


def test_rasterizer_comparison_is_made_against_the_analytic_answer(dry_run):
    _, data, _ = dry_run
    raster = data["raster"]
    assert raster["ok"], raster.get("error")
    assert raster["nvdiffrast"].startswith("unavailable: ")
    assert raster["against"] == "analytic"
    assert set(raster["scenes"]) >= {"triangle", "perspective_triangle", "overlap", "cube"}
    assert all(s["covered_pixels"] > 0 for s in raster["scenes"].values())
    assert raster["rasterize_max_diff"] < 1e-4
    assert raster["interpolate_max_diff"] < 1e-4
    assert raster["antialias_max_diff"] < 1e-6


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_step_times_are_positive_and_finite(dry_run, stage):
    _, data, _ = dry_run
    part = data["step_times"][stage]
    assert part["ok"], part.get("error")
    assert positive(part["seconds_per_step"]) and positive(part["first_step_s"])
    assert part["timed_steps"] >= 1
    assert part["prior"]["unet_params"] > 0
    assert part["peak_gib"] is None  # no CUDA memory on the CPU


@pytest.mark.parametrize("stage, preset_steps", [("coarse", 10000), ("fine", 5000)])
def test_generation_extrapolates_the_preset_from_the_step_rate(dry_run, stage, preset_steps):
    _, data, _ = dry_run
    part = data["generation"][stage]
    assert part["ok"], part.get("error")
    assert part["steps"] == 3 and part["preset_steps"] == preset_steps
    assert positive(part["seconds_per_step"]) and positive(part["run_s"]) and math.isfinite(part["final_loss"])
    assert part["extrapolated_loop_s"] == pytest.approx(part["seconds_per_step"] * preset_steps, abs=0.01)
    assert part["extrapolated_stage_s"] == pytest.approx(part["extrapolated_loop_s"] + part["setup_s"], abs=0.02)
    assert part["setup_s"] >= 0


def test_total_extrapolation_adds_the_stages(dry_run):
    _, data, _ = dry_run
    stages = sum(data["generation"][s]["extrapolated_stage_s"] for s in ("coarse", "fine"))
    assert data["extrapolated_paper_s"] == pytest.approx(stages, abs=0.02)


def test_a_failing_part_is_recorded_and_the_rest_still_runs(load_script):
    gpu_check = load_script("gpu_check")
    results: dict = {}

    def broken():
        raise RuntimeError("nvdiffrast build failed")

    assert gpu_check.guarded(results, "raster", broken) is None
    assert results["raster"]["ok"] is False
    assert results["raster"]["error"] == "RuntimeError: nvdiffrast build failed"
    assert gpu_check.guarded(results, "next", lambda: {"x": 1})["x"] == 1


def test_a_real_run_refuses_a_machine_without_cuda(load_script, monkeypatch):
    gpu_check = load_script("gpu_check")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2


def test_full_size_configs_have_the_public_shapes(load_script):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    gpu_check = load_script("gpu_check")
    with torch.device("meta"):
        if_unet = UNet2DConditionModel(**gpu_check.IF_I_XL_UNET)
        sd_unet = UNet2DConditionModel(**gpu_check.SD21_UNET)
        vae = AutoencoderKL(**gpu_check.SD21_VAE)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert 4.2e9 < count(if_unet) < 4.4e9  # IF-I-XL: 4.3 B
    assert 860e6 < count(sd_unet) < 870e6  # SD 2.1 base UNet: 865 M
    assert 80e6 < count(vae) < 90e6  # SD's VAE: 83.7 M
    # The inputs the priors give them (shapes only: meta tensors compute nothing).
    with torch.device("meta"):
        t = torch.tensor([500, 500])
        eps = if_unet(torch.randn(2, 3, 64, 64), t, encoder_hidden_states=torch.randn(2, *gpu_check.IF_TEXT)).sample
        assert eps.shape == (2, 6, 64, 64)
        latents = vae.encode(torch.randn(1, 3, 512, 512)).latent_dist.mean
        assert latents.shape == (1, 4, 64, 64)
        eps = sd_unet(torch.randn(2, 4, 64, 64), t, encoder_hidden_states=torch.randn(2, *gpu_check.SD_TEXT)).sample
        assert eps.shape == (2, 4, 64, 64)


def test_fine_parts_fall_back_to_a_fresh_blob_when_the_coarse_field_has_no_surface(load_script):
    import argparse

    import torch

    from magic3d.errors import RunError

    gpu_check = load_script("gpu_check")
    args = argparse.Namespace(dry_run=True, deadline=60.0)
    check = gpu_check.Check(args, torch.device("cpu"))
    shutil.rmtree(check.work)  # its scratch folder; this test runs no stage
    check.coarse_field = "an emptied field"
    seen = []

    def initialise(field):
        seen.append(field)
        if isinstance(field, str):
            raise RunError("The fine stage's surface is empty")

    note = check.with_coarse_field(initialise)
    assert note.startswith("fresh density blob") and "surface is empty" in note
    assert len(seen) == 2 and hasattr(seen[1], "density")


def test_the_cuda_code_paths_run_under_the_device_harness(load_script, monkeypatch, tmp_path):
    """Every part's CUDA branches (fp16 priors, autocast, syncs, peak memory) without a GPU:
    the tiny networks on a CPU that calls itself cuda:0 and rejects host/device mixes."""
    import torch
    from device_harness import DeviceHarness

    gpu_check = load_script("gpu_check")

    def build_on_host_then_move(cls, config, device):  # the harness cannot see a default-device context
        torch.manual_seed(0)
        return cls(**config).to(device)

    class Properties:
        name, total_memory = "device-harness (CPU)", 2**30

    monkeypatch.setattr(gpu_check, "build_on_device", build_on_host_then_move)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: None)
    monkeypatch.setattr("renderers.raster._fallback_warned", True)
    out = tmp_path / "gpu.json"
    with DeviceHarness(ignore_syncs_in=("renderers/raster/torch_backend.py",)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
        assert gpu_check.main(["--dry-run", "--device", "cuda", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["machine"]["device_name"] == "device-harness (CPU)"
    parts = [data["raster"], *data["step_times"].values(), *data["generation"].values()]
    assert len(parts) == 5
    for part in parts:
        assert part["ok"], part.get("traceback")
    assert data["step_times"]["coarse"]["prior"]["dtype"] == "torch.float16"  # the CUDA default
