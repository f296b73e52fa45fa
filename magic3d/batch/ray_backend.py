"""The Ray batch backend: one actor per worker slot (a GPU each where there are GPUs), for many
GPUs and machines.

An actor runs job after job and keeps the prior its first job loaded (``job.PRIORS`` lives in
its process). The manifest stays with the driver (this process): Ray only runs jobs. A job whose
actor dies (killed process, lost node) comes back as ``lost`` and is retried, not lost; a job
past ``--timeout`` has its actor killed. Either way the slot gets a new actor for its next job.
Ray is an optional extra: ``magic3d[dist]``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from magic3d.batch.manifest import Job
from magic3d.errors import InputError

# Errors that say the worker or its node went away, not that the job itself failed.
_LOST_ERRORS = (
    "WorkerCrashedError", "NodeDiedError", "OwnerDiedError", "ObjectLostError", "ObjectReconstructionFailedError",
    "LocalRayletDiedError", "RaySystemError", "RayActorError", "ActorDiedError", "ActorUnavailableError",
    "OutOfMemoryError",
)
# Passed on to the workers so they find the same job function and code as the driver.
_FORWARD_ENV = ("PYTHONPATH", "MAGIC3D_BATCH_JOB", "MAGIC3D_DEBUG")


def ray_job(spec: str, job: dict, options: dict) -> dict:
    """Runs inside a Ray worker: the job's own failures come back as values, not task errors."""
    from magic3d.batch.job import describe, execute
    from magic3d.progress import silent

    started = time.time()
    try:
        return {"ok": True, "result": execute(spec, job, options, silent), "host": os.uname().nodename,
                "seconds": time.time() - started}
    except Exception as exc:
        return {"ok": False, "error": describe(exc)}


class JobActor:
    """A Ray worker process that stays: its jobs share the prior the first one loaded."""

    def run(self, spec: str, job: dict, options: dict) -> dict:
        return ray_job(spec, job, options)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(
            "--backend ray needs Ray, which is not installed; install it with pip install 'magic3d[dist]'."
        ) from None
    return ray


class RayBackend:
    def __init__(self, options: Any):
        ray = import_ray()
        self.ray = ray
        self.spec = options.job_spec()
        self.started_ray = False
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
            try:
                ray.init(address=options.address, runtime_env={"env_vars": env} if env else None,
                         include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = options.address or "a local instance"
                raise InputError(
                    f"Cannot start or reach a Ray cluster at {where} ({' '.join(str(exc).split())[:200]}); "
                    "start one with `ray start --head`, or leave out --address to run a local one."
                ) from None
            self.started_ray = True
        resources = ray.cluster_resources()
        num_gpus = options.num_gpus
        if num_gpus is None:
            wants_gpu = (options.device or "auto").startswith("cuda") or options.device in (None, "auto")
            num_gpus = 1.0 if wants_gpu and resources.get("GPU", 0) >= 1 else 0.0
        if num_gpus > resources.get("GPU", 0) or options.num_cpus > resources.get("CPU", 0):
            raise InputError(
                f"Each job asks for {options.num_cpus:g} CPUs and {num_gpus:g} GPUs but the Ray cluster has "
                f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs; lower --num-cpus/--num-gpus."
            )
        slots = resources.get("GPU", 0) / num_gpus if num_gpus else resources.get("CPU", 0) / options.num_cpus
        self.capacity = options.workers or max(1, int(slots))
        # No restarts or task retries: a dead actor is reported to us, and the manifest decides about the retry.
        self.actor_class = ray.remote(JobActor).options(num_cpus=options.num_cpus, num_gpus=num_gpus,
                                                        max_restarts=0, max_task_retries=0)
        self.max_jobs = options.jobs_per_worker
        self.actors: dict[int, Any] = {}  # slot -> its live actor, busy or idle
        self.jobs_run: dict[int, int] = {}  # slot -> jobs its actor was given
        self.refs: dict[Any, tuple[str, int]] = {}  # a running job's result -> (job id, slot)
        self.by_job: dict[str, Any] = {}

    def start(self, job: Job, payload: dict, options: dict) -> int:
        taken = {slot for _, slot in self.refs.values()}
        # An idle actor first: its prior is loaded.
        slot = min((i for i in range(self.capacity) if i not in taken), key=lambda i: (i not in self.actors, i))
        if slot not in self.actors:
            self.actors[slot] = self.actor_class.remote()
            self.jobs_run[slot] = 0
        self.jobs_run[slot] += 1
        ref = self.actors[slot].run.remote(self.spec, payload, options)
        self.refs[ref] = (job.id, slot)
        self.by_job[job.id] = ref
        return slot

    def _retire(self, slot: int) -> None:
        actor = self.actors.pop(slot, None)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # already dead: nothing left to stop
                pass

    def wait(self, timeout: float) -> list:
        from magic3d.batch.job import Outcome

        if not self.refs:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        outcomes = []
        for ref in ready:
            job_id, slot = self.refs.pop(ref)
            self.by_job.pop(job_id, None)
            try:
                value = self.ray.get(ref)
            except Exception as exc:  # the job never returned: decide whether its actor died
                names = {c.__name__ for c in type(exc).__mro__}
                text = " ".join(str(exc).split())[:300]
                if names & set(_LOST_ERRORS):
                    self._retire(slot)
                    outcomes.append(Outcome(job_id, "lost", error=f"the Ray worker died ({type(exc).__name__})"))
                else:
                    outcomes.append(Outcome(job_id, "failed", error=f"{type(exc).__name__}: {text}"))
                continue
            if self.max_jobs is not None and self.jobs_run.get(slot, 0) >= self.max_jobs:
                self._retire(slot)
            if value.get("ok"):
                outcomes.append(Outcome(job_id, "done", result=value["result"]))
            else:
                outcomes.append(Outcome(job_id, "failed", error=value.get("error", "failed")))
        return outcomes

    def cancel(self, job_id: str, reason: str) -> Any:
        """Kill the actor running ``job_id`` (Ray cannot stop one call of an actor); the slot gets a new one."""
        from magic3d.batch.job import Outcome

        ref = self.by_job.pop(job_id, None)
        if ref is not None:
            _, slot = self.refs.pop(ref, (None, None))
            if slot is not None:
                self._retire(slot)
        return Outcome(job_id, "failed", error=reason)

    def close(self) -> None:
        for job_id in list(self.by_job):
            self.cancel(job_id, "closed")
        for slot in list(self.actors):
            self._retire(slot)
        if self.started_ray:
            self.ray.shutdown()
