"""Batch throughput and per-job overhead: warm workers (the prior loaded once per worker) against a
fresh process per job, with 1 and 2 local workers on the built-in prior, measured in one run.

    PYTHONPATH=. python scripts/bench_batch.py [--prompts 6] [--workers 1,2] [--modes fresh,warm]
        [--set coarse.steps=10 --set fine.steps=5] [--out samples/benchmarks/batch_workers.json]

Each (worker count, mode) runs the same prompts into a fresh folder with ``magic3d.batch.run_batch``
(local backend); ``fresh`` is ``jobs_per_worker=1``, a process per job as before warm workers, so
both sides run the same code but for reuse. The modes alternate within each worker count, so load
on a shared machine falls on both. The CPU is split evenly between workers
(``runtime.threads = cores // workers``).

A job's overhead is everything but its optimisation: the job's time from its claim to its result
(process start, imports, planning, prior load, prompt embeddings, bake, export, messaging) less
its coarse and fine stage times (run.json ``timings``; the fine stage's set-up counts as fine).
``--job module:function`` swaps the pipeline for another job function (to check this script fast).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_STEPS = ["coarse.steps=10", "fine.steps=5"]
OPTIMISATION = ("coarse", "fine")  # the stages whose time is optimisation steps
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


def job_rows(reporter_events: list[dict], out: Path) -> list[dict]:
    """Per finished job: its time from claim to result, its stage timings and its overhead."""
    rows = []
    for e in reporter_events:
        if e["event"] != "job_done":
            continue
        try:
            timings = json.loads((out / e["job"] / "run.json").read_text(encoding="utf-8")).get("timings") or {}
        except (OSError, ValueError):
            timings = {}
        optimisation = sum(float(timings.get(k, 0.0)) for k in OPTIMISATION)
        rows.append({
            "job": e["job"], "seconds": round(e["seconds"], 2),
            "timings": {k: round(float(v), 2) for k, v in timings.items()},
            "overhead_seconds": round(e["seconds"] - optimisation, 2),
            "outside_pipeline_seconds": round(e["seconds"] - sum(float(v) for v in timings.values()), 2),
        })
    return rows


def one_batch(prompts: list[str], workers: int, mode: str, args: argparse.Namespace) -> dict:
    from magic3d.batch import BatchOptions, run_batch
    from magic3d.batch.report import Reporter

    cores = os.cpu_count() or 1
    overrides = list(args.overrides or DEFAULT_STEPS)
    if not any(o.startswith("runtime.threads=") for o in overrides):
        overrides.append(f"runtime.threads={max(1, cores // workers)}")
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        listing = Path(tmp) / "prompts.txt"
        listing.write_text("\n".join(prompts) + "\n", encoding="utf-8")
        out = Path(tmp) / "out"
        options = BatchOptions(
            out=out, preset=args.preset, prior=args.prior, overrides=tuple(overrides), device="cpu",
            workers=workers, retries=0, timeout=args.timeout, job_fn=args.job,
            jobs_per_worker=1 if mode == "fresh" else None,
        )
        reporter = Reporter(quiet=True)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        summary = run_batch(listing, options, reporter)
        wall = time.perf_counter() - start
        jobs = job_rows(reporter.events, out)
    overheads = [j["overhead_seconds"] for j in jobs]
    return {
        "mode": mode,
        "workers": workers,
        "overrides": overrides,
        "done": len(summary.done),
        "failed": summary.failed,
        "wall_seconds": round(wall, 2),
        "assets_per_minute": round(len(summary.done) / (wall / 60.0), 3) if summary.done else 0.0,
        "median_job_seconds": round(statistics.median(j["seconds"] for j in jobs), 2) if jobs else None,
        "median_overhead_seconds": round(statistics.median(overheads), 2) if overheads else None,
        "max_overhead_seconds": max(overheads) if overheads else None,
        "load_average_before": round(load, 2),
        "jobs": jobs,
    }


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "magic3d", "scripts/bench_batch.py"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=6, help="how many prompts per batch")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--modes", default="fresh,warm", help="fresh (a process per job) and/or warm")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--prior", default="builtin")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help=f"config override (default: {' '.join(DEFAULT_STEPS)})")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--job", default=None, help="module:function to run instead of the pipeline")
    parser.add_argument("--out", default=str(ROOT / "samples" / "benchmarks" / "batch_workers.json"))
    args = parser.parse_args()

    prompts = default_prompts(args.prompts)
    counts = [int(w) for w in args.workers.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    runs: list[dict] = []
    for w in counts:
        for mode in modes:
            runs.append(one_batch(prompts, w, mode, args))
            print(json.dumps(runs[-1]), flush=True)
            write_result(runs, prompts, counts, args)  # after each batch: a run cut short keeps what it measured


def write_result(runs: list[dict], prompts: list[str], counts: list[int], args: argparse.Namespace) -> None:
    table = {f"{r['mode']} x{r['workers']}": {"assets_per_minute": r["assets_per_minute"],
                                             "median_overhead_seconds": r["median_overhead_seconds"]} for r in runs}
    speedup = {}
    for w in counts:
        by_mode = {r["mode"]: r for r in runs if r["workers"] == w}
        if {"fresh", "warm"} <= by_mode.keys() and by_mode["fresh"]["assets_per_minute"]:
            speedup[str(w)] = round(by_mode["warm"]["assets_per_minute"] / by_mode["fresh"]["assets_per_minute"], 3)
    extra = " ".join(f"--set {o}" for o in args.overrides)
    result = {
        "command": f"PYTHONPATH=. python scripts/bench_batch.py --prompts {args.prompts} --workers {args.workers} "
        f"--modes {args.modes} --prior {args.prior}" + (f" --preset {args.preset}" if args.preset else "")
        + (f" {extra}" if extra else "") + (f" --job {args.job}" if args.job else ""),
        "commit": commit(),
        "job": args.job or "magic3d.pipeline.generate",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "gpu": "none (CPU only)", "load_average_1min_at_end": round(os.getloadavg()[0], 2)},
        "prompts": prompts,
        "summary": table,
        "warm_over_fresh_throughput": speedup,
        "runs": runs,
        "note": "fresh = a new process per job (jobs_per_worker=1, the behaviour before warm workers); warm = "
                "each worker loads the prior once and runs job after job. Overhead = a job's seconds from claim "
                "to result less its coarse and fine stage times (run.json timings; the fine stage's set-up counts "
                "as fine). Assets per minute = finished assets / batch wall time (validation and world/gallery "
                "writes included); CPU threads split evenly between workers.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
