"""Batch throughput: assets per minute with 1 and 2 local workers on the built-in prior, and the scaling.

    PYTHONPATH=. python scripts/bench_batch.py [--prompts 4] [--workers 1,2] [--set coarse.steps=200]
                                               [--out samples/benchmarks/batch.json]

Each worker count runs the same prompt list into a fresh folder with ``magic3d.batch.run_batch``
(local backend, one process per job). The CPU is split evenly between workers
(``runtime.threads = cores // workers``) so the comparison measures the batch, not oversubscription.
``--job module:function`` swaps the pipeline for another job function (to check this script fast).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FALLBACK_PROMPTS = ["a red cube", "a blue sphere", "a green torus", "a yellow cone", "a small red cylinder",
                    "a big blue cube", "a green sphere", "a yellow torus"]


def default_prompts(n: int) -> list[str]:
    """Prompts the built-in prior knows: colours x kinds of its closed world."""
    try:
        from magic3d.guidance.builtin_world import COLOURS, KINDS

        colours = list(COLOURS)
        # step through kinds and colours together so the jobs differ in shape, not only in colour
        return [f"a {colours[i % len(colours)]} {KINDS[i % len(KINDS)]}" for i in range(n)]
    except ImportError:
        return FALLBACK_PROMPTS[:n]


def one_batch(prompts: list[str], workers: int, args: argparse.Namespace) -> dict:
    from magic3d.batch import BatchOptions, run_batch
    from magic3d.batch.report import Reporter

    cores = os.cpu_count() or 1
    overrides = list(args.overrides)
    if not any(o.startswith("runtime.threads=") for o in overrides):
        overrides.append(f"runtime.threads={max(1, cores // workers)}")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        listing = Path(tmp) / "prompts.txt"
        listing.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        options = BatchOptions(
            out=Path(tmp) / "out", preset=args.preset, prior=args.prior, overrides=tuple(overrides), device="cpu",
            workers=workers, retries=0, timeout=args.timeout, job_fn=args.job,
        )
        reporter = Reporter(quiet=True)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        summary = run_batch(listing, options, reporter)
        wall = time.perf_counter() - start
        durations = [e["seconds"] for e in reporter.events if e["event"] == "job_done"]
    return {
        "workers": workers,
        "overrides": overrides,
        "done": len(summary.done),
        "failed": summary.failed,
        "wall_seconds": round(wall, 2),
        "assets_per_minute": round(len(summary.done) / (wall / 60.0), 3) if summary.done else 0.0,
        "median_job_seconds": round(statistics.median(durations), 2) if durations else None,
        "load_average_before": round(load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4, help="how many prompts per batch")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--prior", default="builtin")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--job", default=None, help="module:function to run instead of the pipeline")
    parser.add_argument("--out", default=str(ROOT / "samples" / "benchmarks" / "batch.json"))
    args = parser.parse_args()

    prompts = default_prompts(args.prompts)
    counts = [int(w) for w in args.workers.split(",")]
    runs = []
    for w in counts:
        run = one_batch(prompts, w, args)
        print(json.dumps(run), flush=True)
        runs.append(run)
    by_workers = {r["workers"]: r["assets_per_minute"] for r in runs}
    scaling = None
    if 1 in by_workers and 2 in by_workers and by_workers[1]:
        scaling = round(by_workers[2] / by_workers[1], 3)
    extra = " ".join(f"--set {o}" for o in args.overrides)
    result = {
        "command": f"PYTHONPATH=. python scripts/bench_batch.py --prompts {args.prompts} --workers {args.workers} "
        f"--prior {args.prior}" + (f" --preset {args.preset}" if args.preset else "") + (f" {extra}" if extra else "")
        + (f" --job {args.job}" if args.job else ""),
        "job": args.job or "magic3d.pipeline.generate",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "gpu": "none (CPU only)"},
        "prompts": prompts,
        "runs": runs,
        "scaling_2_over_1": scaling,
        "note": "assets per minute = finished assets / batch wall time (validation, process start-up and "
                "world/gallery writes included); CPU threads split evenly between workers.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    print(json.dumps({"assets_per_minute": by_workers, "scaling_2_over_1": scaling}))


if __name__ == "__main__":
    main()
