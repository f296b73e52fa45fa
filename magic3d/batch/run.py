"""Many prompts to many assets: a manifest-driven queue run locally or on a Ray cluster.

Jobs run in worker processes (local ones here, Ray actors there) that keep the prior loaded from
one job to the next; a prompt that raises or produces NaNs is marked failed with its reason and
its worker goes on, one that crashes its process or runs past ``--timeout`` takes its worker
down and is marked (and retried) while a new worker runs the rest. Re-running the same command skips done jobs, retries failed ones and
resumes interrupted ones from their checkpoints; leases in the manifest keep two batch processes
on one folder from running the same job twice. ``--restart`` (every job) and ``--restart-job NAME``
(one run folder) start jobs over, ignoring their checkpoints, as ``generate --restart`` does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from magic3d.batch.input import (
    SEED_MAX,
    SEED_MIN,
    ParsedFile,
    RunDefaults,
    load_batch,
    shown,
)
from magic3d.batch.job import DEFAULT_JOB, JOB_ENV, JobLog
from magic3d.batch.manifest import Job, Manifest, new_owner, refuse_link
from magic3d.batch.report import Reporter
from magic3d.errors import InputError
from magic3d.storage import check_run_folder, ensure_writable_dir

# "module:function" run for each job instead of the real pipeline (tests, custom runners).


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
    restart: bool = False  # start every job over, ignoring its checkpoints (done jobs too)
    restart_jobs: tuple[str, ...] = ()  # the run-folder names of the jobs to start over
    lease_s: float = 60.0
    jobs_per_worker: int | None = None  # a worker is replaced after this many jobs; None: never; 1: a process per job
    job_fn: str | None = None  # None: $MAGIC3D_BATCH_JOB or the pipeline

    def defaults(self) -> RunDefaults:
        return RunDefaults(Path(self.out), self.preset, self.prior, tuple(self.overrides), self.seed, self.device)

    def job_spec(self) -> str:
        return self.job_fn or os.environ.get(JOB_ENV) or DEFAULT_JOB


@dataclass(frozen=True)
class Limit:
    """The range a numeric option must lie in; ``above`` makes ``lo`` itself refused (positive)."""

    flag: str
    lo: int
    hi: int
    above: bool = False
    integer: bool = False
    unit: str = ""


# Every number ``magic3d batch`` takes, checked by ``check_options`` before anything is read or
# written. The upper bounds catch typos (a 10**9 --workers, a --retries that never ends).
LIMITS: dict[str, Limit] = {
    "workers": Limit("--workers", 1, 1024, integer=True),
    "retries": Limit("--retries", 0, 100, integer=True),
    "timeout": Limit("--timeout", 0, 30 * 24 * 3600, above=True, unit=" of seconds"),
    "num_cpus": Limit("--num-cpus", 0, 4096, above=True),
    "num_gpus": Limit("--num-gpus", 0, 1024),
    "seed": Limit("--seed", SEED_MIN, SEED_MAX, integer=True),
    "lease_s": Limit("lease_s", 1, 24 * 3600),
    "jobs_per_worker": Limit("jobs_per_worker", 1, 10**9, integer=True),
}


def check_options(options: BatchOptions) -> None:
    """One ``InputError`` for the first numeric option that is not a finite number in its range."""
    for attr, limit in LIMITS.items():
        value = getattr(options, attr)
        if value is None:
            continue
        kind = "a whole number" if limit.integer else "a finite number"
        span = f"more than {limit.lo} and at most {limit.hi}" if limit.above else f"from {limit.lo} to {limit.hi}"
        number = isinstance(value, int) or (isinstance(value, float) and not limit.integer and math.isfinite(value))
        # An int is compared as an int: a huge one must not overflow a float conversion.
        if isinstance(value, bool) or not number or not (
            (limit.lo < value if limit.above else limit.lo <= value) and value <= limit.hi
        ):
            raise InputError(f"{limit.flag} must be {kind}{limit.unit} {span}, not {shown(value, 40)}.")


def restart_ids(options: BatchOptions, parsed: ParsedFile) -> set[str]:
    """The jobs to start over: all with ``--restart``, else those named by ``--restart-job``."""
    ids = [item.slug for item in parsed.items]
    if options.restart:
        return set(ids)
    unknown = [name for name in options.restart_jobs if name not in set(ids)]
    if unknown:
        example = f", e.g. {ids[0]!r}" if ids else ""
        raise InputError(
            f"--restart-job {shown(unknown[0], 70)} names no job of this batch; give the name of a job's "
            f"run folder under --out{example}."
        )
    return set(options.restart_jobs)


# Advice from the pipeline names generate's --restart; in a batch the way out is per job.
_RESTART = re.compile(r"--restart\b(?!-)")


def batch_advice(error: str, job_id: str) -> str:
    """A job's error with its advice in batch terms: ``--restart`` becomes ``--restart-job NAME``."""
    return _RESTART.sub(f"--restart-job {job_id}", error)


