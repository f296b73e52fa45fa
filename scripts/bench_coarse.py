"""Rays per second and seconds per coarse step on this machine, for the coarse presets.

    nice -n 15 python scripts/bench_coarse.py [--presets fast,builtin] [--threads 1,2] [--steps 6]
                                              [--modes albedo,textureless] [--tiny-prior]
                                              [--out samples/benchmarks/coarse.json]

Each timed step is exactly what ``run_coarse`` does per step (camera batch, occupancy-sampled volume
render, loss, regularisers, backward, Adam, occupancy refresh when due), driven by a stand-in loss
with a constant image gradient so that only the coarse stage is timed. ``--tiny-prior`` adds a run
with the real SDS loss through a tiny random Stable-Diffusion-shaped pipeline
(scripts/make_tiny_prior.py), which shows the overhead of resizing, VAE encoding and the UNet call
at the smallest model size. The occupancy grid is first refreshed on the initial density blob, as
it is after the first refresh of a real run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from magic3d.fields.nerf import FieldConfig  # noqa: E402
from magic3d.stages.coarse import CoarseConfig, CoarseModel  # noqa: E402

# The coarse settings suggested for the shipped presets (the YAML presets are the lead's; keep in step).
PRESETS: dict[str, CoarseConfig] = {
    "paper": CoarseConfig(
        steps=5000, batch_size=1, resolution=64, samples_per_ray=64, lr=1e-2,
        field=FieldConfig(levels=16, features_per_level=2, log2_hashmap_size=19, min_res=16, max_res=2048, hidden=64),
        occupancy_resolution=64, occupancy_every=16, checkpoint_every=500, preview_every=500, albedo_warmup=500,
    ),
    "fast": CoarseConfig(
        steps=1000, batch_size=1, resolution=64, samples_per_ray=48, lr=1e-2,
        field=FieldConfig(levels=8, features_per_level=2, log2_hashmap_size=16, min_res=16, max_res=512, hidden=32),
        occupancy_resolution=32, occupancy_every=16, checkpoint_every=200, preview_every=200, albedo_warmup=100,
    ),
    "builtin": CoarseConfig(
        steps=200, batch_size=1, resolution=32, samples_per_ray=32, lr=2e-2,
        field=FieldConfig(levels=8, features_per_level=2, log2_hashmap_size=14, min_res=16, max_res=128, hidden=32),
        occupancy_resolution=32, occupancy_every=16, checkpoint_every=50, preview_every=100, albedo_warmup=50,
    ),
}


class ConstantGradient:
    """loss = <rgb, g> for a fixed random g: every step back-propagates the same image gradient."""

    def __init__(self, resolution: int) -> None:
        self.g = torch.randn(resolution, resolution, 3, generator=torch.Generator().manual_seed(0)) * 1e-3

    def __call__(self, rgb, cameras, step_ratio, generator):
        return (rgb * self.g.to(rgb)).sum(), {}


def tiny_sds_loss(cfg: CoarseConfig, device: torch.device, work: Path):
    from magic3d.guidance import PriorConfig, load_prior
    from magic3d.guidance.tiny import build_tiny_sd
    from magic3d.prompts import ViewPrompts
    from magic3d.stages.losses import SDSLoss

    folder = build_tiny_sd(work / "tiny-sd")
    prior_cfg = PriorConfig(id=str(folder))
    prior = load_prior(str(folder), prior_cfg, device)
    return SDSLoss(prior, ViewPrompts.build("a red chair", prior, prior_cfg), cfg.sds), int(prior.resolution)


def time_steps(cfg: CoarseConfig, loss_fn, steps: int, device: torch.device) -> dict[str, float]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CoarseModel(cfg, loss_fn, device)
    gen = torch.Generator().manual_seed(0)
    model.occupancy.update(model.field.density, gen, device)
    opt = torch.optim.Adam(model.param_groups(), betas=(0.9, 0.99), eps=1e-15)
    render_s, total_s = [], []
    for step in range(steps + 1):  # the first step warms up allocators and is not counted
        start = time.perf_counter()
        loss, _ = model.step(step, step / steps, gen)
        rendered = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.after_step(step, gen)
        end = time.perf_counter()
        if step:
            render_s.append(rendered - start)
            total_s.append(end - start)
    occupied = float(model.occupancy.occupied().float().mean())
    step_s = statistics.median(total_s)
    rays = cfg.batch_size * cfg.resolution**2
    return {
        "seconds_per_step": round(step_s, 4),
        "forward_seconds": round(statistics.median(render_s), 4),
        "rays_per_step": rays,
        "rays_per_second": round(rays / step_s, 1),
        "samples_per_second": round(rays * cfg.samples_per_ray / step_s, 1),
        "occupied_fraction": round(occupied, 4),
    }


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fast,builtin")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--modes", default="albedo,textureless")
    parser.add_argument("--tiny-prior", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "benchmarks" / "coarse.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = {"machine": machine(), "command": "nice -n 15 python scripts/bench_coarse.py " + " ".join(argv or sys.argv[1:]),
               "loss": "constant image gradient (stand-in for SDS)", "runs": []}
    for name in args.presets.split(","):
        base = PRESETS[name]
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for mode in args.modes.split(","):
                shading = {"albedo": (1.0, 0.0, 0.0), "diffuse": (0.0, 1.0, 0.0), "textureless": (0.0, 0.0, 1.0)}[mode]
                cfg = dataclasses.replace(base, shading=shading, albedo_warmup=0)
                row = {"preset": name, "threads": threads, "mode": mode, "resolution": cfg.resolution,
                       "samples_per_ray": cfg.samples_per_ray, "levels": cfg.field.levels,
                       "log2_hashmap_size": cfg.field.log2_hashmap_size,
                       **time_steps(cfg, ConstantGradient(cfg.resolution), args.steps, device)}
                print(json.dumps(row), flush=True)
                results["runs"].append(row)
    if args.tiny_prior:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as work:
            cfg = dataclasses.replace(PRESETS["fast"], shading=(1.0, 0.0, 0.0), albedo_warmup=0)
            loss_fn, prior_res = tiny_sds_loss(cfg, device, Path(work))
            row = {"preset": "fast", "threads": 1, "mode": "albedo", "loss": f"SDS, tiny random SD ({prior_res} px)",
                   "resolution": cfg.resolution, **time_steps(cfg, loss_fn, args.steps, device)}
            print(json.dumps(row), flush=True)
            results["runs"].append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
