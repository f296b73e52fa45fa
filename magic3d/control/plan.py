"""Planning ``magic3d texture`` and ``magic3d edit`` (and their Python API): every check before any
work, no torch. A planned run is an ordinary run (``pipeline.run_planned``: run.json, checkpoints,
resume, one error line) whose ``control`` section says where it starts from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from magic3d.errors import InputError

KEEPS = ("geometry", "none")
EDIT_STEPS = 200  # coarse steps of an edit: an edit, not a restart (the builtin preset makes a run in 400)
EDIT_LR_SCALE = 0.3  # of the source's coarse learning rates


def finished_run(run_dir: str | Path) -> dict:
    """The record of a finished run folder with its coarse checkpoint and baked mesh, or one line."""
    from magic3d.export import BAKED_MESH
    from magic3d.storage import check_run_folder, path_kind, read_record

    run_dir = Path(run_dir)
    if path_kind(run_dir) != "a folder":
        raise InputError(f"The run folder {str(run_dir)!r} is {path_kind(run_dir)}; give a finished run's folder.")
    check_run_folder(run_dir)
    record = read_record(run_dir / "run.json")
    if record is None:
        raise InputError(f"{str(run_dir)!r} is not a magic3d run folder (no readable run.json).")
    coarse = sorted((run_dir / "checkpoints").glob("coarse-*.safetensors"))
    if record.get("status") != "done" or not (run_dir / BAKED_MESH).is_file() or not coarse:
        raise InputError(f"The run in {str(run_dir)!r} has not finished (or has no coarse checkpoint); "
                         "run `magic3d generate` on it again first.")
    if not isinstance(record.get("config"), dict) or not isinstance(record.get("prompt"), str):
        raise InputError(f"{str(run_dir / 'run.json')!r} is damaged (no prompt or config); make the run again.")
    return record


def plan_texture(
    mesh_file: str | Path, prompt: str, out: str | Path = "outputs", preset: str | None = None,
    prior: str | None = None, overrides: list[str] | tuple[str, ...] = (), seed: int | None = None,
    device: str | None = None, size_m: float | None = None, name: str | None = None,
) -> tuple[str, Any, Path]:
    """(prompt, config, run folder ``out/<name>``, by default ``out/<file stem>-<prompt slug>``) of
    texturing ``mesh_file``."""
    import numpy as np

    from magic3d.control.user_mesh import read_user_mesh
    from magic3d.naming import clean_prompt, slugify
    from magic3d.plan import plan_run

    mesh = read_user_mesh(mesh_file, "mesh to texture")
    own_size = float(np.ptp(np.asarray(mesh.vertices), axis=0).max())
    extra = [f"control.texture_mesh={json.dumps(str(mesh_file))}",
             f"export.size_m={json.dumps(float(size_m) if size_m is not None else own_size)}", *overrides]
    name = name or slugify(f"{Path(mesh_file).stem} {clean_prompt(prompt)}")
    return plan_run(prompt, out, preset, prior, extra, seed, device, name)


def plan_edit(
    run_dir: str | Path, prompt: str, out: str | Path = "outputs", keep: str = "none", steps: int = EDIT_STEPS,
    lr_scale: float = EDIT_LR_SCALE, overrides: list[str] | tuple[str, ...] = (), seed: int | None = None,
    device: str | None = None, name: str | None = None,
) -> tuple[str, Any, Path]:
    """(prompt, config, run folder ``out/<name>``, by default ``out/<prompt slug>``) of editing the
    finished run in ``run_dir`` with ``prompt``.

    The config is the source run's (from its run.json), with the coarse stage cut to ``steps`` at
    ``lr_scale`` times its learning rate, then the ``--set`` overrides."""
    import math

    import yaml

    from magic3d.config import Config, apply_mapping, set_value, validate
    from magic3d.errors import ConfigError
    from magic3d.guidance import check_prior_available, validate_prompt_for_prior
    from magic3d.naming import clean_prompt, slugify
    from magic3d.storage import check_run_folder

    if keep not in KEEPS:
        raise InputError(f"--keep must be one of {', '.join(KEEPS)}, not {keep!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 1_000_000:
        raise InputError(f"--steps must be a whole number from 0 to 1000000, not {steps!r}.")
    if isinstance(lr_scale, bool) or not isinstance(lr_scale, int | float) or not math.isfinite(lr_scale) \
            or not 0 < lr_scale <= 1:
        raise InputError(f"--lr-scale must lie in (0, 1], not {lr_scale!r}.")
    if not str(out).strip():
        raise InputError("--out is empty; give the folder to write into, e.g. --out outputs.")
    source = Path(run_dir)
    record = finished_run(source)
    text = clean_prompt(prompt)
    edited = Config()
    try:
        apply_mapping(edited, {k: v for k, v in record["config"].items() if k != "control"})
    except ConfigError as exc:
        raise InputError(f"{str(source / 'run.json')!r} holds a config this magic3d cannot read ({exc}).") from None
    extra = [f"coarse.steps={steps}", f"coarse.lr={edited.coarse.lr * lr_scale!r}",
             f"control.edit_from={json.dumps(str(source))}", f"control.edit_keep={keep}",
             f"control.edit_prompt={json.dumps(record['prompt'])}",
             f"control.edit_seed={int(record.get('seed') or 0)}", *overrides]
    if seed is not None:
        extra.append(f"runtime.seed={int(seed)}")
    if device is not None:
        extra.append(f"runtime.device={json.dumps(device)}")
    for item in extra:  # on the source's tree, not a preset's: what load_config does with --set
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item[:60]!r} is not of the form key=value (e.g. coarse.steps=100).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"Override {item[:60]!r} is not a value YAML can read ({type(exc).__name__}).") from None
        set_value(edited, key.strip(), value)
    validate(edited)
    for model in dict.fromkeys((edited.prior.id, edited.prior.fine_id or edited.prior.id)):
        check_prior_available(model, edited.prior)
        validate_prompt_for_prior(text, model)
    target = Path(out) / (name or slugify(text))
    if target.resolve() == source.resolve():
        raise InputError(f"The edit would overwrite its source run {str(source)!r}; choose another --out.")
    check_run_folder(target)
    return text, edited, target


def texture(mesh_file: str | Path, prompt: str, out: str | Path = "outputs", restart: bool = False,
            progress: Any = None, **options: Any):
    """Texture the user's mesh with ``prompt``; returns ``pipeline.RunResult`` (see ``plan_texture``)."""
    planned = plan_texture(mesh_file, prompt, out, **options)
    return _run(planned, out, restart, progress)


def edit(run_dir: str | Path, prompt: str, out: str | Path = "outputs", restart: bool = False,
         progress: Any = None, **options: Any):
    """Edit a finished run with ``prompt``; returns ``pipeline.RunResult`` (see ``plan_edit``)."""
    planned = plan_edit(run_dir, prompt, out, **options)
    return _run(planned, out, restart, progress)


def _run(planned: tuple[str, Any, Path], out: str | Path, restart: bool, progress: Any):
    from magic3d.pipeline import run_planned
    from magic3d.progress import silent
    from magic3d.storage import ensure_writable_dir

    ensure_writable_dir(Path(out))
    return run_planned(*planned, restart=restart, progress=progress or silent)
