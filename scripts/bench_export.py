"""Bake and export times for meshes of 10k, 100k and 500k faces at 1024 and 2048 textures.

    PYTHONPATH=. nice -n 15 .venv/bin/python scripts/bench_export.py [--faces 10000 100000 500000]
        [--sizes 1024 2048] [--face-budget 0] [--out samples/benchmarks/export.json]

The mesh is a torus (genus one, so the atlas needs real cuts) tessellated to the face count; the
colour field is analytic, so the numbers are the baker's and exporters' own cost, not a network's.
``--face-budget 0`` (default here) bakes every face; the pipeline's default budget decimates first.
Each case is written to the JSON as soon as it finishes, so a long run that is stopped keeps what
it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import trimesh

from exporters import FORMATS, AssetInfo, export_asset
from magic3d.bake import BakeConfig, bake
from magic3d.storage import atomic_write_text


def torus_with_faces(faces: int) -> trimesh.Trimesh:
    """A torus with about ``faces`` triangles (2 per grid cell, major:minor sections 2:1)."""
    minor = max(8, int(round(np.sqrt(faces / 4))))
    return trimesh.creation.torus(0.7, 0.25, major_sections=2 * minor, minor_sections=minor)


def field(points: torch.Tensor) -> torch.Tensor:
    return 0.5 + 0.4 * torch.sin(4.0 * points + torch.tensor([0.0, 1.7, 3.1]))


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus_visible": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def run_case(faces: int, size: int, face_budget: int, formats: list[str]) -> dict[str, object]:
    source = torus_with_faces(faces)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    mesh = bake(source.vertices, source.faces, field, BakeConfig(texture_size=size, face_budget=face_budget),
                timings=timings)
    bake_s = time.perf_counter() - clock
    export_s: dict[str, float] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as out:
        for fmt in formats:
            clock = time.perf_counter()
            files = export_asset(mesh, out, [fmt], AssetInfo(name="bench", prompt="bench"))
            export_s[fmt] = round(time.perf_counter() - clock, 3)
            sizes[fmt] = files[fmt].stat().st_size
    return {
        "faces_in": int(len(source.faces)),
        "faces_out": int(len(mesh.faces)),
        "vertices_out": int(len(mesh.vertices)),
        "texture_size": size,
        "bake_s": round(bake_s, 3),
        "bake_steps_s": {k: round(v, 3) for k, v in timings.items()},
        "export_s": export_s,
        "file_bytes": sizes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faces", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--face-budget", type=int, default=0)
    parser.add_argument("--formats", nargs="+", default=list(FORMATS))
    parser.add_argument("--out", type=Path, default=Path("samples/benchmarks/export.json"))
    args = parser.parse_args()

    report: dict[str, object] = {
        "command": (f"nice -n {os.nice(0)} " if os.nice(0) else "") + "python scripts/bench_export.py " + " ".join(
            [f"--faces {' '.join(map(str, args.faces))}", f"--sizes {' '.join(map(str, args.sizes))}",
             f"--face-budget {args.face_budget}"]),
        "machine": machine(),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
        "field": "analytic sin(4p) colour field (no network)",
        "cases": [],
    }
    for faces in args.faces:
        for size in args.sizes:
            print(f"{faces} faces, {size}px ...", flush=True)
            case = run_case(faces, size, args.face_budget, args.formats)
            print(json.dumps(case), flush=True)
            report["cases"].append(case)  # type: ignore[union-attr]
            atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
