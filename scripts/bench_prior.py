"""Time one SDS step of the latent prior at full size: SD 2.1 base UNet + VAE shapes, random weights.

    PYTHONPATH=. python scripts/bench_prior.py [--device cpu|cuda] [--steps 2] [--out samples/benchmarks/prior.json]

Speed and memory do not depend on weight values, so the published configs of
``stabilityai/stable-diffusion-2-1-base`` (unet/config.json, vae/config.json) are written out
below and the networks built with random weights: nothing is downloaded. One step = resize a
64x64 render to 512, VAE-encode with gradients, noise, UNet on [uncond; cond] (batch 2, CFG),
SDS gradient, backward to the render. Peak memory: RSS on CPU, ``torch.cuda.max_memory_allocated``
on CUDA. GPU rows are only ever filled by a run on a GPU; otherwise they say why they are empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

# stabilityai/stable-diffusion-2-1-base, unet/config.json (published values)
SD21_BASE_UNET = {
    "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
# stabilityai/stable-diffusion-2-1-base, vae/config.json (published values)
SD21_BASE_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 768, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
TEXT_SHAPE = (77, 1024)  # OpenCLIP ViT-H/14 penultimate layer, what SD 2.x cross-attends to
NO_GPU = "not measured: no GPU lent in this session"


def peak_rss_gib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_prior(device: torch.device, dtype: str, attention: str):  # noqa: ANN201
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from magic3d.guidance import PriorConfig
    from magic3d.guidance.stable_diffusion import StableDiffusionPrior

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(SD21_BASE_UNET)
    vae = AutoencoderKL.from_config(SD21_BASE_VAE)
    alphas = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    cfg = PriorConfig(id="bench", dtype=dtype, attention=attention)
    prior = StableDiffusionPrior.from_components(unet, vae, alphas, cfg, device, "sd21-base-random")
    params = sum(p.numel() for p in unet.parameters()), sum(p.numel() for p in vae.parameters())
    return prior, params


def time_steps(prior, device: torch.device, steps: int, render: int) -> list[float]:  # noqa: ANN001
    from magic3d.guidance.base import SDSConfig, TextEmbeddings

    gen = torch.Generator().manual_seed(0)
    emb = TextEmbeddings(torch.randn(1, *TEXT_SHAPE, generator=gen).to(device),
                         torch.randn(1, *TEXT_SHAPE, generator=gen).to(device))
    cfg = SDSConfig(guidance_scale=100.0, t_min=0.02, t_max=0.98)
    times, cpu_times = [], []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        images = torch.rand(1, 3, render, render, generator=gen).to(device).requires_grad_()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = prior.sds(images, emb, i / max(steps, 1), cfg, gen)
        out.loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        assert images.grad is not None and torch.isfinite(images.grad).all()
    return times, cpu_times


def run(device_name: str, dtype: str, attention: str, steps: int, render: int) -> dict:
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    prior, (unet_params, vae_params) = build_prior(device, dtype, attention)
    times, cpu_times = time_steps(prior, device, steps, render)
    row = {
        "device": device_name, "dtype": str(prior.dtype).removeprefix("torch."), "attention": prior.attention,
        "batch": 1, "render": render, "model_input": prior.resolution, "steps_timed": len(times),
        "sds_step_s": {"median": round(statistics.median(times), 3), "all": [round(t, 3) for t in times]},
        # CPU seconds of this process (all threads): wall time on a shared machine depends on the
        # other jobs; this does not, and wall <= cpu / threads when the cores are free.
        "sds_step_cpu_s": {"median": round(statistics.median(cpu_times), 3), "all": [round(t, 3) for t in cpu_times]},
        "unet_params": unet_params, "vae_params": vae_params,
    }
    if device.type == "cuda":
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        row["gpu"] = torch.cuda.get_device_name()
    else:
        row["peak_rss_gib"] = round(peak_rss_gib(), 3)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16"])
    parser.add_argument("--attention", default="sdpa", choices=["auto", "sdpa", "xformers"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--render", type=int, default=64, help="side of the render fed to the prior")
    parser.add_argument("--out", type=Path, default=None, help="write/merge results into this JSON file")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(True)
    row = run(args.device, args.dtype, args.attention, args.steps, args.render)
    row["machine"] = {
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "threads": torch.get_num_threads(),
    }
    row["command"] = "PYTHONPATH=. python scripts/bench_prior.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(json.dumps(row, indent=2))
    if args.out is not None:
        merge_result(args.out, row)
    return 0


def merge_result(path: Path, row: dict) -> None:
    from magic3d.storage import atomic_write_text

    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault("latent_prior_sd21_base", {})
    key = f"{row['device'].split(':')[0]}_{row['dtype']}_{row['attention']}"
    data["latent_prior_sd21_base"][key] = row
    if row["device"].startswith("cpu"):
        for gpu_key in ("cuda_float16_sdpa", "cuda_float16_xformers"):
            data["latent_prior_sd21_base"].setdefault(gpu_key, NO_GPU)
        data.setdefault("pixel_prior_if_stage_1", {"cuda_float16_t5_freed": NO_GPU})
        data.setdefault("targets", {
            "latent_prior_step_gpu": "< 60 ms and < 8 GB at batch 1", "if_stage_1_gpu": "< 12 GB with T5 freed",
        })
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
