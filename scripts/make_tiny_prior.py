"""Write a tiny random diffusers pipeline for tests and dry runs: ``python scripts/make_tiny_prior.py DIR [--if]``.

The folder loads through the real path (``magic3d generate "a red chair" --prior DIR``); its
weights are random, so it exercises plumbing and speed, never image quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magic3d.guidance.tiny import TinySizes, build_tiny_if, build_tiny_sd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="output folder (created; must be empty or absent)")
    parser.add_argument("--if", dest="pixel", action="store_true", help="IF-stage-I-shaped pixel prior instead of SD")
    parser.add_argument("--size", type=int, default=None, help="image size (SD default 64, IF default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--v-prediction", action="store_true", help="SD 2.x 768-style v-prediction UNet")
    args = parser.parse_args(argv)
    if args.folder.exists() and any(args.folder.iterdir()):
        print(f"error: {args.folder} is not empty; give a new folder.", file=sys.stderr)
        return 2
    sizes = TinySizes(
        image_size=args.size or (16 if args.pixel else 64), seed=args.seed,
        prediction_type="v_prediction" if args.v_prediction else "epsilon",
    )
    folder = (build_tiny_if if args.pixel else build_tiny_sd)(args.folder, sizes)
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
