"""Does the built-in pipeline follow the prompt? ``python scripts/eval_builtin.py [--set k=v ...]``.

Runs ``magic3d.generate`` on the built-in prior for 20 (kind, colour) prompts that cover every
kind and colour, then reads each asset back: the kind whose canonical shape overlaps the mesh
best (IoU after normalisation, in any pose: every 5-degree turn about the up axis after tilts of
up to 10 degrees), the colour word most of the textured surface is closest to, and the genus.
Writes a table to samples/benchmarks/builtin_eval.json and a contact sheet of the assets'
previews to samples/builtin_eval.png (``--sheet-only`` redraws it from an earlier run's table
and work folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from exporters import load_asset
from exporters.common import atomic_output
from magic3d.guidance.builtin_world import (
    COLOURS,
    GENUS,
    KINDS,
    dominant_colour,
    genus,
    recognise_kind,
)
from magic3d.naming import slugify
from magic3d.pipeline import generate

ROOT = Path(__file__).resolve().parents[1]


def default_prompts(count: int = 20) -> list[tuple[str, str]]:
    """(kind, colour) pairs: every kind once, then the rest, with colours cycling so all ten appear."""
    colours = list(COLOURS)
    pairs = [(kind, colours[(3 * i) % len(colours)]) for i, kind in enumerate(KINDS)]
    extra = [(KINDS[(5 * i + 2) % len(KINDS)], colours[(7 * i + 1) % len(colours)]) for i in range(count)]
    for pair in extra:
        if len(pairs) >= count:
            break
        if pair not in pairs:
            pairs.append(pair)
    return pairs[:count]


def evaluate(kind: str, colour: str, work: Path, overrides: list[str], seed: int, reuse: bool = False) -> dict:
    prompt = f"a {colour} {kind}"
    clock = time.perf_counter()
    # --reuse: a finished run of the same prompt and config (scripts/check_assets.py makes them) is
    # only re-listed; anything else is optimised from scratch.
    result = generate(prompt, out=work, prior="builtin", overrides=overrides, seed=seed, restart=not reuse)
    seconds = time.perf_counter() - clock
    mesh = load_asset(result.files["glb"])
    seen_kind, scores = recognise_kind(mesh)
    ranked = sorted(scores.values(), reverse=True)
    seen_colour = dominant_colour(mesh)
    row = {
        "prompt": prompt, "kind": seen_kind, "colour": seen_colour, "genus": genus(mesh),
        "expected_genus": GENUS[kind], "iou": round(scores[kind], 3), "margin": round(ranked[0] - ranked[1], 3),
        "kind_ok": seen_kind == kind, "colour_ok": seen_colour == colour, "seconds": round(seconds, 1),
        "faces": len(mesh.faces),
    }
    row["ok"] = row["kind_ok"] and row["colour_ok"]
    print(json.dumps(row), flush=True)
    return row


def summarise(rows: list[dict], planned: int, args: argparse.Namespace) -> dict:
    return {
        "machine": {"platform": platform.platform(), "device": "cpu", "threads": 1, "gpu": "none lent",
                    "workers": args.workers},
        "overrides": args.overrides, "seed": args.seed, "planned": planned, "evaluated": len(rows),
        "reused_runs": str(args.work) if args.reuse else None,
        "kind_accuracy": sum(r["kind_ok"] for r in rows) / len(rows),
        "colour_accuracy": sum(r["colour_ok"] for r in rows) / len(rows),
        "both_accuracy": sum(r["ok"] for r in rows) / len(rows),
        "genus_accuracy": sum(r["genus"] == r["expected_genus"] for r in rows) / len(rows),
        "median_seconds": sorted(r["seconds"] for r in rows)[len(rows) // 2],
        "rows": rows,
    }


def contact_sheet(rows: list[dict], work: Path, cols: int = 5, tile: int = 192) -> Image.Image:
    """First preview frame of each prompt's asset, captioned with what the recogniser saw."""
    sheet = Image.new("RGB", (cols * tile, -(-len(rows) // cols) * (tile + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        x, y = (i % cols) * tile, (i // cols) * (tile + 28)
        preview = work / slugify(row["prompt"]) / "preview.gif"
        if preview.is_file():
            with Image.open(preview) as gif:
                sheet.paste(gif.convert("RGB").resize((tile, tile)), (x, y))
        mark = "ok" if row["ok"] else f"seen: {row['colour']} {row['kind']}"
        draw.text((x + 6, y + tile + 2), row["prompt"], fill="black")
        draw.text((x + 6, y + tile + 14), mark, fill="darkgreen" if row["ok"] else "firebrick")
    return sheet


def save_sheet(rows: list[dict], work: Path, path: Path) -> None:
    with atomic_output(path) as tmp:
        contact_sheet(rows, work).save(tmp, format="PNG")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--prompt", action="append", default=[], help="'colour kind' pairs instead of the default 20")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="prompts run at once, one CPU thread each")
    parser.add_argument("--work", type=Path, default=Path("/tmp/magic3d-eval"))
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "benchmarks" / "builtin_eval.json")
    parser.add_argument("--sheet", type=Path, default=ROOT / "samples" / "builtin_eval.png")
    parser.add_argument("--sheet-only", action="store_true", help="redraw the sheet from --out and --work, run nothing")
    parser.add_argument("--reuse", action="store_true", help="evaluate finished runs in --work made with the same "
                        "settings (e.g. by scripts/check_assets.py) instead of optimising again")
    args = parser.parse_args()
    if args.sheet_only:
        try:
            rows = json.loads(args.out.read_text(encoding="utf-8"))["rows"]
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"no evaluation table to draw from at {args.out}: {exc}")
        save_sheet(rows, args.work, args.sheet)
        print(f"wrote {args.sheet}")
        return
    torch.set_num_threads(1)
    pairs = [tuple(p.split()[::-1]) for p in args.prompt] or default_prompts(args.count)
    done: dict[int, dict] = {}  # rows by prompt position, so the table keeps the prompts' order
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        jobs = {pool.submit(evaluate, kind, colour, args.work, args.overrides, args.seed, args.reuse): i
                for i, (kind, colour) in enumerate(pairs)}
        for job in as_completed(jobs):
            done[jobs[job]] = job.result()
            report = summarise([done[i] for i in sorted(done)], len(pairs), args)
            # Written after every prompt: a long evaluation that is stopped still leaves its table.
            with atomic_output(args.out) as tmp:
                tmp.write_text(json.dumps(report, indent=2) + "\n")
    save_sheet(report["rows"], args.work, args.sheet)
    print(f"kind {report['kind_accuracy']:.0%}, colour {report['colour_accuracy']:.0%}, "
          f"both {report['both_accuracy']:.0%}; wrote {args.out}")


if __name__ == "__main__":
    main()
