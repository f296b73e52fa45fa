"""What follows the coarse field, phase by phase, at two commits side by side in one run: issue 22's
fine set-up, bake and preview on the builtin preset, issue 24's ``generate --from`` prompt to USD
with the forward pass apart.

    python scripts/bench_phases.py [--old d37bb82] [--new HEAD] [--runs 3]
                                   [--out samples/benchmarks/post_forward.json]

Both sides are ``git worktree``s (``bench_e2e.compared_sides``) run from this virtualenv through
PYTHONPATH, alternately, each run a fresh process. First, with the current checkout, a small
amortized model and a builtin coarse checkpoint are made; both sides then start from them.

Both probes run inside one side's code (PYTHONPATH) as fresh processes and time that side's own
functions from outside, so an old commit needs no timing code of its own: module attributes are
wrapped (``extract_mesh``, ``bake``, ``write_outputs``, ``render_turntable``, ``write_gif_file``,
the amortized field's evaluations) and phases are kept exclusive by ``magic3d/timing.py``, loaded
by path from the current checkout. Seconds are CPU (``time.process_time``) and wall per phase;
the parent adds the whole process's CPU (``ru_utime + ru_stime`` from ``os.wait4``) and wall.
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

from exporters.common import atomic_output

ROOT = Path(__file__).resolve().parents[1]

# Shared by both probes: argv[1] is the current checkout's magic3d/timing.py, argv[2] the JSON to write.
WRAP = r"""
import importlib.util, json, sys, torch
report_path = sys.argv[2]
spec = importlib.util.spec_from_file_location("bench_timing", sys.argv[1])
timing = importlib.util.module_from_spec(spec); spec.loader.exec_module(timing)
times = timing.PhaseTimes()
torch.set_num_threads(1)

def timed(owner, attr, phase):
    inner = getattr(owner, attr)
    def wrapper(*a, **k):
        with times.phase(phase):
            return inner(*a, **k)
    setattr(owner, attr, wrapper)

import magic3d.bake, magic3d.export, magic3d.stages.fine, renderers.turntable
timed(magic3d.stages.fine, "extract_mesh", "mesh")
timed(magic3d.bake, "bake", "bake")
timed(magic3d.export, "write_outputs", "export")
timed(renderers.turntable, "render_turntable", "preview")
timed(magic3d.export, "write_gif_file", "preview")

def report(**extra):
    with open(report_path, "w") as out:
        json.dump({"cpu": times.cpu, "wall": times.wall, **extra}, out)
"""

# generate --from as the CLI runs it; argv[3:] is the command line after ``magic3d``.
AMORTIZED_PROBE = WRAP + r"""
import runpy
import magic3d.amortize.field as field
for attr in ("density", "albedo", "density_and_albedo"):
    timed(field.BoundField, attr, "forward")
timed(field.ConditionedField, "at", "forward")
sys.argv = ["magic3d", *sys.argv[3:]]
try:
    runpy.run_module("magic3d", run_name="__main__")
except SystemExit as exc:
    if exc.code:
        raise
report()
"""

# The builtin preset after its coarse stage: argv[3] a coarse checkpoint, argv[4] the output folder,
# argv[5] the prompt, argv[6:] config overrides. Fine set-up, no SDS steps, then the final mesh, bake, files.
BUILTIN_PROBE = WRAP + r"""
from pathlib import Path
from safetensors.torch import load_file
from magic3d.config import load_config
from magic3d.stages.coarse import CoarseModel
from magic3d.stages.fine import FineModel
cfg = load_config("builtin", list(sys.argv[6:]))
device = torch.device("cpu")
coarse = CoarseModel(cfg.coarse, None, device)
coarse.load_state_tensors(load_file(sys.argv[3]))
torch.manual_seed(cfg.runtime.seed)
fine = FineModel(cfg.fine, None, device)
with times.phase("fine_setup"):
    metrics = fine.initialise(coarse.field, torch.Generator().manual_seed(cfg.runtime.seed))
with times.phase("mesh"):
    result = fine.result(metrics)
mesh = magic3d.bake.bake(result.vertices, result.faces, result.color_fn, cfg.bake)
run_dir = Path(sys.argv[4]); run_dir.mkdir(parents=True, exist_ok=True)
magic3d.export.write_outputs(mesh, run_dir, sys.argv[5], cfg)
report(texture_init_mse=metrics.get("texture_init_mse"), faces=int(result.faces.shape[0]),
       surface=mesh.metadata.get("surface", {}))
"""


def run_probe(code: Path, script: str, *args: str) -> dict:
    """One fresh process of ``script`` in ``code``: its phases, and its whole CPU and wall seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "phases.json"
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", script, str(ROOT / "magic3d" / "timing.py"), str(result), *args],
                                cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err = proc.stderr.read().decode() if proc.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"probe failed in {code}: {err.strip().splitlines()[-1] if err.strip() else status}")
        phases = json.loads(result.read_text())
    return {**phases, "process_cpu": usage.ru_utime + usage.ru_stime, "process_wall": wall,
            "peak_rss_mb": usage.ru_maxrss / 1024}


def amortized_run(code: Path, model: Path, prompt: str, out: Path) -> dict:
    return run_probe(code, AMORTIZED_PROBE, "generate", prompt, "--from", str(model), "--out", str(out), "--quiet",
                     "--restart")


def builtin_run(code: Path, checkpoint: Path, prompt: str, out: Path, overrides: list[str]) -> dict:
    return run_probe(code, BUILTIN_PROBE, str(checkpoint), str(out), prompt, *overrides)


