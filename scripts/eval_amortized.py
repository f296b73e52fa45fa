"""Amortized generation on the built-in prior: ``python scripts/eval_amortized.py [--phase ...]``.

Trains one text-conditioned field (``magic3d amortize``, preset ``amortize/builtin``) on the
built-in world's (kind, colour) prompts minus a held-out "diagonal" (every kind and every colour
still seen in training), then measures: kind and colour recognised from the meshes of 20 seen
and of the held-out prompts (``scripts/eval_builtin.py``'s recogniser), ``generate --from``
latency (prompt to USD, and the forward pass alone), total compute against the ``builtin``
preset per prompt (measured on a sample, multiplied by the set's size), and the interpolation
from "a red cube" to "a blue sphere". With ``--refine-steps N`` and/or ``--refined-set fine.steps=N`` the
seen and held-out prompts are also measured after that per-prompt work (``generate --from
--refine-steps``, the fine stage), and the compute phase states that total too. Results: samples/benchmarks/amortized.json.

Every phase is recorded in the JSON as it ends, and the training phase after every checkpoint:
the script run again resumes the training from its newest checkpoint (in --work) and skips the
phases already done. ``--phase train`` trains only (the background job).
"""

from __future__ import annotations

import argparse
import itertools
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
# Generation as measured: the USD and the GLB the recogniser reads, no turntable GIF (most of export's
# time on this CPU), at most 5000 faces (xatlas's unwrap is superlinear in them).
GENERATE_OVERRIDES = ["export.formats=[usdc,glb]", "export.preview=false", "bake.face_budget=5000"]


# The kinds of the prompt set: all of them, or a few (--kinds) for a quicker comparison of settings.
SELECTED_KINDS = list(KINDS)


def held_out_pairs() -> list[tuple[str, str]]:
    """Two colour diagonals over the kinds (26 pairs for all 13): each kind keeps 8 of 10 colours, and with all
    kinds each colour is kept by 7 or more."""
    colours = list(COLOURS)
    return [(kind, colours[(i + shift) % len(colours)]) for shift in (0, 5) for i, kind in enumerate(SELECTED_KINDS)]


def prompt(kind: str, colour: str) -> str:
    return f"a {colour} {kind}"


def training_prompts() -> list[str]:
    held = set(held_out_pairs())
    return [prompt(k, c) for k in SELECTED_KINDS for c in COLOURS if (k, c) not in held]


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


def trained_seconds(sessions: list[dict]) -> tuple[float, float]:
    """(seconds of the sessions that made the model, seconds of sessions whose steps were lost).

    A session that starts at step 1 began the model again (its folder was lost or restarted), so
    every session before it trained steps the model no longer holds."""
    kept = lost = 0.0
    for session in sessions:
        if session.get("first_step") == 1:
            kept, lost = 0.0, lost + kept
        kept += session["seconds"]
    return round(kept, 1), round(lost, 1)


def phase_train(report: dict, args: argparse.Namespace) -> None:
    """Train (or resume); each session's wall time and steps are added to the phase as it goes."""
    from magic3d.amortize.train import TEXTURE_STAGE, train

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
        # The texture stage counts its own steps from 1 after the coarse stage: only the coarse stage's
        # first step says whether this session began the model again (trained_seconds).
        if stage == TEXTURE_STAGE:
            session["texture_last_step"] = step
            phase["texture_steps"], phase["texture_loss"] = step, round(loss, 3)
        else:
            session["first_step"] = session["first_step"] or step
            session["last_step"] = step
            phase["steps_planned"], phase["steps"], phase["loss"] = total, step, round(loss, 3)
        session["seconds"] = round(time.perf_counter() - clock, 1)
        if step % 50 == 0 or step == total:
            phase["seconds"], phase["seconds_lost"] = trained_seconds(phase["sessions"])
            save_report(args.out, report)

    save_report(args.out, report)
    result = train(prompts_file, args.work / "model", prior="builtin", overrides=args.overrides, device="cpu",
                   progress=progress)
    session["seconds"] = round(time.perf_counter() - clock, 1)
    kept, lost = trained_seconds(phase["sessions"])
    phase.update(status="done", steps=result.steps, seconds=kept, seconds_lost=lost, metrics=result.metrics)
    # The seconds include the texture stage when the config has one (amortize.texture.steps).
    save_report(args.out, report)


