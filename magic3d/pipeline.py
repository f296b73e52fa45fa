"""One prompt to finished asset files: coarse NeRF, fine mesh, bake, export.

Everything a user can get wrong (prompt, config, prior, output folder) is checked before any
work starts; each stage resumes from its own checkpoints when the same run is started again.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from magic3d.checkpoint import foreign_checkpoints, made_by_message, resume_notice, run_identity
from magic3d.config import Config, to_dict
from magic3d.errors import ConfigError, RunError
from magic3d.plan import plan_config, plan_run, resolve_device  # noqa: F401  (plan_config: re-exported)
from magic3d.progress import Notice, ProgressFn, silent
from magic3d.storage import (
    atomic_write_text,
    check_run_folder,
    confined,
    ensure_writable_dir,
    read_record,
)

# (config, device) -> the run's first prior; the pipeline only reads it, so it may serve many runs.
PriorLoader = Callable[[Config, "torch.device"], Any]


@dataclass
class RunResult:
    run_dir: Path
    files: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of the run that made it


def generate(
    prompt: str,
    out: str | Path = "outputs",
    preset: str | None = None,
    prior: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    seed: int | None = None,
    device: str | None = None,
    restart: bool = False,
    progress: ProgressFn | None = None,
    name: str | None = None,
    notice: Notice | None = None,
    prior_loader: PriorLoader | None = None,
    init_shape: str | Path | None = None,
) -> RunResult:
    """Run every stage for ``prompt`` and write the assets under ``out/<slug>/``.

    ``prior_loader`` replaces ``load_first_prior``: a batch worker's keeps the prior between jobs.
    ``init_shape``: a mesh file the coarse density starts from (``magic3d.control.init_shape``)."""
    if init_shape is not None:
        overrides = [*overrides, f"control.init_shape={json.dumps(str(init_shape))}"]
    text, cfg, run_dir = plan_run(prompt, out, preset, prior, overrides, seed, device, name)
    ensure_writable_dir(Path(out))
    return run_planned(text, cfg, run_dir, restart=restart, progress=progress or silent, notice=notice,
                       prior_loader=prior_loader)


def run_planned(
    text: str, cfg: Config, run_dir: Path, restart: bool = False, progress: ProgressFn = silent,
    notice: Notice | None = None, prior_loader: PriorLoader | None = None,
) -> RunResult:
    """Run (or resume, or only re-list) the planned run; nothing it writes leaves ``run_dir``'s parent."""
    check_run_folder(run_dir)
    with confined(run_dir.parent):
        return run_confined(text, cfg, run_dir, restart, progress, notice or (lambda message: None),
                            prior_loader or load_first_prior)


