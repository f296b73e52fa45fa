"""Amortized generation on the built-in prior: ``python scripts/eval_amortized.py [--phase ...]``.

Trains one text-conditioned field (``magic3d amortize``, preset ``amortize/builtin``) on the
built-in world's (kind, colour) prompts minus a held-out "diagonal" (every kind and every colour
still seen in training), then measures: kind and colour recognised from the meshes of 20 seen
and of the held-out prompts (``scripts/eval_builtin.py``'s recogniser), ``generate --from``
latency (prompt to USD, and the forward pass alone), total compute against the ``builtin``
preset per prompt (measured on a sample, multiplied by the set's size), and the interpolation
from "a red cube" to "a blue sphere". Results: samples/benchmarks/amortized.json.

Every phase is recorded in the JSON as it ends, and the training phase after every checkpoint:
the script run again resumes the training from its newest checkpoint (in --work) and skips the
phases already done. ``--phase train`` trains only (the background job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

from magic3d.guidance.builtin_world import COLOURS, KINDS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "samples" / "benchmarks" / "amortized.json"
WORK = ROOT / "outputs" / "amortized-eval"


def held_out_pairs() -> list[tuple[str, str]]:
    """Two colour diagonals over the kinds: 26 pairs; each kind keeps 8 of 10 colours, each colour 7+ kinds."""
    colours = list(COLOURS)
    return [(kind, colours[(i + shift) % len(colours)]) for shift in (0, 5) for i, kind in enumerate(KINDS)]


def prompt(kind: str, colour: str) -> str:
    return f"a {colour} {kind}"


def training_prompts() -> list[str]:
    held = set(held_out_pairs())
    return [prompt(k, c) for k in KINDS for c in COLOURS if (k, c) not in held]


def load_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"phases": {}}


def save_report(path: Path, report: dict) -> None:
    # A plain rename, not exporters' atomic_output: training calls this from inside the model folder's
    # write confinement (magic3d.storage.confined), which the report, kept elsewhere, is outside of.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def phase_train(report: dict, args: argparse.Namespace) -> None:
    """Train (or resume); each session's wall time and steps are added to the phase as it goes."""
    from magic3d.amortize.train import train

    phase = report["phases"].setdefault("train", {"status": "running", "sessions": []})
    prompts_file = args.work / "train-prompts.txt"
    prompts_file.parent.mkdir(parents=True, exist_ok=True)
    prompts_file.write_text("\n".join(training_prompts()) + "\n", encoding="utf-8")
    held = [prompt(k, c) for k, c in held_out_pairs()]
    phase.update(prompts=len(training_prompts()), held_out=held, model_dir=str(args.work / "model"),
                 overrides=args.overrides)
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit(), "seconds": 0.0,
               "first_step": None, "last_step": None}
    phase["sessions"].append(session)
    clock = time.perf_counter()

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        session["first_step"] = session["first_step"] or step
        session["last_step"], session["seconds"] = step, round(time.perf_counter() - clock, 1)
        phase["steps_planned"] = total
        if step % 50 == 0 or step == total:
            phase["seconds"] = round(sum(s["seconds"] for s in phase["sessions"]), 1)
            phase["steps"], phase["loss"] = step, round(loss, 3)
            save_report(args.out, report)

    save_report(args.out, report)
    result = train(prompts_file, args.work / "model", prior="builtin", overrides=args.overrides, device="cpu",
                   progress=progress)
    session["seconds"] = round(time.perf_counter() - clock, 1)
    phase.update(status="done", steps=result.steps, seconds=round(sum(s["seconds"] for s in phase["sessions"]), 1),
                 metrics=result.metrics)
    save_report(args.out, report)


PHASES = {"train": phase_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", action="append", choices=list(PHASES), help="run only these (default: all, in order)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="amortize/run config override")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    report = load_report(args.out)
    report["machine"] = {"platform": platform.platform(), "device": "cpu", "threads": 1, "gpu": "none lent"}
    report.setdefault("phases", {})
    for name in args.phase or list(PHASES):
        if name != "train" and report["phases"].get(name, {}).get("status") == "done":
            continue
        PHASES[name](report, args)
        report["commit"] = commit()
        save_report(args.out, report)


if __name__ == "__main__":
    main()