def seen_sample(count: int = 20) -> list[str]:
    """``count`` training prompts covering every kind and every colour: each pick adds a kind or a
    colour not yet picked while any is left, then the set fills up in a fixed stride."""
    pool = training_prompts()
    picked: list[str] = []
    for n in range(len(pool)):
        kinds, colours = {p.split()[2] for p in picked}, {p.split()[1] for p in picked}
        text = next((p for p in pool if p not in picked and p.split()[2] not in kinds and p.split()[1] not in colours),
                    None) or next((p for p in pool if p not in picked and (p.split()[2] not in kinds
                                                                        or p.split()[1] not in colours)), None)
        if text is None:
            text = pool[(7 * n) % len(pool)]
            if text in picked:
                continue
        picked.append(text)
        if len(picked) == count:
            break
    return picked


def recognise(texts: list[str], args: argparse.Namespace, label: str, refine_steps: int = 0,
              extra: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """``generate --from`` each prompt (in process, the model loaded per call as the CLI does) and read the mesh back."""
    from exporters import load_asset
    from magic3d.amortize.generate import generate_from
    from magic3d.errors import RunError
    from magic3d.guidance.builtin_world import dominant_colour, recognise_kind

    rows = []
    for text in texts:
        colour, kind = text.split()[1:3]
        clock = time.perf_counter()
        try:
            result = generate_from(text, args.work / "model", out=args.work / label,
                                   overrides=[*args.generate_overrides, *extra], refine_steps=refine_steps)
        except RunError as exc:  # no surface for this prompt: a miss on both counts, with why
            row = {"prompt": text, "kind": None, "colour": None, "kind_ok": False, "colour_ok": False,
                   "failed": str(exc), "seconds": round(time.perf_counter() - clock, 2)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            continue
        seconds = time.perf_counter() - clock
        mesh = load_asset(result.files["glb"])
        seen_kind, scores = recognise_kind(mesh)
        seen_colour = dominant_colour(mesh)
        # The recogniser normalises scale, so a field solid up to its box would read as a cube: such a mesh
        # is the box's surface, clipped, and counts as no kind at all.
        reach = float(result.metrics["fine"].get("bound_reach", 0.0))
        clipped = reach >= CLIPPED_REACH
        row = {"prompt": text, "kind": seen_kind, "colour": seen_colour, "kind_ok": seen_kind == kind and not clipped,
               "bound_reach": round(reach, 3), "clipped": clipped,
               "colour_ok": seen_colour == colour, "rgb": [round(float(v), 3) for v in mean_rgb(mesh)],
               "iou": round(scores[kind], 3), "seconds": round(seconds, 2),
               "forward_seconds": round(result.timings["forward"], 5),
               "stage_seconds": {k: round(v, 3) for k, v in result.timings.items()}, "faces": len(mesh.faces)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def accuracy(rows: list[dict]) -> dict:
    return {"prompts": len(rows), "kind_accuracy": sum(r["kind_ok"] for r in rows) / len(rows),
            "colour_accuracy": sum(r["colour_ok"] for r in rows) / len(rows),
            "median_seconds": sorted(r["seconds"] for r in rows)[len(rows) // 2], "rows": rows}


# Objects of the built-in world span a radius of about 0.7 of the field's bound of 1; DMTet keeps the
# surface a cell (1/32) inside the box, so a mesh reaching past this is the box's.
CLIPPED_REACH = 0.95
SEEN_TARGETS, HELD_OUT_TARGETS = {"kind": 0.7, "colour": 0.9}, {"kind": 0.6, "colour": 0.85}


def phase_seen(report: dict, args: argparse.Namespace) -> None:
    report["phases"]["seen"] = {"status": "done", "targets": SEEN_TARGETS,
                                **accuracy(recognise(seen_sample(), args, "seen"))}


def phase_held_out(report: dict, args: argparse.Namespace) -> None:
    report["phases"]["held_out"] = {"status": "done", "targets": HELD_OUT_TARGETS,
                                    **accuracy(recognise(held_out_sample(), args, "held-out"))}


def held_out_sample() -> list[str]:
    return [prompt(k, c) for k, c in held_out_pairs()]


def refined(name: str, sample, targets: dict):
    """The same prompts with per-prompt work after the forward pass: ``--refine-steps`` (LATTE3D's
    test-time optimisation of the coarse model) and/or ``--refined-set`` (e.g. ``fine.steps=50``:
    Magic3D's fine stage from the model's field)."""
    def phase(report: dict, args: argparse.Namespace) -> None:
        if not (args.refine_steps or args.refined_overrides):
            return
        rows = recognise(sample(), args, name.replace("_", "-"), args.refine_steps, args.refined_overrides)
        report["phases"][name] = {"status": "done", "targets": targets, "refine_steps": args.refine_steps,
                                  "overrides": args.refined_overrides, **accuracy(rows)}
    return phase


def phase_latency(report: dict, args: argparse.Namespace) -> None:
    """``magic3d generate PROMPT --from MODEL`` as a user runs it: a fresh process, prompt to USD."""
    import sys

    rows = []
    for text in seen_sample(3):
        clock = time.perf_counter()
        subprocess.run([sys.executable, "-m", "magic3d", "generate", text, "--from", str(args.work / "model"),
                        "--out", str(args.work / "latency"), "--quiet",
                        *[x for o in args.generate_overrides for x in ("--set", o)]],
                       cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        seconds = time.perf_counter() - clock
        record = json.loads((args.work / "latency" / text.replace(" ", "-") / "run.json").read_text())
        rows.append({"prompt": text, "command_seconds": round(seconds, 2),
                     "forward_seconds": round(record["timings"]["forward"], 5),
                     "stage_seconds": {k: round(v, 3) for k, v in record["timings"].items()}})
        print(json.dumps(rows[-1]), flush=True)
    report["phases"]["latency"] = {"status": "done", "target_seconds": 10.0, "rows": rows,
                                   "median_command_seconds": sorted(r["command_seconds"] for r in rows)[1]}


def phase_compute(report: dict, args: argparse.Namespace) -> None:
    """The builtin preset once per prompt, measured on a sample and multiplied by the set's size,
    against the amortized training plus one generation per prompt (the seen phase's median)."""
    from magic3d.pipeline import generate

    rows = []
    for text in seen_sample(args.compute_sample):
        clock = time.perf_counter()
        generate(text, out=args.work / "builtin", prior="builtin", preset="builtin", seed=0, device="cpu", restart=True)
        rows.append({"prompt": text, "seconds": round(time.perf_counter() - clock, 1)})
        print(json.dumps(rows[-1]), flush=True)
    count = len(training_prompts())
    per_prompt = sum(r["seconds"] for r in rows) / len(rows)
    train_seconds = report["phases"]["train"]["seconds"]
    generate_seconds = report["phases"]["seen"]["median_seconds"]
    amortized = train_seconds + generate_seconds * count
    report["phases"]["compute"] = {
        "status": "done", "prompts": count, "builtin_sample": rows, "builtin_seconds_per_prompt": round(per_prompt, 1),
        "builtin_total_seconds": round(per_prompt * count, 1), "stated_as": "builtin per prompt (sample mean) x prompts",
        "amortized_train_seconds": train_seconds, "amortized_generate_seconds_per_prompt": generate_seconds,
        "amortized_total_seconds": round(amortized, 1), "ratio": round(amortized / (per_prompt * count), 3),
        "target_ratio": round(1 / 3, 3)}
    if "seen_refined" in report["phases"]:  # one refined generation per prompt instead
        refined_seconds = report["phases"]["seen_refined"]["median_seconds"]
        total = train_seconds + refined_seconds * count
        report["phases"]["compute"].update({
            "refine_steps": report["phases"]["seen_refined"]["refine_steps"],
            "refined_overrides": report["phases"]["seen_refined"].get("overrides", []),
            "amortized_refined_generate_seconds_per_prompt": refined_seconds,
            "amortized_refined_total_seconds": round(total, 1), "refined_ratio": round(total / (per_prompt * count), 3)})


def mean_rgb(mesh) -> list[float]:
    import numpy as np

    colours = np.asarray(mesh.visual.to_color().vertex_colors, dtype=np.float64)[:, :3] / 255.0
    area = np.zeros(len(mesh.vertices))
    np.add.at(area, mesh.faces.ravel(), np.repeat(mesh.area_faces / 3.0, 3))
    return (colours * area[:, None]).sum(0) / area.sum()


def hue_distance(a, b) -> float:
    import colorsys

    ha, hb = colorsys.rgb_to_hsv(*a)[0], colorsys.rgb_to_hsv(*b)[0]
    d = abs(ha - hb)
    return min(d, 1.0 - d)


def monotonic(values: list[float], rising: bool, slack: float = 0.0) -> bool:
    return all((b >= a - slack) if rising else (b <= a + slack) for a, b in itertools.pairwise(values))


HUE_SLACK = 0.005  # of the hue circle (1.8 degrees)


def colour_monotonic(rows: list[dict], slack: float) -> bool:
    return (monotonic([r["hue_to_red"] for r in rows], True, slack)
            and monotonic([r["hue_to_blue"] for r in rows], False, slack))


def phase_interpolation(report: dict, args: argparse.Namespace) -> None:
    import shutil

    import trimesh

    from exporters import load_asset
    from magic3d.amortize.interpolate import plan_interpolation, run_interpolation
    from magic3d.guidance.builtin_world import recognise_kind

    out = args.work / "morph"
    shutil.rmtree(out, ignore_errors=True)
    files = run_interpolation(*plan_interpolation(args.work / "model", "a red cube", "a blue sphere", args.frames, out))
    rows = []
    for path in files["frames"]:
        mesh = load_asset(path)
        body = trimesh.Trimesh(mesh.vertices, mesh.faces, process=True)
        body.merge_vertices(merge_tex=True, merge_norm=True)
        rgb = mean_rgb(mesh)
        rows.append({"frame": path.parent.name, "bodies": len(body.split(only_watertight=False)),
                     "watertight": bool(body.is_watertight), "iou_cube": round(recognise_kind(mesh)[1]["cube"], 3),
                     "hue_to_red": round(hue_distance(rgb, COLOURS["red"]), 3),
                     "hue_to_blue": round(hue_distance(rgb, COLOURS["blue"]), 3)})
        print(json.dumps(rows[-1]), flush=True)
    gif = ROOT / "samples" / "amortized_morph.gif"
    shutil.copyfile(files["gif"], gif)
    report["phases"]["interpolation"] = {
        "status": "done", "frames": rows, "gif": str(gif.relative_to(ROOT)),
        "one_watertight_body_each": all(r["bodies"] == 1 and r["watertight"] for r in rows),
        # Hue of the area-weighted mean of 8-bit texels: a step of one or two levels of a saturated
        # channel moves it by ~0.001-0.003, so "monotonic" allows HUE_SLACK backwards between frames;
        # the strict reading is kept beside it.
        "hue_slack": HUE_SLACK,
        "colour_monotonic": colour_monotonic(rows, HUE_SLACK),
        "colour_monotonic_strict": colour_monotonic(rows, 0.0),
        "cube_iou_falls_monotonically": monotonic([r["iou_cube"] for r in rows], False)}


PHASES = {"train": phase_train, "seen": phase_seen, "held_out": phase_held_out,
          "seen_refined": refined("seen_refined", seen_sample, SEEN_TARGETS),
          "held_out_refined": refined("held_out_refined", held_out_sample, HELD_OUT_TARGETS),
          "latency": phase_latency, "compute": phase_compute, "interpolation": phase_interpolation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", action="append", choices=list(PHASES), help="run only these (default: all, in order)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="amortize/run config override")
    parser.add_argument("--generate-set", dest="generate_overrides", action="append", default=None,
                        help="config override for generate --from only (bake, export); default: "
                        + " ".join(GENERATE_OVERRIDES))
    parser.add_argument("--compute-sample", type=int, default=3, help="prompts the builtin preset runs for the comparison")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--refine-steps", type=int, default=0,
                        help="also measure the seen and held-out prompts with this many refinement steps")
    parser.add_argument("--refined-set", dest="refined_overrides", action="append", default=[],
                        help="also measure them with this generate override (e.g. fine.steps=50)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help="comma-separated kinds of the prompt set (default: all; fewer for a quick comparison)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds must name kinds of the built-in world: {', '.join(KINDS)}")
    SELECTED_KINDS[:] = kinds
    args.generate_overrides = GENERATE_OVERRIDES if args.generate_overrides is None else args.generate_overrides
    import torch

    torch.set_num_threads(1)
    report = load_report(args.out)
    if report.get("kinds", SELECTED_KINDS) != SELECTED_KINDS:
        # Its finished phases measured another prompt set; they would be skipped as done.
        parser.error(f"{args.out} holds a report on the kinds {','.join(report['kinds'])}; give another --out")
    report["generate_overrides"] = args.generate_overrides
    report["kinds"] = SELECTED_KINDS
    report["machine"] = {"platform": platform.platform(), "device": "cpu", "threads": 1, "gpu": "none lent"}
    report.setdefault("phases", {})
    for name in args.phase or list(PHASES):
        if report["phases"].get(name, {}).get("status") == "done":
            continue
        PHASES[name](report, args)
        report["commit"] = commit()
        save_report(args.out, report)


if __name__ == "__main__":
    main()
