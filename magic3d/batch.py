"""Many prompts to many assets: a manifest-driven queue run locally or on a Ray cluster.

Each job runs in its own process (a child here, a Ray worker there), so a prompt that raises,
produces NaNs, crashes its process or runs past ``--timeout`` is marked failed with its reason
while the others finish. Re-running the same command skips done jobs, retries failed ones and
resumes interrupted ones from their checkpoints; leases in the manifest keep two batch processes
on one folder from running the same job twice.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from magic3d.batch_input import RunDefaults, load_batch, load_callable
from magic3d.batch_report import Reporter
from magic3d.errors import InputError, Magic3DError, RunError
from magic3d.manifest import Job, Manifest, new_owner
from magic3d.progress import ProgressFn, silent
from magic3d.storage import ensure_writable_dir

# "module:function" run for each job instead of the real pipeline (tests, custom runners).
JOB_ENV = "MAGIC3D_BATCH_JOB"
DEFAULT_JOB = "magic3d.batch:run_job"


@dataclass
class BatchOptions:
    """Everything ``magic3d batch`` takes besides the prompt file."""

    out: Path = Path("outputs")
    preset: str | None = None
    prior: str | None = None
    overrides: tuple[str, ...] = ()
    seed: int | None = None
    device: str | None = None
    workers: int | None = None  # local: 1 (sequential); ray: as many as the cluster's resources allow
    backend: Literal["local", "ray"] = "local"
    address: str | None = None  # Ray: "auto", "HOST:PORT", or None to start/attach a local instance
    num_cpus: float = 1.0  # Ray resources per job
    num_gpus: float | None = None  # None: 1 when a GPU is asked for or the cluster has GPUs, else 0
    retries: int = 1
    timeout: float | None = None  # seconds per job attempt
    skip_invalid: bool = False
    lease_s: float = 60.0
    job_fn: str | None = None  # None: $MAGIC3D_BATCH_JOB or the pipeline

    def defaults(self) -> RunDefaults:
        return RunDefaults(Path(self.out), self.preset, self.prior, tuple(self.overrides), self.seed, self.device)

    def job_spec(self) -> str:
        return self.job_fn or os.environ.get(JOB_ENV) or DEFAULT_JOB


@dataclass
class BatchSummary:
    done: list[str]
    failed: dict[str, str]
    skipped_lines: list[tuple[int, str]]
    world: Path
    gallery: Path
    seconds: float
    ran: list[str] = field(default_factory=list)  # jobs this process ran to completion


@dataclass
class Outcome:
    """What a backend reports about a job: ``progress``, ``done``, ``failed`` or ``lost`` (worker died)."""

    job_id: str
    kind: Literal["progress", "done", "failed", "lost"]
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def job_payload(job: Job, options: BatchOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plain, picklable descriptions of a job and of the shared options, for another process."""
    d = asdict(options.defaults())
    d["out"] = str(d["out"])
    d["overrides"] = list(d["overrides"])
    return {"id": job.id, "prompt": job.prompt, "seed": job.seed, "preset": job.preset}, d


def run_job(job: dict[str, Any], options: dict[str, Any], progress: ProgressFn = silent) -> dict[str, Any]:
    """Run one job with the real pipeline in this process; resumes from the run folder's checkpoints."""
    from magic3d.pipeline import generate

    result = generate(
        job["prompt"], out=options["out"], preset=job.get("preset") or options.get("preset"),
        prior=options.get("prior"), overrides=list(options.get("overrides") or []),
        seed=job["seed"] if job.get("seed") is not None else options.get("seed"),
        device=options.get("device"), name=job["id"], progress=progress,
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


def describe(exc: BaseException) -> str:
    if isinstance(exc, Magic3DError):
        return " ".join(str(exc).split())
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def nan_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, float) and math.isnan(value):
        return [prefix or "value"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in nan_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in nan_paths(v, f"{prefix}[{i}]")]
    return []


def relative_outputs(files: dict[str, str], out: Path) -> dict[str, str]:
    root = out.resolve()
    rel = {}
    for key, path in files.items():
        p = Path(path).resolve()
        rel[key] = str(p.relative_to(root)) if p.is_relative_to(root) else str(p)
    return rel


def usd_output(outputs: dict[str, str], out: Path) -> Path | None:
    for key in ("usdc", "usd", "usda", "usdz"):
        if key in outputs and (out / outputs[key]).is_file():
            return out / outputs[key]
    return None


def read_bounds(outputs: dict[str, str], out: Path) -> dict[str, Any] | None:
    path = usd_output(outputs, out)
    if path is None:
        return None
    from exporters.scene import asset_bounds

    try:
        return asset_bounds(path)
    except Exception:  # an asset without geometry still counts as done; it just has no place in the world
        return None


