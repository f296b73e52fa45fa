"""Prompt to USD on the built-in prior, this checkout against an older commit, side by side in one run.

    python scripts/bench_e2e.py [--prompt "a blue torus"] [--runs 3] [--old 1c1257f]
                                [--out samples/benchmarks/e2e.json]

For each side (the current checkout, and ``--old`` checked out with ``git worktree add`` into a
temporary folder and run from the same virtualenv through PYTHONPATH), runs alternate so that
machine load falls on both alike. Each run is a fresh `magic3d generate` subprocess into a fresh
folder; peak RSS is the child's ``ru_maxrss`` (Linux: KiB), measured by waiting on it with
``os.wait4``; stage times come from its run.json. Per side it also times, in a subprocess, coarse
steps of that side's ``builtin`` preset with the real prior, and the share of each step the prior's
SDS call takes, twice: at the prior precision the preset picks on this machine and at fp32 (a
faster prior leaves the rest of the step a larger share), and a 24-frame 256 px turntable of the
torus asset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from exporters.common import atomic_output

ROOT = Path(__file__).resolve().parents[1]

# Run inside each side's code (PYTHONPATH): seconds per coarse step of the builtin preset and of the
# prior's SDS call within it (median over the steps from argv[3] on: past the albedo-only warm-up,
# so lit steps with their normals count), at the prior precision argv[4], as one JSON line.
STEP_PROBE = r"""
import json, statistics, sys, time, torch
from magic3d.config import load_config
from magic3d.guidance import load_prior
from magic3d.prompts import ViewPrompts
from magic3d.stages.coarse import CoarseModel
from magic3d.stages.losses import SDSLoss
torch.set_num_threads(1)
cfg = load_config("builtin")
if sys.argv[4] != "preset":  # the prior's precision (older code's built-in prior was always fp32)
    cfg.prior.dtype = sys.argv[4]
device = torch.device("cpu")
prior_model = load_prior("builtin", cfg.prior, device)
sds = SDSLoss(prior_model, ViewPrompts.build(sys.argv[1], prior_model, cfg.prior), cfg.coarse.sds)
prior_s = []
def loss(*a, **k):
    start = time.perf_counter(); out = sds(*a, **k); prior_s.append(time.perf_counter() - start); return out
torch.manual_seed(0)
model = CoarseModel(cfg.coarse, loss, device)
gen = torch.Generator().manual_seed(0)
opt = torch.optim.Adam(model.param_groups(), betas=(0.9, 0.99), eps=1e-15)
step_s = []
for step in range(int(sys.argv[2])):
    start = time.perf_counter()
    value, _ = model.step(step, step / cfg.coarse.steps, gen)
    opt.zero_grad(set_to_none=True); value.backward(); opt.step(); model.after_step(step, gen)
    step_s.append(time.perf_counter() - start)
skip = int(sys.argv[3])
step, prior = statistics.median(step_s[skip:]), statistics.median(prior_s[skip:])
print(json.dumps({"step_seconds": round(step, 4), "prior_seconds": round(prior, 4),
                  "step_over_prior": round(step / prior, 2), "encoding": getattr(cfg.coarse.field, "encoding", "hashgrid"),
                  "prior_dtype": str(getattr(prior_model, "dtype", "float32")).replace("torch.", ""),
                  "steps": f"{skip}..{len(step_s) - 1}"}))
