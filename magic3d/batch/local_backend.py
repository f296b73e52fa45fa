"""The local batch backend: ``--workers`` worker processes, each running job after job.

A worker (worker.py) loads the prior with its first job and keeps it for the next, while a
process of its own still keeps failures apart: a job that raises is reported and its worker
goes on; one that crashes its process, or runs past ``--timeout`` and is killed, takes its
worker down, and the next job starts a new worker in that slot. ``jobs_per_worker=1`` gives
each job a fresh process, as before warm workers. Workers die with the batch process even when
it is SIGKILLed, so a re-run never races an orphan writing into the same run folder.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from magic3d.batch.manifest import Job
from magic3d.batch.worker import worker_main


@dataclass
class _Worker:
    slot: int
    process: Any
    conn: Connection  # both ways: jobs to the worker, progress and results back
    jobs: int = 0  # jobs handed to it so far
    job_id: str | None = None  # the job it runs now
    final: tuple[str, Any] | None = None  # that job's done/failed message, once it came


def _slot_envs(workers: int, device: str | None) -> list[dict[str, str]]:
    """One device per worker: with several GPUs, worker i sees only GPU i (mod the count)."""
    envs: list[dict[str, str]] = [{} for _ in range(workers)]
    if workers < 2 or (device not in (None, "auto", "cuda")):
        return envs
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in visible.split(",") if g.strip()] if visible is not None else [str(i) for i in range(_gpu_count())]
    if len(gpus) > 1:
        for i, env in enumerate(envs):
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    return envs


def _gpu_count() -> int:
    """GPUs the driver lists; the batch process itself never imports torch (its workers do)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            return len(os.listdir("/proc/driver/nvidia/gpus"))
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


class LocalBackend:
    def __init__(self, options: Any):
        self.spec = options.job_spec()
        self.capacity = options.workers or 1
        self.max_jobs = options.jobs_per_worker
        self.ctx = mp.get_context("spawn")
        self.envs = _slot_envs(self.capacity, options.device)
        self.workers: dict[int, _Worker] = {}  # slot -> its live worker, busy or idle
        self.busy: dict[str, _Worker] = {}  # job id -> the worker running it

    def start(self, job: Job, payload: dict, options: dict) -> int:
        taken = {w.slot for w in self.busy.values()}
        # An idle warm worker first: its prior is loaded.
        slot = min((i for i in range(self.capacity) if i not in taken), key=lambda i: (i not in self.workers, i))
        worker = self.workers.get(slot)
        if worker is None or not worker.process.is_alive():
            if worker is not None:
                self._retire(worker)
            worker = self._spawn(slot)
        worker.job_id, worker.final = job.id, None
        worker.jobs += 1
        self.busy[job.id] = worker
        with contextlib.suppress(OSError):  # died since: wait() reports the job lost
            worker.conn.send(("job", payload, options))
        return slot

    def _spawn(self, slot: int) -> _Worker:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=worker_main, args=(self.spec, child_conn, os.getpid(), self.envs[slot], self.max_jobs),
            name=f"magic3d-worker-{slot}", daemon=True,
        )
        process.start()
        child_conn.close()
        self.workers[slot] = _Worker(slot, process, parent_conn)
        return self.workers[slot]

    def wait(self, timeout: float) -> list:
        from magic3d.batch.job import Outcome

        if not self.busy:
            time.sleep(timeout)
            return []
        waitables: list[Any] = []
        for w in self.busy.values():
            waitables += [w.conn, w.process.sentinel]
        wait(waitables, timeout)
        outcomes = []
        for worker in list(self.busy.values()):
            job_id = worker.job_id
            outcomes += self._drain(worker)
            if worker.final is None and not worker.process.is_alive():
                outcomes += self._drain(worker)  # a last message may land as it exits
            if worker.final is None and worker.process.is_alive():
                continue
            del self.busy[job_id]
            if worker.final is None:
                self._retire(worker)
                reason = f"{_death_reason(worker.process.exitcode)}; see {job_id}/batch.log"
                outcomes.append(Outcome(job_id, "lost", error=reason))
                continue
            kind, data = worker.final
            worker.job_id = None
            if self.max_jobs is not None and worker.jobs >= self.max_jobs:
                self._retire(worker, grace=5.0)  # it leaves by itself after its last job
            if kind == "done":
                outcomes.append(Outcome(job_id, "done", result=data))
            else:
                outcomes.append(Outcome(job_id, "failed", error=data))
        return outcomes

    def _drain(self, worker: _Worker) -> list:
        from magic3d.batch.job import Outcome

        out = []
        try:
            while worker.final is None and worker.conn.poll():
                kind, job_id, data = worker.conn.recv()
                if job_id != worker.job_id:
                    continue
                if kind == "progress":
                    out.append(Outcome(job_id, "progress", result=data))
                else:
                    worker.final = (kind, data)
        except (EOFError, OSError):
            pass
        return out

    def _retire(self, worker: _Worker, grace: float = 0.0) -> None:
        """Stop ``worker`` (asked first when idle and ``grace`` allows, else killed) and forget it."""
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        if grace and worker.job_id is None and worker.process.is_alive():
            with contextlib.suppress(OSError):
                worker.conn.send(("stop", None, None))
            worker.process.join(timeout=grace)
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()

    def cancel(self, job_id: str, reason: str) -> Any:
        """Kill the worker running ``job_id`` (a timeout, an interrupt); the slot gets a new one."""
        from magic3d.batch.job import Outcome

        worker = self.busy.pop(job_id, None)
        if worker is not None:
            self._retire(worker)
        return Outcome(job_id, "failed", error=reason)

    def close(self) -> None:
        for job_id in list(self.busy):
            self.cancel(job_id, "closed")
        for worker in list(self.workers.values()):
            self._retire(worker, grace=2.0)


def _death_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the job's worker process was killed ({name})"
    return f"the job's worker process exited with code {code} before reporting a result"
