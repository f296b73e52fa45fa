"""Render the built-in prior's training set: procedural objects seen from random orbit cameras.

    python scripts/make_builtin_dataset.py OUT.npz [--instances 14] [--views 8] [--seed 0]

Images are rendered at 2x with our rasterizer and box-filtered down to 32x32, in the shading
modes the stages use; captions follow the prompts the stages send ("a red torus, side view"), and
each image keeps its camera's (elevation, azimuth) in degrees for the prior's camera conditioning.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from magic3d.guidance.builtin_model import RESOLUTION
from magic3d.guidance.builtin_world import COLOURS, KINDS, ORBIT, SIZES, make_object
from renderers.cameras import OrbitRange, sample_orbit_cameras
from renderers.mesh_render import render_mesh
from renderers.shading import random_lights

# Textureless views hide colour, so their captions omit it: they teach shape alone.
MODE_WEIGHTS = {"albedo": 0.45, "diffuse": 0.4, "textureless": 0.15}


def caption(kind: str, colour: str | None, size: str | None, bucket: str) -> str:
    words = " ".join(w for w in (size, colour, kind) if w)
    return f"a {words}, {bucket} view"


def render_set(instances: int, views: int, seed: int) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    size_words = [None, *SIZES]
    modes, mode_p = list(MODE_WEIGHTS), np.array(list(MODE_WEIGHTS.values()))
    images, captions, kinds, colours, cameras = [], [], [], [], []
    for kind_i, kind in enumerate(KINDS):
        for colour_i, colour in enumerate(COLOURS):
            for _ in range(instances):
                size = size_words[rng.integers(len(size_words))]
                jitter = np.clip(np.array(COLOURS[colour]) * rng.uniform(0.85, 1.15) + rng.normal(0, 0.03, 3), 0, 1)
                v, f, c = make_object(kind, tuple(jitter), size)
                cams = sample_orbit_cameras(views, OrbitRange(**ORBIT), RESOLUTION * 2, generator=gen)
                mode = modes[rng.choice(len(modes), p=mode_p)]
                light = random_lights(cams.positions, gen) if mode != "albedo" else None
                with torch.no_grad():
                    out = render_mesh(torch.from_numpy(v), torch.from_numpy(f), cams,
                                      vertex_colors=torch.from_numpy(c), mode=mode, light=light, background=1.0)
                small = F.avg_pool2d(out.rgb.permute(0, 3, 1, 2), 2).clamp(0, 1)
                images.append((small * 255).round().to(torch.uint8).numpy())
                cameras.append(torch.stack([cams.elevation, cams.azimuth], -1).numpy())
                for bucket in cams.view_buckets():
                    shown = None if mode == "textureless" else colour
                    captions.append(caption(kind, shown, size, bucket))
                    kinds.append(kind_i)
                    colours.append(colour_i if shown else -1)
    return {"images": np.concatenate(images), "captions": np.array(captions), "kinds": np.array(kinds),
            "colours": np.array(colours), "cameras": np.concatenate(cameras).astype(np.float32)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--instances", type=int, default=14, help="objects per (kind, colour) pair")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    data = render_set(args.instances, args.views, args.seed)
    np.savez_compressed(args.out, **data)
    print(f"{len(data['images'])} images in {time.perf_counter() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
