"""Check the built-in prior: one sample per (kind, colour) pair, classified by its nearest training render.

    python scripts/sample_builtin_prior.py DATA.npz [--steps 100] [--guidance 4] [--seed 0]
        [--grid samples/builtin_samples.png] [--json samples/benchmarks/builtin_training.json]

A sample counts as right when the closest training image (L2 over pixels, among the coloured
renders) has the sample's kind and colour. The grid has one row per kind, one column per colour.
The JSON joins the training record written beside the weights with these numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magic3d.guidance.builtin import WEIGHTS_DIR, BuiltinPrior
from magic3d.guidance.builtin_world import COLOURS, KINDS
from magic3d.storage import atomic_path, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ("front", "side", "back")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def nearest_labels(
    samples: torch.Tensor, data: dict[str, np.ndarray], pool: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(kind, colour) index of the nearest coloured training render of each sample "B 3 H W" in [0, 1].

    ``pool`` > 1 compares ``pool``x``pool`` block means instead of pixels: a distance that looks
    at layout and colour and ignores pixel noise, which undertrained samples are full of.
    """
    keep = data["colours"] >= 0  # textureless renders carry no colour label
    refs = torch.from_numpy(data["images"][keep]).float() / 255.0
    shrink = (lambda x: torch.nn.functional.avg_pool2d(x, pool)) if pool > 1 else (lambda x: x)
    dist = torch.cdist(shrink(samples.float()).flatten(1), shrink(refs).flatten(1))
    nn = dist.argmin(dim=1).numpy()
    return data["kinds"][keep][nn], data["colours"][keep][nn]


def grid_image(samples: torch.Tensor, rows: int, cols: int, zoom: int = 2) -> Image.Image:
    img = (samples.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    h, w = img.shape[1:3]
    grid = img.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    return Image.fromarray(grid).resize((cols * w * zoom, rows * h * zoom), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="the training set written by make_builtin_dataset.py")
    parser.add_argument("--weights", default=str(WEIGHTS_DIR))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=65)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", default=str(ROOT / "samples/builtin_samples.png"))
    parser.add_argument("--json", default=str(ROOT / "samples/benchmarks/builtin_training.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    prior = BuiltinPrior(Path(args.weights), "cpu")
    pairs = [(k, c) for k in range(len(KINDS)) for c in range(len(COLOURS))]
    colour_names = list(COLOURS)
    prompts = [f"{article(colour_names[c])} {colour_names[c]} {KINDS[k]}, {VIEWS[i % len(VIEWS)]} view"
               for i, (k, c) in enumerate(pairs)]
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    samples = torch.cat([prior.sample(prompts[i:i + args.batch], args.steps, args.guidance, gen)
                         for i in range(0, len(prompts), args.batch)])
    sample_seconds = time.perf_counter() - start

    data = dict(np.load(args.data))
    nn_kind, nn_colour = nearest_labels(samples, data)
    want_kind = np.array([k for k, _ in pairs])
    want_colour = np.array([c for _, c in pairs])
    kind_ok, colour_ok = nn_kind == want_kind, nn_colour == want_colour
    both = kind_ok & colour_ok
    pooled_kind, pooled_colour = nearest_labels(samples, data, pool=4)
    pooled_kind_ok, pooled_colour_ok = pooled_kind == want_kind, pooled_colour == want_colour
    misses = [{"prompt": prompts[i], "nearest": f"{colour_names[nn_colour[i]]} {KINDS[nn_kind[i]]}"}
              for i in np.flatnonzero(~both)]

    grid_path = Path(args.grid)
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(grid_path) as tmp:
        grid_image(samples, len(KINDS), len(COLOURS)).save(tmp, format="PNG")

    training_log = Path(args.weights) / "training.json"
    record = json.loads(training_log.read_text(encoding="utf-8")) if training_log.is_file() else {}
    losses = record.pop("losses", [])
    record["loss_curve_every_100"] = [pair for pair in losses if pair[0] % 100 == 0]
    phases = [*record.get("previous_phases", []), record]
    for phase in record.get("previous_phases", []):
        phase.pop("losses", None)
    record["total_steps"] = sum(phase.get("steps", 0) for phase in phases)
    record["total_training_seconds"] = round(sum(phase.get("seconds", 0.0) for phase in phases), 1)
    record["sampling"] = {
        "pairs": len(pairs), "steps": args.steps, "sampler": "DDPM ancestral", "guidance_scale": args.guidance,
        "seed": args.seed, "seconds": round(sample_seconds, 1), "machine": platform.platform(),
        "threads": args.threads,
        "nn_accuracy": round(float(both.mean()), 4),
        "nn_kind_accuracy": round(float(kind_ok.mean()), 4),
        "nn_colour_accuracy": round(float(colour_ok.mean()), 4),
        "distance": "L2 over 32x32 RGB against the coloured training renders",
        "nn_accuracy_pooled4": round(float((pooled_kind_ok & pooled_colour_ok).mean()), 4),
        "nn_kind_accuracy_pooled4": round(float(pooled_kind_ok.mean()), 4),
        "nn_colour_accuracy_pooled4": round(float(pooled_colour_ok.mean()), 4),
        "distance_pooled4": "L2 over 8x8 block means (4x4 pixel blocks) against the same renders",
        "misses": misses,
        "grid": str(grid_path.relative_to(ROOT)) if grid_path.is_relative_to(ROOT) else str(grid_path),
    }
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(record, indent=1) + "\n")
    print(f"NN accuracy {both.mean():.3f} (kind {kind_ok.mean():.3f}, colour {colour_ok.mean():.3f}); "
          f"pooled {(pooled_kind_ok & pooled_colour_ok).mean():.3f} (kind {pooled_kind_ok.mean():.3f}, "
          f"colour {pooled_colour_ok.mean():.3f}); "
          f"{len(pairs)} samples in {sample_seconds:.0f} s -> {grid_path}, {json_path}")


if __name__ == "__main__":
    main()
