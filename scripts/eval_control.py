"""Do issue 23's control commands do what they say on the built-in prior? ``python scripts/eval_control.py``.

Runs, on the CPU with the ``builtin`` preset (seed 0), and reads every asset back:

- edit, appearance: "a blue torus" edited to "a red torus" with ``--keep geometry``: dominant
  colour, voxel IoU with the source mesh (each normalised to its bounds), genus;
- edit, shape: "a blue cube" edited to "a blue sphere" with ``--keep none``: recognised kind, colour;
- init shape: a cone mesh with "a green cone" after ``INIT_STEPS`` coarse steps, against the
  preset's own run from the blob (its 400 steps): kind, IoU with the input; a cube with
  "a yellow cube": its oriented-box ratio (shortest over longest side; the cube test wants > 0.8)
  and that it is still recognised as a cube;
- texture: an untextured (subdivided) cube OBJ and a GLB with its own UVs with "a red cube":
  largest vertex offset from the input after the documented frame change, UVs kept, colour.

The init-shape cone is also run with ``control.shape_weight=0`` (``init_cone_unheld``: the fit
alone, no sketch-shape loss), so both sides of that comparison come from the same run.

Cases run one at a time in this process with one torch thread; a source run two cases need is
made once. Only what a check reads is written (GLB, no preview): the runs are otherwise the
preset's. Writes samples/benchmarks/control.json after every case, so a partial run still
reports (``finished: false``). ``seconds`` are wall time, ``cpu_seconds`` this process's CPU time
(the fairer figure on a loaded machine). About half an hour on one quiet core.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "samples" / "benchmarks" / "control.json"
INIT_STEPS = 100  # coarse steps from the user's shape; the builtin preset's run from the blob takes 400
CHEAP = ["export.formats=[glb]", "export.preview=false"]  # what the checks read; training is untouched
CASES = ["edit_appearance", "edit_shape", "init_cone", "blob_cone", "init_cube", "texture_obj", "texture_glb",
         "init_cone_unheld"]
SOURCES = {"edit_appearance": ("a blue torus", "a red torus", "geometry"),
           "edit_shape": ("a blue cube", "a blue sphere", "none")}


def iou(a: trimesh.Trimesh, b: trimesh.Trimesh, resolution: int = 32) -> float:
    from magic3d.guidance.builtin_world import occupancy

    x, y = occupancy([a], resolution), occupancy([b], resolution)
    return round(float((x & y).sum() / max((x | y).sum(), 1)), 3)


def look(path: Path) -> dict:
    from exporters import load_asset
    from magic3d.guidance.builtin_world import dominant_colour, genus, recognise_kind

    mesh = load_asset(path)
    kind, scores = recognise_kind(mesh)
    extents = np.sort(mesh.bounding_box_oriented.primitive.extents)
    return {"kind": kind, "kind_iou": round(scores[kind], 3), "colour": dominant_colour(mesh), "genus": genus(mesh),
            "box_ratio": round(float(extents[0] / extents[2]), 3), "mesh": mesh}


def shapes(work: Path) -> dict[str, Path]:
    cone = trimesh.creation.cone(radius=0.6, height=1.3, sections=40)
    cone.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # Y up
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0)).subdivide().subdivide().subdivide()
    uv = np.asarray(cube.vertices)[:, [0, 2]] * 0.45 + 0.5 + np.asarray(cube.vertices)[:, 1:2] * 0.04
    uv_cube = trimesh.Trimesh(cube.vertices, cube.faces, process=False, visual=trimesh.visual.TextureVisuals(uv=uv))
    paths = {"cone": work / "cone.obj", "cube": work / "cube.obj", "uvcube": work / "uvcube.glb"}
    cone.export(paths["cone"])
    cube.export(paths["cube"])
    uv_cube.export(paths["uvcube"])
    return paths


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def case(name: str, work: Path, files: dict[str, Path], sources: dict[str, object]) -> dict:
    from exporters import load_asset
    from magic3d.control.plan import edit, texture
    from magic3d.pipeline import generate

    clock, cpu = time.perf_counter(), cpu_seconds()
    row: dict = {"case": name}
    if name in SOURCES:
        source_prompt, prompt, keep = SOURCES[name]
        if source_prompt not in sources:  # made once for every case that edits it
            sources[source_prompt] = generate(source_prompt, out=work / "sources", prior="builtin", seed=0,
                                              device="cpu", overrides=CHEAP)
            row.update(source_seconds=round(time.perf_counter() - clock, 1),
                       source_cpu_seconds=round(cpu_seconds() - cpu, 1))
            clock, cpu = time.perf_counter(), cpu_seconds()
        source = sources[source_prompt]
        result = edit(source.run_dir, prompt, out=work / "edits", keep=keep, device="cpu", overrides=CHEAP)
        got, before = look(result.files["glb"]), look(source.files["glb"])
        row.update(prompt=prompt, source_prompt=source_prompt, keep=keep, iou_with_source=iou(got["mesh"], before["mesh"]),
                   source_kind=before["kind"], source_colour=before["colour"])
    elif name in ("init_cone", "blob_cone", "init_cube", "init_cone_unheld"):
        prompt = "a yellow cube" if name == "init_cube" else "a green cone"
        given = files["cube" if name == "init_cube" else "cone"]
        init = None if name == "blob_cone" else given
        steps = [] if init is None else [f"coarse.steps={INIT_STEPS}"]
        if name == "init_cone_unheld":
            steps.append("control.shape_weight=0")
        result = generate(prompt, out=work / name, prior="builtin", seed=0, device="cpu", overrides=[*CHEAP, *steps],
                          init_shape=init)
        got = look(result.files["glb"])
        coarse = json.loads((result.run_dir / "run.json").read_text())["metrics"].get("coarse", {})
        row.update(prompt=prompt, coarse_steps=result_steps(result), init_shape=init is not None,
                   shape_weight=None if init is None else (0.0 if name == "init_cone_unheld" else "default"),
                   init_iou=coarse.get("init_iou"), iou_with_input=iou(got["mesh"], trimesh.load(given)))
    else:
        source = files["cube" if name == "texture_obj" else "uvcube"]
        result = texture(source, "a red cube", out=work / name, device="cpu", overrides=CHEAP)
        got = look(result.files["glb"])
        given = trimesh.load(source, force="mesh", process=False)
        exported = load_asset(result.files["glb"])
        lo, hi = given.vertices.min(0), given.vertices.max(0)
        moved = np.asarray(given.vertices) - [(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2]  # the export frame
        welded = np.unique(np.round(exported.vertices, 9), axis=0)
        wanted = np.unique(np.round(moved, 9), axis=0)
        row.update(prompt="a red cube", uv=json.loads((result.run_dir / "run.json").read_text())["metrics"]["uv"],
                   same_vertex_count=bool(welded.shape == wanted.shape),
                   max_position_error=float(np.abs(welded - wanted).max()) if welded.shape == wanted.shape else None)
        if name == "texture_glb":
            order, source_order = np.lexsort(exported.vertices.T), np.lexsort(moved.T)
            row["max_uv_error"] = float(np.abs(np.asarray(exported.visual.uv)[order]
                                               - np.asarray(given.visual.uv)[source_order]).max())
    row.update({k: v for k, v in got.items() if k != "mesh"}, seconds=round(time.perf_counter() - clock, 1),
               cpu_seconds=round(cpu_seconds() - cpu, 1))
    print(json.dumps(row), flush=True)
    return row


def result_steps(result) -> int:
    return int(json.loads((result.run_dir / "run.json").read_text())["config"]["coarse"]["steps"])


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head


def checks(rows: dict[str, dict]) -> dict[str, bool | None]:
    """Each of the issue's checks: None while its case has not run, False where it failed to run."""

    def check(name: str, passes) -> bool | None:
        if name not in rows:
            return None
        try:
            return bool(passes(rows[name]))
        except (KeyError, TypeError):  # an errored case has none of the keys
            return False

    def cone_steps(row: dict) -> bool | None:
        return None if "blob_cone" not in rows else row["coarse_steps"] < rows["blob_cone"]["coarse_steps"]

    def exact(key: str):
        return lambda row: row[key] is not None and row[key] < 1e-6

    return {
        "edit_appearance_red": check("edit_appearance", lambda r: r["colour"] == "red"),
        "edit_appearance_iou_0.9": check("edit_appearance", lambda r: r["iou_with_source"] >= 0.9),
        "edit_appearance_genus_1": check("edit_appearance", lambda r: r["genus"] == 1),
        "edit_shape_sphere": check("edit_shape", lambda r: r["kind"] == "sphere"),
        "edit_shape_blue": check("edit_shape", lambda r: r["colour"] == "blue"),
        "init_cone_cone": check("init_cone", lambda r: r["kind"] == "cone"),
        "init_cone_iou_0.8": check("init_cone", lambda r: r["iou_with_input"] >= 0.8),
        "init_cone_fewer_steps": None if "blob_cone" not in rows else check("init_cone", cone_steps),
        "init_cube_corners": check("init_cube", lambda r: r["box_ratio"] > 0.8),
        "init_cube_cube": check("init_cube", lambda r: r["kind"] == "cube"),
        "texture_obj_positions_1e-6": check("texture_obj", exact("max_position_error")),
        "texture_obj_red": check("texture_obj", lambda r: r["colour"] == "red"),
        "texture_glb_positions_1e-6": check("texture_glb", exact("max_position_error")),
        "texture_glb_uvs_kept": check("texture_glb", lambda r: r["uv"] == "own" and exact("max_uv_error")(r)),
        "texture_glb_red": check("texture_glb", lambda r: r["colour"] == "red"),
    }


