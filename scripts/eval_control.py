"""Do issue 23's control commands do what they say on the built-in prior? ``python scripts/eval_control.py``.

Runs, on the CPU with the ``builtin`` preset (seed 0), and reads every asset back:

- edit, appearance: "a blue torus" edited to "a red torus" with ``--keep geometry``: dominant
  colour, voxel IoU with the source mesh (each normalised to its bounds), genus;
- edit, shape: "a blue cube" edited to "a blue sphere" with ``--keep none``: recognised kind, colour;
- init shape: a cone mesh with "a green cone" after ``INIT_STEPS`` coarse steps, against the
  preset's own run from the blob (its 400 steps): kind, IoU with the input; a cube with
  "a yellow cube": its oriented-box ratio (shortest over longest side; the cube test wants > 0.8);
- texture: an untextured (subdivided) cube OBJ and a GLB with its own UVs with "a red cube":
  largest vertex offset from the input after the documented frame change, UVs kept, colour.

Writes samples/benchmarks/control.json (after every case, so a partial run still reports).
Two worker processes, one torch thread each; it takes tens of minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import trimesh

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "samples" / "benchmarks" / "control.json"
INIT_STEPS = 100  # coarse steps from the user's shape; the builtin preset's run from the blob takes 400


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


def case(name: str, work: Path) -> dict:
    import torch

    torch.set_num_threads(1)
    from exporters import load_asset
    from magic3d.control.plan import edit, texture
    from magic3d.pipeline import generate

    work.mkdir(parents=True, exist_ok=True)
    files = shapes(work)
    clock = time.perf_counter()
    row: dict = {"case": name}
    if name in ("edit_appearance", "edit_shape"):
        source_prompt, prompt, keep = (("a blue torus", "a red torus", "geometry") if name == "edit_appearance"
                                       else ("a blue cube", "a blue sphere", "none"))
        source = generate(source_prompt, out=work / "sources", prior="builtin", seed=0, device="cpu")
        row["source_seconds"] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        result = edit(source.run_dir, prompt, out=work / "edits", keep=keep, device="cpu")
        got, before = look(result.files["glb"]), look(source.files["glb"])
        row.update(prompt=prompt, source_prompt=source_prompt, keep=keep, iou_with_source=iou(got["mesh"], before["mesh"]),
                   source_kind=before["kind"], source_colour=before["colour"])
    elif name in ("init_cone", "blob_cone", "init_cube"):
        prompt = "a yellow cube" if name == "init_cube" else "a green cone"
        init = files["cube" if name == "init_cube" else "cone"] if name != "blob_cone" else None
        steps = [] if init is None else [f"coarse.steps={INIT_STEPS}"]
        result = generate(prompt, out=work / name, prior="builtin", seed=0, device="cpu", overrides=steps,
                          init_shape=init)
        got = look(result.files["glb"])
        row.update(prompt=prompt, coarse_steps=result_steps(result), init_shape=init is not None,
                   iou_with_input=iou(got["mesh"], trimesh.load(files["cube" if name == "init_cube" else "cone"])))
    else:
        source = files["cube" if name == "texture_obj" else "uvcube"]
        result = texture(source, "a red cube", out=work / name, device="cpu")
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
    row.update({k: v for k, v in got.items() if k != "mesh"}, seconds=round(time.perf_counter() - clock, 1))
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
    def get(name: str, key: str):
        return rows.get(name, {}).get(key)

    return {
        "edit_appearance_red": None if "edit_appearance" not in rows else get("edit_appearance", "colour") == "red",
        "edit_appearance_iou_0.9": None if "edit_appearance" not in rows else get("edit_appearance", "iou_with_source") >= 0.9,
        "edit_appearance_genus_1": None if "edit_appearance" not in rows else get("edit_appearance", "genus") == 1,
        "edit_shape_sphere": None if "edit_shape" not in rows else get("edit_shape", "kind") == "sphere",
        "edit_shape_blue": None if "edit_shape" not in rows else get("edit_shape", "colour") == "blue",
        "init_cone_cone": None if "init_cone" not in rows else get("init_cone", "kind") == "cone",
        "init_cone_iou_0.8": None if "init_cone" not in rows else get("init_cone", "iou_with_input") >= 0.8,
        "init_cube_corners": None if "init_cube" not in rows else get("init_cube", "box_ratio") > 0.8,
        "texture_obj_positions_1e-6": None if "texture_obj" not in rows else
        (get("texture_obj", "max_position_error") is not None and get("texture_obj", "max_position_error") < 1e-6),
        "texture_obj_red": None if "texture_obj" not in rows else get("texture_obj", "colour") == "red",
        "texture_glb_uvs_kept": None if "texture_glb" not in rows else
        (get("texture_glb", "uv") == "own" and get("texture_glb", "max_uv_error") < 1e-6),
        "texture_glb_red": None if "texture_glb" not in rows else get("texture_glb", "colour") == "red",
    }


def main() -> None:
    names = sys.argv[1:] or ["edit_appearance", "init_cone", "texture_obj", "edit_shape", "blob_cone", "init_cube",
                             "texture_glb"]
    work = Path(tempfile.mkdtemp(prefix="eval-control-"))
    rows: dict[str, dict] = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        futures = {pool.submit(case, name, work / name): name for name in names}
        for future in as_completed(futures):
            name = futures[future]
            try:
                rows[name] = future.result()
            except Exception as exc:  # one case's failure is a result too
                rows[name] = {"case": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
            report = {
                "command": "python scripts/eval_control.py " + " ".join(sys.argv[1:]),
                "commit": commit(), "preset": "builtin", "seed": 0, "init_steps": INIT_STEPS,
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads_per_case": 1,
                            "python": platform.python_version(), "gpu": "none lent"},
                "seconds": round(time.perf_counter() - started, 1), "finished": len(rows) == len(names),
                "checks": checks(rows), "cases": [rows[n] for n in names if n in rows],
            }
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
