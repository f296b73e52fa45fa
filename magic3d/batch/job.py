"""One batch job, as every backend runs it: the job function (the real pipeline, or a hook named
in $MAGIC3D_BATCH_JOB), its outcome, the rules every backend applies to a result, and the prior a
worker process keeps loaded from one job to the next."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from magic3d.batch.input import load_callable
from magic3d.errors import Magic3DError, RunError
from magic3d.progress import ProgressFn, silent

JOB_ENV = "MAGIC3D_BATCH_JOB"
DEFAULT_JOB = "magic3d.batch.job:run_job"
LOG_EVERY = 0.1  # a progress line per tenth of each stage


def log_path(out: str | Path, job_id: str) -> Path:
    """Where a job's own account goes: ``<out>/<slug>/batch.log`` (appended to on every attempt)."""
    return Path(out) / job_id / "batch.log"


def open_log(path: Path) -> int | None:
    """An append-only descriptor on the job's log, never through a link (a run folder or log
    planted as one after the batch checked: the job's own check then reports it); None if refused."""
    try:
        if path.parent.is_symlink():
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:
        return None


class JobLog:
    """Lines for the job's log: what it resumed from, its progress, timings, its error. Each line
    is one append, so the lines of a local job's own stderr (warnings, tracebacks) interleave whole."""

    def __init__(self, out: str | Path, job_id: str) -> None:
        self.path = log_path(out, job_id)

    def line(self, text: str) -> None:
        fd = open_log(self.path)
        if fd is None:
            return
        try:
            os.write(fd, f"{time.strftime('%H:%M:%S')} {' '.join(str(text).split())}\n".encode("utf-8", "replace"))
        finally:
            os.close(fd)

    def progress(self, forward: ProgressFn) -> ProgressFn:
        """``forward`` that also logs a line each tenth of a stage (and its last step)."""
        marks: dict[str, int] = {}

        def update(stage: str, step: int, total: int, loss: float) -> None:
            forward(stage, step, total, loss)
            mark = int(step / max(total, 1) / LOG_EVERY)
            if step >= total or mark > marks.get(stage, 0):
                marks[stage] = mark
                self.line(f"{stage} {step}/{total} loss {loss:.4g}")

        return update


@dataclass
class Outcome:
    """What a backend reports about a job: ``progress``, ``done``, ``failed`` or ``lost`` (worker died)."""

    job_id: str
    kind: Literal["progress", "done", "failed", "lost"]
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class PriorCache:
    """The prior a worker process keeps between its jobs (a local worker or a Ray actor runs many).

    One at a time: a batch whose jobs switch priors holds one model in memory, not each of them.
    The pipeline only reads a prior (frozen weights, no per-run state beyond the per-prompt
    embeddings it builds in each run folder), so one prior serves job after job."""

    def __init__(self) -> None:
        self.key: Hashable = None
        self.value: Any = None

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if self.value is None or key != self.key:
            self.clear()  # the old model goes before the new one loads
            self.value, self.key = load(), key
        return self.value

    def clear(self) -> None:
        self.key = self.value = None


PRIORS = PriorCache()  # this process's: a worker's jobs share it
MODELS = PriorCache()  # the same for the --from amortized model (its weights and conditioning table)


def warm_prior(cfg: Any, device: Any) -> Any:
    """``load_first_prior`` through this process's cache: the pipeline's ``prior_loader`` in a batch."""
    from magic3d.pipeline import load_first_prior

    fine_id = cfg.prior.fine_id or cfg.prior.id
    if cfg.fine.steps > 0 and fine_id != cfg.prior.id:
        # The run drops the coarse prior before the fine one loads; a cached one would stay in memory.
        PRIORS.clear()
        return load_first_prior(cfg, device)
    key = (json.dumps(asdict(cfg.prior), sort_keys=True, default=str), str(device), cfg.runtime.offload)
    return PRIORS.get(key, lambda: load_first_prior(cfg, device))


def warm_model(plan: Any, device: Any) -> Any:
    """``load_conditioned`` through this process's cache: a --from batch's worker loads its model once.
    Generation only reads it (the field is bound per prompt, a refinement copies it)."""
    from magic3d.amortize.generate import load_conditioned
    from magic3d.amortize.train import RECORD

    record = plan.model_dir / RECORD
    stamp = record.stat().st_mtime_ns if record.is_file() else None  # a model retrained since is reloaded
    key = (str(plan.model_dir.resolve()), stamp, json.dumps(plan.cfg.to_dict(), sort_keys=True, default=str),
           str(device))
    return MODELS.get(key, lambda: load_conditioned(plan, device))


def run_job(job: dict[str, Any], options: dict[str, Any], progress: ProgressFn = silent) -> dict[str, Any]:
    """Run one job with the real pipeline in this process; resumes from the run folder's checkpoints.
    The job is planned by its single command's planner (``sources.plan_line``: generate, edit,
    texture, ``generate --init-shape`` or ``generate --from``); the prior (and the --from model)
    stays loaded for the process's next job (``PRIORS``, ``MODELS``)."""
    from magic3d.batch.planners import plan_line
    from magic3d.batch.sources import FROM_MODEL, JobSource

    source = JobSource(**job["source"]) if job.get("source") else None
    planned = plan_line(job["prompt"], source, job["id"], options, job.get("seed"), job.get("preset"))
    if source is not None and source.kind == FROM_MODEL:
        from magic3d.amortize.generate import run_from

        result = run_from(*planned, 0, progress, model_loader=warm_model,
                          prior_loader=lambda plan, device: warm_prior(plan.cfg.run, device))
    else:
        from magic3d.pipeline import run_planned

        result = run_planned(*planned, restart=bool(job.get("restart")), progress=progress,
                             notice=JobLog(options["out"], job["id"]).line, prior_loader=warm_prior)
    return {
        "run_dir": str(result.run_dir),
        "files": {k: str(p) for k, p in result.files.items()},
        "metrics": result.metrics,
        "timings": result.timings,
    }


def execute(spec: str, job: dict[str, Any], options: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Call the job function and refuse a result with NaN metrics: the same rules in every backend."""
    log = JobLog(options["out"], job["id"])
    log.line(f"start: {job['prompt']!r}" + (" (restart)" if job.get("restart") else ""))
    try:
        result = load_callable(spec)(job, options, log.progress(progress))
        bad = nan_paths(result.get("metrics", {}))
        if bad:
            raise RunError(f"the run produced NaN values ({', '.join(bad[:3])}); try another seed or a lower learning rate.")
    except BaseException as exc:
        log.line(f"failed: {describe(exc)}")
        raise
    timings = result.get("timings") or {}
    if timings:
        log.line("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if isinstance(v, int | float)))
    log.line(f"done: {', '.join(sorted(result.get('files', {})))}")
    return result


MAX_ERROR_CHARS = 1000  # a job's error as the manifest, the gallery and the summary keep it


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if not isinstance(exc, Magic3DError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def nan_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, float) and math.isnan(value):
        return [prefix or "value"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nan_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in nan_paths(v, f"{prefix}[{i}]")]
    return []


