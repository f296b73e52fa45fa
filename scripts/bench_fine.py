"""Seconds per fine-stage step on this machine, split into marching tets, rendering and backward+Adam.

    nice -n 15 python scripts/bench_fine.py [--sizes 64x64,64x128,128x64,128x128] [--threads 1,2]
                                            [--texture-levels 12] [--texture-log2 15]
                                            [--steps 8] [--out samples/benchmarks/fine.json]

The loss is a stand-in (mean of the rendered image) so only the fine stage itself is timed; a real
run adds the prior's SDS cost. The start shape is an analytic soft ball (what a coarse NeRF gives),
initialised through the same code path as ``run_fine`` (automatic threshold, texture regression).
Sizes are ``fine.tet_resolution`` (N/2 cells per side, see magic3d.fields.dmtet) x render pixels;
each run also records ``tet_cells`` per side. (Runs recorded before that field counted cells as
``tet_resolution``: their 32 and 64 are today's 64 and 128.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from magic3d.fields.dmtet import grid_cells  # noqa: E402
from magic3d.fields.texture import TextureConfig  # noqa: E402
from magic3d.stages.fine import FineConfig, FineModel  # noqa: E402


class Ball:
    def density(self, points: torch.Tensor) -> torch.Tensor:
        return 30.0 * torch.sigmoid((0.5 - points.norm(dim=-1)) / 0.03)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.4 * torch.tanh(points)


def fake_loss(rgb, cameras, step_ratio, generator, shading="albedo"):
    loss = rgb.mean()
    return loss, {}


def bench(tet_resolution: int, resolution: int, threads: int, steps: int, batch: int, texture: TextureConfig) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = FineConfig(tet_resolution=tet_resolution, resolution=resolution, batch_size=batch, texture_init_steps=50,
                     texture=texture)
    model = FineModel(cfg, fake_loss, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    clock = time.perf_counter()
    model.initialise(Ball(), generator)
    init_s = time.perf_counter() - clock
    opt = torch.optim.Adam(model.param_groups(), betas=(0.9, 0.99), eps=1e-15)
    parts: dict[str, list[float]] = {"extract": [], "render_loss": [], "backward_adam": [], "step": [], "cpu_step": []}
    faces = 0
    for step in range(steps + 2):  # the first two warm caches and allocators
        wall, cpu = time.perf_counter(), time.process_time()
        t0 = time.perf_counter()
        vertices, f = model.mesh()
        t1, extract_cpu = time.perf_counter(), time.process_time() - cpu
        loss, _ = model.step(step, step / steps, generator)  # extracts again inside: subtract below
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if step >= 2:
            parts["extract"].append(t1 - t0)
            parts["render_loss"].append(max(t2 - t1 - (t1 - t0), 0.0))
            parts["backward_adam"].append(t3 - t2)
            parts["step"].append(t3 - wall - (t1 - t0))  # one extraction per real step
            parts["cpu_step"].append(time.process_time() - cpu - extract_cpu)
        faces = int(f.shape[0])
    return {
        "tet_resolution": tet_resolution, "tet_cells": grid_cells(tet_resolution), "resolution": resolution,
        "batch": batch, "threads": threads,
        "texture_levels": texture.levels, "texture_log2_hashmap_size": texture.log2_hashmap_size,
        "faces": faces, "init_s": round(init_s, 3),
        **{f"{k}_s": round(statistics.median(v), 4) for k, v in parts.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x64,64x128,128x64,128x128",
                        help="tet_resolution x pixels, comma separated")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    # The CPU preset's texture; the paper's 16 levels x 2^19 entries costs seconds per Adam step on CPU
    # (nerfstudio's PyTorch hash grid produces dense gradients for the whole table).
    parser.add_argument("--texture-levels", type=int, default=12)
    parser.add_argument("--texture-log2", type=int, default=15)
    parser.add_argument("--texture-max-res", type=int, default=512)
    parser.add_argument("--out", default=str(ROOT / "samples" / "benchmarks" / "fine.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = []
    for size in args.sizes.split(","):
        tets, pixels = (int(x) for x in size.lower().split("x"))
        for threads in (int(t) for t in args.threads.split(",")):
            texture = TextureConfig(levels=args.texture_levels, log2_hashmap_size=args.texture_log2,
                                    max_res=args.texture_max_res)
            run = bench(tets, pixels, threads, args.steps, args.batch, texture)
            print(json.dumps(run), flush=True)
            runs.append(run)
    result = {
        "benchmark": "fine stage seconds per step (fake loss: no prior cost), median of --steps steps",
        "command": "nice -n 15 python " + " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "shared 2-core machine: other jobs were running; compare threads=1 rows, they suffer least",
        },
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
