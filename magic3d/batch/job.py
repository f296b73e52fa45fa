"""One batch job, as every backend runs it: the job function (the real pipeline, or a hook named
in $MAGIC3D_BATCH_JOB), its outcome, and the rules every backend applies to a result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from magic3d.batch.input import load_callable
from magic3d.errors import Magic3DError, RunError
from magic3d.progress import ProgressFn, silent

JOB_ENV = "MAGIC3D_BATCH_JOB"
DEFAULT_JOB = "magic3d.batch.job:run_job"


@dataclass
class Outcome:
    """What a backend reports about a job: ``progress``, ``done``, ``failed`` or ``lost`` (worker died)."""

    job_id: str
    kind: Literal["progress", "done", "failed", "lost"]
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_job(job: dict[str, Any], options: dict[str, Any], progress: ProgressFn = silent) -> dict[str, Any]:
    """Run one job with the real pipeline in this process; resumes from the run folder's checkpoints."""
    from magic3d.pipeline import generate

    result = generate(
        job["prompt"], out=options["out"], preset=job.get("preset") or options.get("preset"),
        prior=options.get("prior"), overrides=list(options.get("overrides") or []),
        seed=job["seed"] if job.get("seed") is not None else options.get("seed"),
        device=options.get("device"), restart=bool(job.get("restart")), name=job["id"], progress=progress,
    )
    return {
        "run_dir": str(result.run_dir),
        "files": {k: str(p) for k, p in result.files.items()},
        "metrics": result.metrics,
    }


def execute(spec: str, job: dict[str, Any], options: dict[str, Any], progress: ProgressFn) -> dict[str, Any]:
    """Call the job function and refuse a result with NaN metrics: the same rules in every backend."""
    result = load_callable(spec)(job, options, progress)
    bad = nan_paths(result.get("metrics", {}))
    if bad:
        raise RunError(f"the run produced NaN values ({', '.join(bad[:3])}); try another seed or a lower learning rate.")
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


