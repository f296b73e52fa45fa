"""A stand-in for the pipeline, for testing batch logic in seconds (loaded by "module:function").

``fake_job`` behaves like ``magic3d.batch.run_job``: it "optimises" for FAKE_STEPS steps of
FAKE_STEP_S seconds, keeps a checkpoint so an interrupted run resumes, and writes a small USD
asset, a preview PNG, a GLB and run.json, every file through a temporary name. Words in the
prompt make it misbehave: "fail" raises, "nan" reports a NaN loss, "hang" never ends, "die"
kills its own process the first time, "segv" makes it segfault the first time. Every completion
appends a line to <out>/fake-log.txt. It keeps a fake prior in the worker's cache
(``magic3d.batch.job.PRIORS``) whose every load appends the process id to <out>/prior-loads.txt.
Like the pipeline, it refuses a run folder whose run.json holds another prompt, seed or set of
overrides unless the job asks to restart, and then starts over from step 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import time
from pathlib import Path
from typing import Any

from magic3d.errors import ConfigError, InputError


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _cube_usdc(path: Path, size: float) -> None:
    from pxr import Gf, Kind, Usd, UsdGeom

    tmp = path.with_name(f".tmp-{path.stem}.usdc")
    stage = Usd.Stage.CreateNew(str(tmp))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, 1.0)
    root = UsdGeom.Xform.Define(stage, "/Asset")
    stage.SetDefaultPrim(root.GetPrim())
    Usd.ModelAPI(root.GetPrim()).SetKind(Kind.Tokens.component)
    h = size / 2
    mesh = UsdGeom.Mesh.Define(stage, "/Asset/geo")
    mesh.CreatePointsAttr([Gf.Vec3f(x * h, h + y * h, z * h) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)])
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    mesh.CreateFaceVertexCountsAttr([4] * 6)
    mesh.CreateFaceVertexIndicesAttr([i for q in quads for i in q])
    mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
    face_normals = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]  # one per quad above
    mesh.CreateNormalsAttr([Gf.Vec3f(*n) for n in face_normals for _ in range(4)])
    mesh.SetNormalsInterpolation(UsdGeom.Tokens.faceVarying)
    mesh.CreateExtentAttr([Gf.Vec3f(-h, 0, -h), Gf.Vec3f(h, size, h)])
    stage.GetRootLayer().Save()
    del stage
    os.replace(tmp, path)


def _png(path: Path, rgb: tuple[int, int, int]) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(buf, format="PNG")
    _atomic(path, buf.getvalue())


def _glb() -> bytes:
    doc = json.dumps({"asset": {"version": "2.0", "generator": "fake"}}).encode()
    doc += b" " * (-len(doc) % 4)
    return struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(doc)) + struct.pack("<II", len(doc), 0x4E4F534A) + doc


def fake_prior(out: Path) -> dict[str, int]:
    with open(out / "prior-loads.txt", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return {"pid": os.getpid()}


def fake_job(job: dict[str, Any], options: dict[str, Any], progress: Any) -> dict[str, Any]:
    from magic3d.batch.job import PRIORS

    out = Path(options["out"])
    prior = PRIORS.get(("fake", str(out)), lambda: fake_prior(out))
    run_dir = out / job["id"]
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    prompt = job["prompt"]
    seed = job["seed"] if job.get("seed") is not None else (options.get("seed") or 0)
    made_by = {"prompt": prompt, "seed": seed, "overrides": list(options.get("overrides") or [])}
    record_path = run_dir / "run.json"
    if job.get("restart"):
        for p in (ckpt / "step.txt", record_path):
            p.unlink(missing_ok=True)
    elif record_path.exists():
        previous = json.loads(record_path.read_text())
        if {k: previous.get(k) for k in made_by} != made_by:  # the pipeline's words (run_planned)
            raise ConfigError(f"{str(run_dir)!r} holds a run with another prompt or config; "
                              "pass --restart to replace it or choose another --out.")
    steps = int(os.environ.get("FAKE_STEPS", "3"))
    step_s = float(os.environ.get("FAKE_STEP_S", "0.05"))
    if "die" in prompt and not (run_dir / "died-once").exists():
        (run_dir / "died-once").write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    if "segv" in prompt and not (run_dir / "crashed-once").exists():
        (run_dir / "crashed-once").write_text("x")
        os.kill(os.getpid(), signal.SIGSEGV)
    if "hang" in prompt:
        time.sleep(3600)
    print(f"fake job {job['id']} starting")  # must land in the job's log, never in --json output
    state = ckpt / "step.txt"
    start = int(state.read_text()) if state.exists() else 0
    for step in range(start, steps):
        time.sleep(step_s)
        if "fail" in prompt and step == 1:
            raise RuntimeError("asked to fail")
        _atomic(state, str(step + 1).encode())
        progress("coarse", step + 1, steps, 1.0 / (step + 1))
    digest = hashlib.sha1(prompt.encode()).digest()
    size = 0.5 + digest[0] / 255
    _cube_usdc(run_dir / "asset.usdc", size)
    _png(run_dir / "preview.png", (digest[1], digest[2], digest[3]))
    _atomic(run_dir / "asset.glb", _glb())
    record = {**made_by, "status": "done", "timings": {"coarse": steps * step_s}}
    _atomic(record_path, json.dumps(record).encode())
    with open(out / "fake-log.txt", "a") as fh:
        fh.write(f"{job['id']} {os.getpid()} {start} {prior['pid']}\n")
    loss = float("nan") if "nan" in prompt else 0.1
    files = {"usdc": run_dir / "asset.usdc", "glb": run_dir / "asset.glb", "preview": run_dir / "preview.png"}
    return {"run_dir": str(run_dir), "files": {k: str(v) for k, v in files.items()},
            "metrics": {"coarse": {"loss": loss}, "resumed_from": start}}


def fake_plan(prompt: str, out: Any = None, preset: Any = None, prior: Any = None, overrides: Any = (),
              seed: Any = None, device: Any = None, name: Any = None) -> None:
    """Like plan_run: refuses what the prior could not draw and presets that do not exist."""
    if "forbidden" in prompt:
        raise InputError("The prompt uses words the built-in prior does not know; see `magic3d info`.")
    if preset not in (None, "fast", "builtin"):
        raise InputError(f"Unknown preset {preset!r}; choose fast or builtin.")


def real_or_fail(job: dict[str, Any], options: dict[str, Any], progress: Any) -> dict[str, Any]:
    """The real pipeline, except for the job named in $FAIL_JOB, which is made to fail."""
    if job["id"] == os.environ.get("FAIL_JOB"):
        raise RuntimeError("made to fail")
    from magic3d.batch.job import run_job

    return run_job(job, options, progress)


def planning_job(job: dict[str, Any], options: dict[str, Any], progress: Any) -> dict[str, Any]:
    """``fake_job`` after planning the job as ``run_job`` does (``sources.plan_line``, the single
    commands' planners); its run.json then holds what the plan starts from, as the pipeline's does."""
    from magic3d.batch.planners import plan_line
    from magic3d.batch.sources import JobSource
    from magic3d.config import to_dict

    source = JobSource(**job["source"]) if job.get("source") else None
    _, cfg, run_dir = plan_line(job["prompt"], source, job["id"], options, job.get("seed"), job.get("preset"))
    result = fake_job(job, options, progress)
    assert Path(result["run_dir"]) == run_dir, (result["run_dir"], run_dir)
    record_path = run_dir / "run.json"
    record = json.loads(record_path.read_text())
    record.update(control=to_dict(cfg)["control"], edited_from=cfg.control.edited_from())
    _atomic(record_path, json.dumps(record).encode())
    return result


def counted_model_job(job: dict[str, Any], options: dict[str, Any], progress: Any) -> dict[str, Any]:
    """The real job; every load of an amortized model in this process appends its pid to
    <out>/model-loads.txt (a warm worker's jobs should share one)."""
    import magic3d.amortize.generate as generate
    from magic3d.batch.job import run_job

    if not getattr(generate.load_conditioned, "counted", False):
        load = generate.load_conditioned

        def counted(plan: Any, device: Any) -> Any:
            with open(Path(options["out"]) / "model-loads.txt", "a") as fh:
                fh.write(f"{os.getpid()}\n")
            return load(plan, device)

        counted.counted = True  # type: ignore[attr-defined]
        generate.load_conditioned = counted
    return run_job(job, options, progress)