def prepare(work: Path, prompts: list[str], train_steps: int, coarse_steps: int, prompt: str) -> tuple[Path, Path, list[str]]:
    """With the current checkout: a small amortized model over ``prompts`` and a builtin coarse checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
    model = work / "model"
    subprocess.run([sys.executable, "-m", "magic3d", "amortize", str(work / "prompts.txt"), "--out", str(model),
                    "--prior", "builtin", "--set", f"amortize.steps={train_steps}", "--set",
                    f"amortize.checkpoint_every={train_steps}", "--quiet"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    overrides = [f"coarse.steps={coarse_steps}", "fine.steps=0"]
    subprocess.run([sys.executable, "-m", "magic3d", "generate", prompt, "--prior", "builtin", "--device", "cpu",
                    "--out", str(work / "coarse"), "--quiet", "--set", "export.preview=false", "--set",
                    "export.formats=[usda]", *[x for o in overrides for x in ("--set", o)]],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    checkpoint = next((work / "coarse").glob(f"*/checkpoints/coarse-{coarse_steps:06d}.safetensors"))
    return model, checkpoint, overrides


def median_phases(rows: list[dict]) -> dict:
    """Per phase the median CPU and wall seconds over ``rows``, and of the whole process."""
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    names = sorted({k for r in rows for k in r["cpu"]})
    return {"phases_cpu": {n: med([r["cpu"].get(n, 0.0) for r in rows]) for n in names},
            "phases_wall": {n: med([r["wall"].get(n, 0.0) for r in rows]) for n in names},
            "process_cpu": med([r["process_cpu"] for r in rows]), "process_wall": med([r["process_wall"] for r in rows]),
            "peak_rss_mb": med([r["peak_rss_mb"] for r in rows])}


def main() -> None:
    from bench_e2e import compared_sides  # scripts/ is on the path when this runs as a script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="d37bb82", help="the commit before these changes")
    parser.add_argument("--new", default="HEAD", help="the commit to measure against it (a worktree of it)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompt", default="a red cube", help="generate --from's prompt (one of the model's)")
    parser.add_argument("--builtin-prompt", default="a blue torus")
    parser.add_argument("--train-steps", type=int, default=100, help="amortized training steps of the model made first")
    parser.add_argument("--coarse-steps", type=int, default=150, help="builtin coarse steps of the checkpoint made first")
    parser.add_argument("--out", default=str(ROOT / "samples" / "benchmarks" / "post_forward.json"))
    args = parser.parse_args()
    prompts = [args.prompt, "a blue sphere", "a green torus", "a yellow cone"]
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, compared_sides(args.old, Path(tmp), args.new) as sides:
        work = Path(tmp)
        model, checkpoint, overrides = prepare(work, prompts, args.train_steps, args.coarse_steps, args.builtin_prompt)
        prepared = time.perf_counter() - clock
        rows: dict[str, dict[str, list[dict]]] = {name: {"amortized": [], "builtin": []} for name in sides}
        for rep in range(args.runs):  # alternating, so machine load falls on both sides alike
            for name, (code, _) in sides.items():
                out = work / f"from-{name}-{rep}"
                row = amortized_run(code, model, args.prompt, out)
                record = json.loads(next(out.glob("*/run.json")).read_text())
                row["surface"], row["faces"] = record["metrics"]["surface"], record["metrics"]["faces"]
                row["run_json_timings"] = record["timings"]
                rows[name]["amortized"].append(row)
                rows[name]["builtin"].append(builtin_run(code, checkpoint, args.builtin_prompt,
                                                         work / f"builtin-{name}-{rep}", overrides))
                print(name, rep, json.dumps({k: round(rows[name][k][-1]["process_cpu"], 2) for k in rows[name]}),
                      flush=True)
        result_sides = {
            name: {"commit": commit,
                   "generate_from": {**median_phases(rows[name]["amortized"]), "runs": rows[name]["amortized"]},
                   "builtin_after_coarse": {**median_phases(rows[name]["builtin"]), "runs": rows[name]["builtin"]}}
            for name, (_, commit) in sides.items()}
    result = {
        "command": f"python scripts/bench_phases.py --old {args.old} --new {args.new} --runs {args.runs}",
        "what": {
            "generate_from": f"magic3d generate {args.prompt!r} --from MODEL (defaults: usdc, usdz, glb, 24-frame "
                             f"preview), a fresh process; MODEL: the amortize preset trained {args.train_steps} steps "
                             f"on {len(prompts)} prompts by the current side before the runs",
            "builtin_after_coarse": f"the builtin preset's fine set-up (density to SDF, texture regression), final "
                                    f"mesh, bake, files and preview from a {args.coarse_steps}-step coarse checkpoint "
                                    f"of {args.builtin_prompt!r}; the fine stage's SDS steps are left out",
            "phases": "exclusive seconds (magic3d/timing.py): forward = the amortized field's mapping and evaluations; "
                      "export = files without the preview; process = the whole process incl. imports (ru_utime + "
                      "ru_stime, and wall)",
            "median_of": args.runs},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "gpu": "none lent",
                    "note": "2 cores shared with other jobs: compare CPU seconds; the sides ran alternately"},
        "prepare_seconds": round(prepared, 1),
        "sides": result_sides,
        "targets": {"generate_from_seconds": 10.0, "preview_seconds": 3.0},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(Path(args.out)) as tmp_out:
        tmp_out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, side in result_sides.items():
        print(name, side["commit"], json.dumps({k: {"cpu": v["phases_cpu"], "process_cpu": v["process_cpu"]}
                                                for k, v in side.items() if k != "commit"}))


if __name__ == "__main__":
    main()