@dataclass
class BatchSummary:
    done: list[str]
    failed: dict[str, str]
    skipped_lines: list[tuple[int, str]]
    world: Path
    gallery: Path
    seconds: float
    ran: list[str] = field(default_factory=list)  # jobs this process ran to completion


def job_payload(job: Job, options: BatchOptions, restart: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Plain, picklable descriptions of a job and of the shared options, for another process.

    ``restart``: the job function starts the run over, ignoring its checkpoints and run.json.
    """
    d = asdict(options.defaults())
    d["out"] = str(d["out"])
    d["overrides"] = list(d["overrides"])
    return {"id": job.id, "prompt": job.prompt, "seed": job.seed, "preset": job.preset, "restart": restart}, d


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
        from magic3d.batch.local_backend import LocalBackend

        return LocalBackend(options)
    if options.backend == "ray":
        from magic3d.batch.ray_backend import RayBackend

        return RayBackend(options)
    raise InputError(f"--backend must be 'local' or 'ray', not {options.backend!r}.")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[Callable[[], None]]:
    """SIGTERM ends the batch like Ctrl-C: children stopped, jobs handed back for the next run.

    Yields a check for the run loop: a library that catches BaseException (trimesh's optional
    imports do, and the batch process first imports it mid-run) swallows the KeyboardInterrupt
    either signal raises, so the loop raises it again from the record the handler keeps.
    """
    asked: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        asked.append(signum)
        raise KeyboardInterrupt

    def check() -> None:
        if asked:
            raise KeyboardInterrupt

    try:
        previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt)}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, interrupt)
    except ValueError:  # not the main thread
        yield check
        return
    try:
        yield check
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_batch(path: str | Path, options: BatchOptions, reporter: Reporter | None = None) -> BatchSummary:
    """Run every prompt of ``path`` into ``options.out``; returns what is done and what failed."""
    from magic3d.batch.gallery import LOCK_NAME, publish

    reporter = reporter or Reporter(quiet=True)
    check_options(options)  # every check before anything is written: no folder, no batch.sqlite
    out = Path(options.out)
    parsed = load_batch(path, options.defaults(), options.skip_invalid)
    restart = restart_ids(options, parsed)
    for item in parsed.items:  # a run folder that is or holds a link: refused before any work
        check_run_folder(out / item.slug)
    ensure_writable_dir(out)
    refuse_link(out / LOCK_NAME)  # the manifest checks its own files; index.html and world.usda are renamed over
    for line, reason in parsed.problems:
        reporter.emit("invalid_line", line=line, error=reason)
    ids = [item.slug for item in parsed.items]
    clock = time.monotonic()
    owner = new_owner()
    ran: list[str] = []
    with Manifest(out) as manifest, _sigterm_as_interrupt() as interrupted:
        manifest.sync(parsed.items, replace=restart)
        manifest.restart(restart, owner)
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
                interrupted()
                while len(running) < backend.capacity:
                    job = manifest.claim(owner, ids, options.lease_s)
                    if job is None:
                        break
                    running[job.id] = job
                    # A restarted job starts over on every attempt of this run: a retry after a lost
                    # worker must not meet the old run folder it was asked to replace.
                    slot = backend.start(job, *job_payload(job, options, restart=job.id in restart))
                    reporter.emit("job_start", job=job.id, prompt=job.prompt, attempt=job.attempts, worker=slot)
                    publish(out, manifest, world=False)  # the gallery shows the job as running now
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
                        error = batch_advice(o.error, job.id)
                        state = manifest.mark_failed(job.id, owner, error, options.retries, lost=o.kind == "lost")
                        reporter.emit("job_failed", job=job.id, error=error, retry=state == "pending",
                                      lost=o.kind == "lost")
                        # The job logs its own errors; a worker that died or was stopped cannot.
                        JobLog(out, job.id).line(f"batch: {'will retry' if state == 'pending' else 'gave up'} "
                                                 f"after: {error}")
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
