"""Rasterizer throughput: triangles/s and pixels/s per backend, resolution and mesh size.

    PYTHONPATH=. python scripts/bench_raster.py [--views 4] [--resolutions 64,256,512]
                                                [--faces 1000,10000,100000] [--out samples/benchmarks/raster.json]

Each case renders a UV sphere of about the given face count (radius 0.8, filling ~20% of the
image, seen from ``--views`` orbit cameras at once, as the fine stage does) and times:
- ``rasterize``: visibility + differentiable barycentrics only;
- ``step``: rasterize, interpolate colours, antialias, and the backward pass of a mean loss
  into vertex positions and colours (what one render costs inside a training step).
Triangles/s counts every triangle of every view; pixels/s every pixel of every view. Times are
the median of a few repeats after one warm-up. The machine is shared: its load average is
recorded beside the numbers, and torch runs one thread unless ``--threads`` says otherwise (see
its help). CUDA (nvdiffrast) is measured when present, else marked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from renderers.cameras import orbit_cameras  # noqa: E402
from renderers.raster import TorchRasterizer, get_rasterizer  # noqa: E402


def sphere(faces: int) -> tuple[torch.Tensor, torch.Tensor]:
    # trimesh's UV sphere with count [n, n] has about 4 n^2 faces.
    n = max(4, round((faces / 4) ** 0.5))
    mesh = trimesh.creation.uv_sphere(0.8, count=[n, n])
    return torch.tensor(mesh.vertices, dtype=torch.float32), torch.tensor(mesh.faces, dtype=torch.int64)


def timed(fn, sync, budget_s: float = 3.0, max_repeats: int = 5) -> float:
    fn()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < 1 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_case(raster, device: str, faces: int, res: int, views: int) -> dict:
    v, f = sphere(faces)
    v, f = v.to(device), f.to(device)
    cams = orbit_cameras([20.0] * views, [360.0 * k / views for k in range(views)], 3.0, 45.0, res, device=device)
    mvp = cams.mvp().to(device)
    colours = (v + 1.0) / 2.0
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def clip_of(verts):
        return torch.cat([verts, torch.ones_like(verts[:, :1])], dim=-1) @ mvp.transpose(1, 2)

    def rasterize_only():
        with torch.no_grad():
            raster.rasterize(clip_of(v), f, (res, res))

    def step():
        verts = v.clone().requires_grad_(True)
        cols = colours.clone().requires_grad_(True)
        clip = clip_of(verts)
        rast = raster.rasterize(clip, f, (res, res))
        img = raster.antialias(raster.interpolate(cols, rast, f), rast, clip, f)
        img.mean().backward()

    t_rast = timed(rasterize_only, sync)
    t_step = timed(step, sync)
    tris, pixels = len(f) * views, res * res * views
    return {
        "faces": len(f), "resolution": res, "views": views,
        "rasterize_s": round(t_rast, 4), "step_s": round(t_step, 4),
        "rasterize_triangles_per_s": round(tris / t_rast), "rasterize_pixels_per_s": round(pixels / t_rast),
        "step_triangles_per_s": round(tris / t_step), "step_pixels_per_s": round(pixels / t_step),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--resolutions", default="64,256,512")
    parser.add_argument("--faces", default="1000,10000,100000")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: torch's default). 1 by default: on shared busy cores two OpenMP "
                             "threads spin-wait on each other and run ~30x slower; use 0 on an idle machine")
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "benchmarks" / "raster.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    face_counts = [int(n) for n in args.faces.split(",")]

    report: dict = {
        "command": "PYTHONPATH=. nice -n 15 python " + " ".join(["scripts/bench_raster.py", *sys.argv[1:]]),
        "machine": {
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_before": list(os.getloadavg()),
        },
        "backends": {},
    }
    cases = []
    for faces in face_counts:
        for res in resolutions:
            case = bench_case(TorchRasterizer(), "cpu", faces, res, args.views)
            print(json.dumps(case), flush=True)
            cases.append(case)
    report["backends"]["torch_cpu"] = cases

    if torch.cuda.is_available():
        raster = get_rasterizer("cuda")
        gpu = []
        for faces in face_counts:
            for res in resolutions:
                gpu.append(bench_case(raster, "cuda", faces, res, args.views))
                print(json.dumps(gpu[-1]), flush=True)
        report["backends"][f"{raster.name}_cuda"] = gpu
        report["machine"]["gpu"] = torch.cuda.get_device_name()
    else:
        report["backends"]["nvdiffrast_cuda"] = "not measured: no CUDA"
    report["machine"]["load_average_after"] = list(os.getloadavg())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", suffix=".tmp", dir=args.out.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