def effective_seed(job: Job, out: Path) -> int | None:
    """The seed the run used: the job's own, else the one its run.json records (the config default)."""
    if job.seed is not None:
        return job.seed
    try:
        seed = json.loads((out / job.id / "run.json").read_text(encoding="utf-8")).get("seed")
    except (OSError, ValueError):
        return None
    return seed if isinstance(seed, int) else None


def make_backend(options: BatchOptions) -> Any:
    if options.backend == "local":
        from magic3d.batch_local import LocalBackend

        return LocalBackend(options)
    if options.backend == "ray":
        from magic3d.batch_ray import RayBackend

        return RayBackend(options)
    raise InputError(f"--backend must be 'local' or 'ray', not {options.backend!r}.")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the batch like Ctrl-C: children stopped, jobs handed back for the next run."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_batch(path: str | Path, options: BatchOptions, reporter: Reporter | None = None) -> BatchSummary:
    """Run every prompt of ``path`` into ``options.out``; returns what is done and what failed."""
    from magic3d.gallery import publish

    reporter = reporter or Reporter(quiet=True)
    if options.workers is not None and options.workers < 1:
        raise InputError("--workers must be at least 1.")
    if options.retries < 0:
        raise InputError("--retries must be 0 or more.")
    if options.timeout is not None and options.timeout <= 0:
        raise InputError("--timeout must be a positive number of seconds.")
    out = Path(options.out)
    parsed = load_batch(path, options.defaults(), options.skip_invalid)
    ensure_writable_dir(out)
    for line, reason in parsed.problems:
        reporter.emit("invalid_line", line=line, error=reason)
    ids = [item.slug for item in parsed.items]
    clock = time.monotonic()
    owner = new_owner()
    ran: list[str] = []
    with Manifest(out) as manifest, _sigterm_as_interrupt():
        manifest.sync(parsed.items)
        manifest.reset_failed(ids)
        counts = manifest.counts(ids)
        backend = make_backend(options)
        reporter.emit(
            "batch_start", out=str(out), jobs=len(ids), done=counts["done"], todo=len(ids) - counts["done"],
            backend=options.backend, workers=backend.capacity,
        )
        running: dict[str, Job] = {}
        beat = time.monotonic()
        try:
            while True:
                while len(running) < backend.capacity:
                    job = manifest.claim(owner, ids, options.lease_s)
                    if job is None:
                        break
                    running[job.id] = job
                    slot = backend.start(job, *job_payload(job, options))
                    reporter.emit("job_start", job=job.id, prompt=job.prompt, attempt=job.attempts, worker=slot)
                if not running:
                    if manifest.held_elsewhere(ids, owner) == 0:
                        break
                    time.sleep(0.5)  # another batch process holds the rest: wait for it, then publish
                    continue
                outcomes = backend.wait(0.5)
                if options.timeout:
                    now = time.time()
                    for job_id, job in running.items():
                        if now - (job.started or now) > options.timeout:
                            outcomes.append(backend.cancel(job_id, f"timed out after {options.timeout:g} s"))
                for o in outcomes:
                    if o.kind == "progress":
                        reporter.emit("job_progress", job=o.job_id, **o.result)
                        continue
                    job = running.pop(o.job_id, None)
                    if job is None:
                        continue
                    if o.kind == "done":
                        outputs = relative_outputs(o.result.get("files", {}), out)
                        bounds = read_bounds(outputs, out)
                        metrics = {**o.result.get("metrics", {}), "seed": effective_seed(job, out)}
                        if manifest.mark_done(job.id, owner, outputs, metrics, bounds):
                            ran.append(job.id)
                            reporter.emit("job_done", job=job.id, seconds=round(time.time() - (job.started or 0), 3),
                                          files=outputs)
                        publish(out, manifest, reporter)
                    else:
                        state = manifest.mark_failed(job.id, owner, o.error, options.retries, lost=o.kind == "lost")
                        reporter.emit("job_failed", job=job.id, error=o.error, retry=state == "pending",
                                      lost=o.kind == "lost")
                if time.monotonic() - beat > options.lease_s / 4:
                    manifest.heartbeat(owner, options.lease_s)
                    beat = time.monotonic()
        finally:
            for job_id in list(running):
                backend.cancel(job_id, "interrupted")
                manifest.release(job_id, owner)
            backend.close()
        jobs = manifest.jobs(ids)
        world, gallery = publish(out, manifest, reporter)
    summary = BatchSummary(
        done=[j.id for j in jobs if j.state == "done"],
        failed={j.id: j.error or "failed" for j in jobs if j.state == "failed"},
        skipped_lines=parsed.problems, world=world, gallery=gallery, seconds=time.monotonic() - clock, ran=ran,
    )
    reporter.emit("batch_end", done=len(summary.done), failed=len(summary.failed), seconds=round(summary.seconds, 3),
                  world=str(world), gallery=str(gallery))
    return summary