def run_confined(
    text: str, cfg: Config, run_dir: Path, restart: bool, progress: ProgressFn, notice: Notice,
    prior_loader: PriorLoader,
) -> RunResult:
    from exporters.common import make_dirs, sweep_temp_files

    record_path = run_dir / "run.json"
    previous = read_record(record_path)
    config_dict = to_dict(cfg)
    if previous and not restart:
        if previous.get("prompt") != text or previous.get("config") != config_dict:
            raise ConfigError(
                f"{str(run_dir)!r} holds a run with another prompt or config; "
                "pass --restart to replace it or choose another --out."
            )
        listed = previous.get("files")
        if previous.get("status") == "done" and isinstance(listed, dict) and all(isinstance(v, str) for v in listed.values()):
            files = {k: run_dir / v for k, v in listed.items()}
            if all(p.is_file() for p in files.values()):
                notice(f"{str(run_dir)!r} is already finished: nothing was run (pass --restart to make it again).")
                return RunResult(run_dir, files, previous.get("metrics", {}), previous.get("timings", {}))
    made_by = run_identity(text, config_dict)
    if not restart and foreign_checkpoints(run_dir / "checkpoints", made_by):
        # run.json may be gone or damaged: the checkpoints themselves say what made them.
        raise ConfigError(made_by_message(run_dir / "checkpoints"))

    if not restart and (line := resume_notice(run_dir, {"coarse": cfg.coarse.steps, "fine": cfg.fine.steps})):
        notice(line)
    device = resolve_device(cfg.runtime.device)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    # The prior loads before anything is written: one that cannot load leaves no run folder behind.
    clock = time.perf_counter()
    prior = prior_loader(cfg, device)
    load_seconds = time.perf_counter() - clock
    make_dirs(run_dir)
    sweep_temp_files(run_dir)  # half-written files of a killed earlier run of this folder
    if restart:
        clear_checkpoints(run_dir)
    record: dict[str, Any] = {
        "prompt": text,
        "seed": cfg.runtime.seed,
        "prior": cfg.prior.id,
        "fine_prior": cfg.prior.fine_id or cfg.prior.id,
        "device": str(device),
        "status": "running",
        "config": config_dict,
        "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if source := cfg.control.edited_from():  # an edit names its source run (which it never writes to)
        record["edited_from"] = source
    atomic_write_text(record_path, json.dumps(record, indent=2))
    files, metrics, timings = run_stages(text, cfg, run_dir, device, prior, resume=not restart, progress=progress,
                                         made_by=made_by)
    timings["load_prior"] += load_seconds
    record.update(
        status="done",
        files={k: str(p.relative_to(run_dir)) for k, p in files.items()},
        metrics=metrics,
        timings=timings,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    atomic_write_text(record_path, json.dumps(record, indent=2))
    return RunResult(run_dir, files, metrics, timings)


def load_first_prior(cfg: Config, device: torch.device) -> Any:
    from magic3d.guidance import load_prior

    with out_of_memory_advice("load_prior", cfg):
        return load_prior(cfg.prior.id, cfg.prior, device, offload=cfg.runtime.offload)


def clear_checkpoints(run_dir: Path) -> None:
    ckpt = run_dir / "checkpoints"
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if p.is_file():
                p.unlink()


def versions() -> dict[str, str | None]:
    from magic3d.info import package_versions

    return package_versions()


def run_stages(
    text: str, cfg: Config, run_dir: Path, device: torch.device, prior: Any, resume: bool, progress: ProgressFn,
    made_by: str = "",
) -> tuple[dict[str, Path], dict[str, Any], dict[str, float]]:
    """Coarse NeRF -> fine mesh -> baked texture -> files, from the coarse ``prior`` already loaded;
    each stage resumes from its checkpoints."""
    from magic3d.bake import bake
    from magic3d.control.init_shape import stage_start
    from magic3d.export import write_outputs
    from magic3d.guidance import load_prior
    from magic3d.prompts import ViewPrompts
    from magic3d.stages.coarse import run_coarse
    from magic3d.stages.fine import extract_mesh, run_fine
    from magic3d.stages.losses import SDSLoss

    if cfg.control.texture_mesh or (cfg.control.edit_from and cfg.control.edit_keep == "geometry"):
        # The user's (or the source run's) mesh, kept as it is.
        from magic3d.control.texture_mesh import texture_stages

        return texture_stages(text, cfg, run_dir, device, prior, resume, progress, made_by)
    seed = cfg.runtime.seed
    timings: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    cache_dir = run_dir / "cache"

    offload = cfg.runtime.offload
    clock = time.perf_counter()
    with out_of_memory_advice("load_prior", cfg):
        prompts = ViewPrompts.build(text, prior, cfg.prior, cache_dir)
    timings["load_prior"] = time.perf_counter() - clock

    clock = time.perf_counter()
    start = stage_start(cfg, device)
    with out_of_memory_advice("coarse", cfg):
        coarse = run_coarse(
            SDSLoss(prior, prompts, cfg.coarse.sds), cfg.coarse, run_dir, device, seed, progress=progress,
            resume=resume, precision=cfg.runtime.precision, made_by=made_by, init=start.init,
            regulariser=start.coarse_loss,
        )
    timings["coarse"] = time.perf_counter() - clock
    metrics["coarse"] = coarse.metrics

    clock = time.perf_counter()
    if cfg.fine.steps > 0:
        fine_id = cfg.prior.fine_id or cfg.prior.id
        if fine_id != cfg.prior.id:
            del prior, prompts  # free the coarse model before the high-resolution one loads
            with out_of_memory_advice("load_prior", cfg, fine_id):
                prior = load_prior(fine_id, cfg.prior, device, offload=offload)
                prompts = ViewPrompts.build(text, prior, cfg.prior, cache_dir)
        loss = SDSLoss(prior, prompts, cfg.fine.sds)
        with out_of_memory_advice("fine", cfg):
            fine = run_fine(coarse.field, loss, start.fine or cfg.fine, run_dir, device, seed, progress=progress,
                            resume=resume, precision=cfg.runtime.precision, made_by=made_by)
    else:
        with out_of_memory_advice("fine", cfg):
            fine = extract_mesh(coarse.field, cfg.fine, device)
    timings["fine"] = time.perf_counter() - clock
    metrics["fine"] = fine.metrics
    metrics["faces"] = int(fine.faces.shape[0])

    clock = time.perf_counter()
    with out_of_memory_advice("bake", cfg):
        mesh = bake(fine.vertices, fine.faces, fine.color_fn, cfg.bake)
    metrics["surface"] = mesh.metadata.get("surface", {})
    timings["bake"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with out_of_memory_advice("export", cfg):
        files = write_outputs(mesh, run_dir, text, cfg)
    timings["export"] = time.perf_counter() - clock
    return files, metrics, timings


STAGE_NAMES = {"load_prior": "loading the prior", "coarse": "the coarse stage", "fine": "the fine stage",
               "bake": "texture baking", "export": "export"}


@contextlib.contextmanager
def out_of_memory_advice(stage: str, cfg: Config, prior_id: str | None = None) -> Iterator[None]:
    """Turn a CUDA out-of-memory error inside ``stage`` into a RunError naming the settings to lower."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise RunError(out_of_memory_message(stage, cfg, str(exc), prior_id)) from None


def out_of_memory_message(stage: str, cfg: Config, detail: str = "", prior_id: str | None = None) -> str:
    """One sentence: where memory ran out, how much was asked for, and the ``--set`` options that help."""
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", detail)
    where = STAGE_NAMES.get(stage, stage)
    knobs = memory_knobs(stage, cfg, prior_id)
    if knobs:
        advice = "use less memory with " + ", ".join(f"--set {k}" for k in knobs)
    else:
        advice = "every memory setting of this stage is at its smallest; use a GPU with more free memory"
    return (f"CUDA ran out of memory in {where}" + (f" (tried to allocate {asked.group(1)})" if asked else "")
            + f"; {advice} or --device cpu, then run the same command again to resume.")


def prior_family(prior_id: str, cfg: Config) -> str | None:
    """"sd" or "if" for a diffusers prior, without the network: its model_index.json when the
    folder or the hub cache has it, else the family its hub id names; None when unknown."""
    from dataclasses import replace

    from magic3d.guidance.hub import resolve_pipeline

    try:
        return resolve_pipeline(prior_id, replace(cfg.prior, local_files_only=True), check_only=True)[1]
    except Exception:  # advice only: fall back on the name
        name = prior_id.lower()
        return "if" if "/if-" in name else "sd" if "stable-diffusion" in name else None


def memory_knobs(stage: str, cfg: Config, prior_id: str | None = None) -> list[str]:
    """``key=value`` overrides that lower ``stage``'s peak GPU memory, from the current values,
    most effective first; settings already at their smallest are left out."""
    from magic3d.guidance import BUILTIN

    knobs: list[str] = []
    if stage in ("coarse", "fine"):
        section = getattr(cfg, stage)
        if section.batch_size > 1:
            knobs.append(f"{stage}.batch_size={max(1, section.batch_size // 2)}")
        if section.resolution // 2 >= 32:  # stays a multiple of 8 (config.validate's rule) when >= 32
            knobs.append(f"{stage}.resolution={section.resolution // 2 // 8 * 8}")
        if stage == "coarse" and cfg.coarse.samples_per_ray > 16:
            knobs.append(f"coarse.samples_per_ray={cfg.coarse.samples_per_ray // 2}")
        if stage == "fine" and cfg.fine.tet_resolution > 64:  # half the cells per side, and still even
            knobs.append(f"fine.tet_resolution={cfg.fine.tet_resolution // 4 * 2}")
    if stage in ("load_prior", "coarse", "fine"):
        in_use = prior_id or (cfg.prior.fine_id or cfg.prior.id if stage == "fine" else cfg.prior.id)
        # The built-in prior is a few MB: neither its precision nor offloading it matters.
        if in_use != BUILTIN:
            if cfg.prior.dtype == "float32":
                knobs.append("prior.dtype=float16")
            # Offload moves only Stable Diffusion's VAE decoder off the device, and only while
            # SDS runs: the text encoder is alone on the device while prompts load either way.
            if stage != "load_prior" and not cfg.runtime.offload and prior_family(in_use, cfg) == "sd":
                knobs.append("runtime.offload=true")
    if stage == "bake":
        if cfg.bake.query_chunk > 4096:
            knobs.append(f"bake.query_chunk={cfg.bake.query_chunk // 4}")
        if cfg.bake.texture_size > 512:
            knobs.append(f"bake.texture_size={cfg.bake.texture_size // 2}")
    if stage == "export" and cfg.export.preview:
        knobs.append("export.preview=false")
    return knobs
