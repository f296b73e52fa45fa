"""``magic3d amortize``: plan (torch-free checks), then train one conditioned field on a prompt set.

The model folder holds ``model.json`` (the prior, the prompt set, the preset and overrides it
was trained with, its status), ``prompts.safetensors`` (each prompt's pooled conditioning),
the loop's checkpoints and the prompts' embedding cache. Run again, the same command resumes
from the newest checkpoint; a folder trained with another prior, prompt set or config is
refused before any work.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic3d.amortize.config import AmortizedConfig, load_amortized_config
from magic3d.errors import ConfigError, InputError
from magic3d.progress import Notice, ProgressFn, silent

RECORD = "model.json"
CONDITIONING = "prompts.safetensors"
STAGE = "amortize"
TEXTURE_STAGE = "amortize-texture"  # magic3d.amortize.texture


@dataclass
class TrainPlan:
    texts: list[str]
    cfg: AmortizedConfig
    model_dir: Path
    preset: str | None
    overrides: list[str]


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def run_overrides(prior: str | None, seed: int | None, device: str | None, overrides: tuple[str, ...] | list[str]) -> list[str]:
    extra = [f"prior.id={json.dumps(prior)}"] if prior is not None else []
    extra += list(overrides)
    if seed is not None:
        extra.append(f"runtime.seed={int(seed)}")
    if device is not None:
        extra.append(f"runtime.device={json.dumps(device)}")
    return extra


def read_prompt_set(path: str | Path, prior_id: str) -> list[str]:
    """The prompts of a text or JSONL file as ``batch`` reads it, each checked against the prior, once each."""
    from magic3d.batch.input import RunDefaults, load_batch
    from magic3d.guidance import validate_prompt_for_prior

    def check(prompt: str, **_: Any) -> None:
        validate_prompt_for_prior(prompt, prior_id)

    parsed = load_batch(path, RunDefaults(prior=prior_id), plan=check)
    return list(dict.fromkeys(item.prompt for item in parsed.items))


def read_model_record(model_dir: Path) -> dict | None:
    from magic3d.storage import read_record

    return read_record(Path(model_dir) / RECORD)


def check_same_prior(record: dict, prior_id: str, model_dir: Path) -> None:
    if record.get("prior") != prior_id:
        raise ConfigError(f"{str(model_dir)!r} holds a model trained with prior {record.get('prior')!r}, not "
                          f"{prior_id!r}; use --prior {record.get('prior')} or another --out.")


def plan_training(
    prompts_file: str | Path, out: str | Path, prior: str | None = None, preset: str | None = None,
    overrides: tuple[str, ...] | list[str] = (), seed: int | None = None, device: str | None = None,
    restart: bool = False,
) -> TrainPlan:
    """Everything checked before any work (no torch): config, prior, prompt file, model folder."""
    from magic3d.guidance import check_prior_available
    from magic3d.storage import check_run_folder

    if not str(out).strip():
        raise InputError("--out is empty; give the model folder to write, e.g. --out models/shapes.")
    extra = run_overrides(prior, seed, device, overrides)
    cfg = load_amortized_config(preset, extra)
    prior_id = cfg.run.prior.id
    check_prior_available(prior_id, cfg.run.prior)
    texts = read_prompt_set(prompts_file, prior_id)
    model_dir = Path(out)
    check_run_folder(model_dir)
    record = read_model_record(model_dir)
    if record and not restart:
        check_same_prior(record, prior_id, model_dir)
        texture = record.get("texture_identity")
        if record.get("prompts") != texts or record.get("identity") != cfg.identity() or \
                texture not in (None, cfg.texture_identity()):
            raise ConfigError(f"{str(model_dir)!r} holds a model of another prompt set or config; pass --restart "
                              "to replace it or choose another --out.")
    if cfg.run.runtime.device.startswith("cuda"):
        from magic3d.plan import resolve_device

        resolve_device(cfg.run.runtime.device)
    return TrainPlan(texts, cfg, model_dir, preset, extra)


def train(
    prompts_file: str | Path, out: str | Path, prior: str | None = None, preset: str | None = None,
    overrides: tuple[str, ...] | list[str] = (), seed: int | None = None, device: str | None = None,
    restart: bool = False, progress: ProgressFn = silent, notice: Notice | None = None,
) -> TrainResult:
    """Train (or resume) the amortized model of every prompt in ``prompts_file`` into ``out``."""
    plan = plan_training(prompts_file, out, prior, preset, overrides, seed, device, restart)
    return run_training(plan, restart, progress, notice or (lambda message: None))


def run_training(plan: TrainPlan, restart: bool, progress: ProgressFn, notice: Notice) -> TrainResult:
    import torch

    from magic3d.amortize.model import AmortizedModel, PromptSet
    from magic3d.amortize.texture import TextureStageModel
    from magic3d.checkpoint import foreign_checkpoints, made_by_message, resume_notice, run_identity
    from magic3d.pipeline import clear_checkpoints, load_first_prior, versions
    from magic3d.plan import resolve_device
    from magic3d.stages.loop import LoopSpec, autocast_dtype, run_loop
    from magic3d.storage import (
        atomic_write_tensors,
        atomic_write_text,
        confined,
        ensure_writable_dir,
    )

    cfg, model_dir = plan.cfg, plan.model_dir
    config = cfg.to_dict()
    made_by = run_identity("\n".join(plan.texts), cfg.identity())
    texture_made_by = run_identity("\n".join(plan.texts), cfg.texture_identity())
    if not restart and (foreign_checkpoints(model_dir / "checkpoints", made_by, STAGE)
                        or foreign_checkpoints(model_dir / "checkpoints", texture_made_by, TEXTURE_STAGE)):
        raise ConfigError(made_by_message(model_dir / "checkpoints"))
    runtime = cfg.run.runtime
    device = resolve_device(runtime.device)
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    prior = load_first_prior(cfg.run, device)  # before anything is written: a prior that fails leaves no folder
    ensure_writable_dir(model_dir.parent if str(model_dir.parent) else Path("."))
    clock = time.perf_counter()
    with confined(model_dir.parent):
        ensure_writable_dir(model_dir)
        if restart:
            clear_checkpoints(model_dir)
        record: dict[str, Any] = {
            "prior": cfg.run.prior.id, "prompts": plan.texts, "preset": plan.preset, "overrides": plan.overrides,
            "identity": cfg.identity(), "config": config, "seed": runtime.seed, "device": str(device), "status": "training",
            "versions": versions(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(model_dir / RECORD, json.dumps(record, indent=2))
        prompts = PromptSet.build(plan.texts, prior, cfg, model_dir / "cache")
        atomic_write_tensors(model_dir / CONDITIONING, {"cond": prompts.conditioning})
        with torch.random.fork_rng(devices=[]):  # the grid's initial values, the caller's RNG untouched
            torch.manual_seed(runtime.seed)
            model = AmortizedModel(cfg, prior, prompts, device, runtime.seed)
        steps, texture = cfg.amortize.steps, cfg.amortize.texture
        autocast = autocast_dtype(runtime.precision, device)
        spec = LoopSpec(STAGE, steps, cfg.amortize.checkpoint_every, steps, device_type=device.type,
                        autocast=autocast, made_by=made_by)
        if not restart and (line := resume_notice(model_dir, {STAGE: steps, TEXTURE_STAGE: texture.steps})):
            notice(line)
        result = run_loop(model, spec, model_dir, torch.Generator().manual_seed(runtime.seed), progress, not restart)
        record.update(steps=result.steps, metrics=result.metrics)
        if texture.steps > 0:
            stage = TextureStageModel(cfg, prior, model, device)
            stage.extract_meshes()  # from the finished coarse model, as generation will
            record.update(texture_identity=cfg.texture_identity())
            atomic_write_text(model_dir / RECORD, json.dumps(record, indent=2))
            spec = LoopSpec(TEXTURE_STAGE, texture.steps, texture.checkpoint_every, texture.steps,
                            device_type=device.type, autocast=autocast, made_by=texture_made_by)
            done = run_loop(stage, spec, model_dir, torch.Generator().manual_seed(runtime.seed + 1), progress,
                            not restart)
            record.update(texture_steps=done.steps, texture_metrics=done.metrics)
        record.update(status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        atomic_write_text(model_dir / RECORD, json.dumps(record, indent=2))
    return TrainResult(model_dir, result.steps, result.metrics, time.perf_counter() - clock)
