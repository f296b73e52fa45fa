"""Do the built-in pipeline's assets pass the checks world builders run? ``python scripts/check_assets.py``.

For the 20 prompts of ``scripts/eval_builtin.py`` (same list, same built-in prior and ``builtin``
preset, seed 0) it checks every asset a run wrote:

- ``asset.usdc`` with Pixar's ComplianceChecker and usd-validation-nvidia, ``asset.usdz`` with the
  checker plain and with Apple's ARKit rules and usd-validation-nvidia (``exporters.validate``);
- ``asset.glb`` with the Khronos glTF validator (``gltf_problems``; Node and the npm package);
- the welded mesh as USD stores it (points and faceVertexIndices of every mesh on the composed
  stage of ``asset.usdc``): watertight, one body, the genus of its kind (torus 1, others 0, as
  ``eval_builtin`` expects) and no self-intersecting triangle pairs (``magic3d.surface``).

``--runs DIR`` checks run folders that already exist (``DIR/<slug>/``, from ``eval_builtin.py`` or
``magic3d generate``); without it, runs are generated (or resumed from their checkpoints) in
``--work``. Results go to samples/benchmarks/asset_checks.json after every prompt; prompts already
in it are skipped, so a stopped check resumes by running the same command again (``--recheck``
checks everything again). Slow: generating one asset takes 60-170 s on the 2-core build machine;
run it in the background, e.g. ``nohup python scripts/check_assets.py > /tmp/check_assets.log 2>&1 &``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from eval_builtin import default_prompts  # noqa: E402

from exporters.common import atomic_output  # noqa: E402
from exporters.validate import (  # noqa: E402
    GltfValidatorMissing,
    gltf_problems,
    gltf_report,
    nvidia_available,
    validate_asset,
)
from magic3d.guidance.builtin_world import GENUS  # noqa: E402
from magic3d.naming import slugify  # noqa: E402
from magic3d.surface import self_intersections, surface_report  # noqa: E402


def usd_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """("P 3" points, "F 3" triangles) of every mesh on the composed stage (payloads loaded), in
    world space; polygons are fanned into triangles."""
    from pxr import Usd, UsdGeom

    stage = Usd.Stage.Open(str(path), Usd.Stage.LoadAll)
    points, faces, offset = [], [], 0
    for prim in stage.Traverse():
        if not prim.IsA(UsdGeom.Mesh):
            continue
        mesh = UsdGeom.Mesh(prim)
        p = np.asarray(mesh.GetPointsAttr().Get(), dtype=np.float64)
        counts = np.asarray(mesh.GetFaceVertexCountsAttr().Get(), dtype=np.int64)
        index = np.asarray(mesh.GetFaceVertexIndicesAttr().Get(), dtype=np.int64)
        world = np.asarray(UsdGeom.Xformable(prim).ComputeLocalToWorldTransform(Usd.TimeCode.Default()))
        p = p @ world[:3, :3] + world[3, :3]  # USD matrices act on row vectors
        starts = np.cumsum(counts) - counts
        tris = [np.stack([index[s] * np.ones(c - 2, np.int64), index[s + 1:s + c - 1], index[s + 2:s + c]], 1)
                for s, c in zip(starts.tolist(), counts.tolist(), strict=True)] if (counts != 3).any() \
            else [index.reshape(-1, 3)]
        points.append(p)
        faces.append(np.concatenate(tris) + offset)
        offset += len(p)
    if not points:
        raise ValueError(f"{path} has no mesh")
    return np.concatenate(points), np.concatenate(faces)


def check_run(run_dir: Path, kind: str) -> dict:
    """Every check on one run folder's assets; ``ok`` when all pass."""
    row: dict = {}
    for name, arkit in (("usdc", False), ("usdz", True)):
        file = run_dir / f"asset.{name}"
        row[name] = validate_asset(file, arkit=arkit) if file.is_file() else [f"missing: {file.name}"]
    glb = run_dir / "asset.glb"
    try:
        report = gltf_report(glb) if glb.is_file() else None
        row["glb"] = gltf_problems(glb) if report else ["missing: asset.glb"]
        if report:
            row["glb_counts"] = {k: report[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")}
    except GltfValidatorMissing as exc:
        row["glb"] = None  # not checked: recorded apart from a pass
        row["glb_skipped"] = str(exc)
    points, faces = usd_mesh(run_dir / "asset.usdc")
    surface = surface_report(points, faces).as_dict()
    clock = time.perf_counter()
    crossing = self_intersections(points, faces)
    row["mesh"] = {
        **surface, "points": len(points), "faces": len(faces), "expected_genus": GENUS[kind],
        "self_intersections": crossing, "self_intersection_seconds": round(time.perf_counter() - clock, 2),
    }
    row["checks"] = {
        "usdc_clean": not row["usdc"], "usdz_clean": not row["usdz"],
        "glb_clean": None if row["glb"] is None else not row["glb"],
        "watertight": surface["watertight"], "one_body": surface["bodies"] == 1,
        "genus_ok": surface["genus"] == GENUS[kind], "no_self_intersections": crossing == 0,
    }
    row["ok"] = all(v is not False for v in row["checks"].values()) and row["glb"] is not None
    return row


def run_one(kind: str, colour: str, runs: Path, generate_missing: bool, seed: int) -> dict:
    """Generate (or resume) the prompt's run when asked, then check it."""
    import torch

    torch.set_num_threads(1)
    prompt = f"a {colour} {kind}"
    run_dir = runs / slugify(prompt)
    row: dict = {"prompt": prompt, "kind": kind, "run": str(run_dir)}
    clock = time.perf_counter()
    if generate_missing:
        from magic3d.pipeline import generate

        try:
            run_dir = generate(prompt, out=runs, prior="builtin", preset="builtin", seed=seed).run_dir
        except Exception as exc:  # e.g. the folder holds a run made with another config: recorded, not fatal
            row.update(error=f"generation failed: {type(exc).__name__}: {exc}", ok=False)
            print(json.dumps(row), flush=True)
            return row
        row["run"] = str(run_dir)
    row["generate_seconds"] = round(time.perf_counter() - clock, 1)
    try:
        record = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    status = record.get("status")
    # The assets were made by the code of their run, which may predate the checking commit.
    row["made"] = {"started": record.get("started"), "finished": record.get("finished"),
                   "head_then": head_at(record.get("started"))}
    if status != "done":
        row.update(error=f"no finished run at {run_dir} (run.json status {status!r})", ok=False)
        print(json.dumps(row), flush=True)
        return row
    clock = time.perf_counter()
    row.update(check_run(run_dir, kind))
    row["check_seconds"] = round(time.perf_counter() - clock, 1)
    row["commit"] = git_commit()
    print(json.dumps({"prompt": prompt, "ok": row["ok"], "checks": row.get("checks")}), flush=True)
    return row


def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it (the code that ran is not all committed)."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], cwd=ROOT,
                              capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def head_at(when: str | None) -> str | None:
    """The commit HEAD was at ``when`` (a run's start): what made the assets, up to uncommitted edits."""
    if not when:
        return None
    try:
        done = subprocess.run(["git", "log", "-1", "--format=%H", f"--before={when}"], cwd=ROOT,
                              capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("usd-core", "usd-validation-nvidia", "trimesh"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    gltf = ROOT / ".ci" / "node" / "node_modules" / "gltf-validator" / "package.json"
    found["gltf-validator"] = json.loads(gltf.read_text())["version"] if gltf.is_file() else None
    found["nvidia_validator_ran"] = nvidia_available()
    return found


def summarise(rows: list[dict], planned: list[str], args: argparse.Namespace) -> dict:
    checked = [r for r in rows if "checks" in r]

    def count(name: str) -> int:
        return sum(r["checks"][name] is True for r in checked)

    names = ("usdc_clean", "usdz_clean", "glb_clean", "watertight", "one_body", "genus_ok", "no_self_intersections")
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": "none lent", "workers": args.workers},
        "commit": git_commit(), "versions": versions(), "seed": args.seed,
        "runs": str(args.runs or args.work), "generated": args.runs is None,
        "partial": len(checked) < len(planned),
        "resume": "python scripts/check_assets.py" + (f" --runs {args.runs}" if args.runs else f" --work {args.work}"),
        "planned": len(planned), "checked": len(checked), "failed_to_check": len(rows) - len(checked),
        "totals": {name: count(name) for name in names} | {"all_ok": sum(r["ok"] for r in rows)},
        "self_intersection_seconds_max": max((r["mesh"]["self_intersection_seconds"] for r in checked), default=None),
        "rows": sorted(rows, key=lambda r: planned.index(r["prompt"]) if r["prompt"] in planned else len(planned)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, help="check existing run folders DIR/<slug>/ instead of generating")
    parser.add_argument("--work", type=Path, default=Path("/tmp/magic3d-checks/work"), help="where runs are generated")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="prompts at once, one CPU thread each")
    parser.add_argument("--recheck", action="store_true", help="check prompts already in --out again")
    parser.add_argument("--out", type=Path, default=ROOT / "samples" / "benchmarks" / "asset_checks.json")
    args = parser.parse_args()
    pairs = default_prompts(args.count)
    planned = [f"a {colour} {kind}" for kind, colour in pairs]
    rows: list[dict] = []
    if args.out.is_file() and not args.recheck:
        try:
            rows = [r for r in json.loads(args.out.read_text(encoding="utf-8"))["rows"] if "checks" in r]
        except (ValueError, KeyError) as exc:
            parser.error(f"cannot resume from {args.out}: {exc}; pass --recheck to start over")
    seen = {r["prompt"] for r in rows}
    todo = [(k, c) for k, c in pairs if f"a {c} {k}" not in seen]
    print(f"{len(seen)} prompts already checked, {len(todo)} to go", flush=True)
    runs = args.runs or args.work
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        jobs = [pool.submit(run_one, kind, colour, runs, args.runs is None, args.seed) for kind, colour in todo]
        for job in as_completed(jobs):
            rows.append(job.result())
            report = summarise(rows, planned, args)
            with atomic_output(args.out) as tmp:  # after every prompt: a stopped check keeps its rows
                tmp.write_text(json.dumps(report, indent=2) + "\n")
    report = summarise(rows, planned, args)
    with atomic_output(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['totals']['all_ok']} of {report['planned']} prompts pass every check; "
          f"totals {report['totals']}; wrote {args.out}")


if __name__ == "__main__":
    main()
