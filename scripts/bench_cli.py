"""How long the ``magic3d`` command takes to refuse bad input, now and at a base commit (target: 1 s).

    python scripts/bench_cli.py [--repeats 3] [--commit HEAD] [--base 1c1257f]
                                [--out samples/benchmarks/cli_refusals.json]

Each case is the real console script (``.venv/bin/magic3d``, interpreter start included) run in a
fresh process on one kind of bad input, once for ``--commit`` and once for ``--base``, each a
detached ``git worktree`` under the temp folder put on ``PYTHONPATH`` (others' uncommitted edits
in this checkout are left out), alternating so that machine load falls on both sides alike;
median of ``--repeats`` each. Every run must exit with code 2 and one ``error:`` line.
``--device cuda`` is timed only on a machine without a GPU, where it is a refusal (reported apart:
before the device-node check, only torch could say there is none).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0

GEN = ["generate", "a red cube", "--out", "out"]
CASES: dict[str, list[str]] = {
    "prompt outside the built-in vocabulary": ["generate", "a purple dragon", "--out", "out"],
    "unknown config key": [*GEN, "--set", "coarse.stepz=3"],
    "NaN value": [*GEN, "--set", "coarse.lr=nan"],
    "value of the wrong type": [*GEN, "--set", "coarse.steps=abc"],
    "unknown preset": [*GEN, "--preset", "nope"],
    "--out is a file": ["generate", "a red cube", "--out", "afile"],
    "--device of no known form": [*GEN, "--device", "tpu"],
    "export: no run folder": ["export", "no-such-run"],
    "convert: file missing": ["convert", "missing.glb"],
    "batch: file missing": ["batch", "missing.txt", "--out", "out"],
    "batch: a line outside the vocabulary": ["batch", "bad.txt", "--out", "out"],
}
NO_GPU_CASES = {"--device cuda without a GPU": [*GEN, "--device", "cuda"]}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def tree_at(commit: str, tree: Path) -> Path:
    """A detached worktree of ``commit`` at ``tree`` (made, or moved there)."""
    if (tree / "magic3d" / "cli.py").is_file():
        git("checkout", "--quiet", "--detach", commit, cwd=tree)
    else:
        git("worktree", "add", "--detach", str(tree), commit)
    return tree


def inputs(folder: Path) -> None:
    (folder / "afile").write_text("in the way\n")
    (folder / "bad.yaml").write_text("coarse: [\n")
    (folder / "bad.txt").write_text("a red cube\na purple dragon\n")
    (folder / "ok.txt").write_text("a red cube\n")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def refuse_once(code_root: Path, argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one refusal."""
    env = dict(os.environ, PYTHONPATH=str(code_root), HF_HUB_OFFLINE="1")
    cpu, clock = children_cpu_s(), time.perf_counter()
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "magic3d"), *argv], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    seconds, cpu = time.perf_counter() - clock, children_cpu_s() - cpu
    lines = r.stderr.strip().splitlines()
    if r.returncode != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
        raise SystemExit(f"{code_root}: {argv} was not one refusal (exit {r.returncode}): {r.stderr[-400:]!r}")
    if (cwd / "out").exists():
        raise SystemExit(f"{code_root}: {argv} wrote {cwd / 'out'}")
    return seconds, cpu


def measure(cases: dict[str, list[str]], sides: dict[str, Path], repeats: int, cwd: Path) -> dict:
    results = {}
    for name, argv in cases.items():
        wall: dict[str, list[float]] = {side: [] for side in sides}
        cpu: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(repeats):
            for side, code_root in sides.items():  # alternating: load spikes hit both sides
                seconds, cpu_seconds = refuse_once(code_root, argv, cwd)
                wall[side].append(round(seconds, 3))
                cpu[side].append(round(cpu_seconds, 3))
        results[name] = {"argv": argv, **{side: {"median_s": statistics.median(wall[side]), "samples_s": wall[side],
                                                 "median_cpu_s": statistics.median(cpu[side])} for side in sides}}
        print(f"{name:40s} " + "  ".join(f"{side} {statistics.median(wall[side]):6.2f} s "
                                         f"({statistics.median(cpu[side]):5.2f} s CPU)" for side in sides), flush=True)
    return results


def gpu_visible() -> bool:
    code = "import torch; print(torch.cuda.is_available())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return r.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--commit", default="HEAD", help="commit measured")
    parser.add_argument("--base", default="1c1257f", help="commit compared against")
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "benchmarks" / "cli_refusals.json")
    args = parser.parse_args()

    temp = Path(tempfile.gettempdir())
    sides = {"now": tree_at(git("rev-parse", args.commit), temp / "magic3d-bench-now"),
             "base": tree_at(git("rev-parse", args.base), temp / "magic3d-bench-base")}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        inputs(Path(tmp))
        results = measure(CASES, sides, args.repeats, Path(tmp))
        extra = {} if gpu_visible() else measure(NO_GPU_CASES, sides, args.repeats, Path(tmp))

    worst = max(r["now"]["median_s"] for r in results.values())
    worst_cpu = max(r["now"]["median_cpu_s"] for r in results.values())
    report = {
        "what": "seconds from starting the magic3d console script to its one-line refusal (exit 2), "
                f"median of {args.repeats}, this checkout against the base commit in the same run",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1min_at_start": round(load, 2)},
        "commit": git("rev-parse", "HEAD", cwd=sides["now"]),
        "base_commit": git("rev-parse", "HEAD", cwd=sides["base"]),
        "target_s": TARGET_S,
        "cases": results,
        "no_gpu_cases": extra,
        "worst_now_median_s": worst,
        "worst_now_median_cpu_s": worst_cpu,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "best_base_median_s": min(r["base"]["median_s"] for r in results.values()),
        "all_under_target": worst <= TARGET_S,
        "notes": "median_cpu_s is the refusing process's user + system time, which load on a shared "
                 "machine inflates far less than the wall time. no_gpu_cases are refusals only where no GPU "
                 "is visible (the CLI reads CUDA_VISIBLE_DEVICES and the NVIDIA device nodes; torch only "
                 "where a node exists); on a machine with a GPU they are not run.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("worst_now_median_s", "worst_now_median_cpu_s", "best_base_median_s",
                                             "all_under_target")}))


if __name__ == "__main__":
    main()