def main() -> None:
    import torch

    torch.set_num_threads(1)
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__.split("\n\n")[0] + f"\n\nusage: python scripts/eval_control.py [CASE ...]; cases: {', '.join(CASES)}")
        return
    names = sys.argv[1:] or CASES
    unknown = sorted(set(names) - set(CASES))
    if unknown:
        sys.exit(f"error: unknown case {unknown[0]!r}; the cases are {', '.join(CASES)}.")
    work = Path(tempfile.mkdtemp(prefix="eval-control-"))
    files = shapes(work)
    measured = commit()  # the code every case ran, whatever is committed while it runs
    rows: dict[str, dict] = {}
    sources: dict[str, object] = {}
    started = time.perf_counter()
    for name in names:
        try:
            rows[name] = case(name, work / name if name not in SOURCES else work, files, sources)
        except Exception as exc:  # one case's failure is a result too
            rows[name] = {"case": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            print(json.dumps(rows[name]), flush=True)
        report = {
            "command": "python scripts/eval_control.py " + " ".join(sys.argv[1:]),
            "commit": measured, "preset": "builtin", "seed": 0, "init_steps": INIT_STEPS,
            "builtin_coarse_steps": rows.get("blob_cone", {}).get("coarse_steps"),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads_per_case": 1,
                        "load_average_1min": round(os.getloadavg()[0], 2),
                        "python": platform.python_version(), "gpu": "none lent"},
            "seconds": round(time.perf_counter() - started, 1), "cpu_seconds": round(cpu_seconds(), 1),
            "finished": len(rows) == len(names), "checks": checks(rows), "cases": [rows[n] for n in names if n in rows],
        }
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