"""

PREVIEW_PROBE = r"""
import json, sys, time, torch
from exporters.read import load_parts
from renderers.turntable import render_turntable
torch.set_num_threads(1)
parts = load_parts(sys.argv[1])
render_turntable(parts, frames=2, resolution=64)  # warm-up
start = time.perf_counter()
render_turntable(parts, frames=24, resolution=256)
print(json.dumps({"seconds": round(time.perf_counter() - start, 2)}))
"""


def env_for(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}


def one_run(code: Path, prompt: str, extra: list[str], keep: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "magic3d", "generate", prompt, "--prior", "builtin", "--device", "cpu",
               "--quiet", "--out", tmp, *extra]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=code, env=env_for(code), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"run failed in {code}: {err.strip().splitlines()[-1] if err.strip() else status}")
        run_json = next(Path(tmp).glob("*/run.json"))
        record = json.loads(run_json.read_text())
        asset = next(run_json.parent.glob("asset.usdc"), None)
        if asset is not None and not keep.exists():
            keep.mkdir(parents=True)
            for path in run_json.parent.rglob("*"):  # the asset and its payload layers and textures
                if path.is_file() and "checkpoints" not in path.parts:
                    target = keep / path.relative_to(run_json.parent)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(path.read_bytes())
        return {"seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                "timings": {k: round(v, 1) for k, v in record.get("timings", {}).items()}}


def probe(code: Path, script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=code, env=env_for(code),
                         capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(runs: list[dict]) -> dict:
    stages = sorted({k for r in runs for k in r["timings"]})
    return {"median_seconds": statistics.median(r["seconds"] for r in runs),
            "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "median_stage_seconds": {s: statistics.median(r["timings"].get(s, 0.0) for r in runs) for s in stages}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="a blue torus")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--old", default="1c1257f", help="the commit to compare against ('' for none)")
    parser.add_argument("--probe-steps", type=int, default=150, help="coarse steps the step probe runs")
    parser.add_argument("--probe-from", type=int, default=60, help="the first of them timed (after albedo warm-up)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "samples" / "benchmarks" / "e2e.json"))
    args = parser.parse_args()
    extra = [x for item in args.overrides for x in ("--set", item)]
    with tempfile.TemporaryDirectory() as work, compared_sides(args.old, Path(work)) as sides:
        work_dir = Path(work)
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for _ in range(args.runs):
            for name, (code, _) in sides.items():
                runs[name].append(one_run(code, args.prompt, extra, work_dir / f"asset-{name}"))
                print(name, json.dumps(runs[name][-1]), flush=True)
        result_sides = {}
        for name, (code, commit) in sides.items():
            asset = work_dir / f"asset-{name}" / "asset.usdc"
            result_sides[name] = {
                "commit": commit, "runs": runs[name], **summary(runs[name]),
                "coarse_step": probe(code, STEP_PROBE, args.prompt, str(args.probe_steps), str(args.probe_from), "preset"),
                "coarse_step_fp32_prior": probe(code, STEP_PROBE, args.prompt, str(args.probe_steps),
                                                str(args.probe_from), "float32"),
                "preview_24_frames_256px": probe(code, PREVIEW_PROBE, str(asset)),
            }
            print(name, json.dumps({k: v for k, v in result_sides[name].items() if k != "runs"}), flush=True)
    result = {
        "command": f"python scripts/bench_e2e.py --runs {args.runs} --old {args.old!r} " + " ".join(extra),
        "generate": f"magic3d generate {args.prompt!r} --prior builtin --device cpu " + " ".join(extra),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "gpu": "none lent in this session",
                    "note": "a shared machine: compare the sides, measured alternately in this one run"},
        "sides": result_sides,
        "targets": {"seconds": 60, "peak_rss_mb": 1536, "step_over_prior": 1.5, "preview_seconds": 3},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(Path(args.out)) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({n: s["median_seconds"] for n, s in result_sides.items()}))


@contextlib.contextmanager
def compared_sides(old: str, work: Path, new: str = "") -> Iterator[dict[str, tuple[Path, str]]]:
    """{"current": (code, commit), "old": (a worktree of ``old`` under ``work``, its hash)}; "current"
    is this checkout, or a worktree of ``new`` when given (a commit alone, without uncommitted work
    in the checkout). The worktrees are removed afterwards; no "old" side when ``old`` is empty."""
    def worktree(name: str, rev: str) -> tuple[Path, str]:
        commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["git", "worktree", "add", "--detach", str(work / name), commit], cwd=ROOT, check=True,
                       capture_output=True)
        made.append(work / name)
        return work / name, commit

    made: list[Path] = []
    try:
        if new:
            sides = {"current": worktree("new", new)}
        else:
            head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()
            sides = {"current": (ROOT, head + ("+changes" if _dirty() else ""))}
        if old:
            sides["old"] = worktree("old", old)
        yield sides
    finally:
        for path in made:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True)


def _dirty() -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
    return bool(out.stdout.strip())


if __name__ == "__main__":
    main()
