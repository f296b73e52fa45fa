"""The local batch backend: each job in a fresh child process, ``--workers`` of them at a time.

A fresh process per job keeps failures apart (a crash, a NaN, a hang killed at ``--timeout``)
and hands all memory back between jobs. Children die with the batch process even when it is
SIGKILLed, so a re-run never races an orphan writing into the same run folder.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from magic3d.batch.job import log_path, open_log
from magic3d.batch.manifest import Job

PROGRESS_EVERY_S = 0.25


@dataclass
class _Child:
    job_id: str
    slot: int
    process: Any
    conn: Connection
    final: Any = None


def _slot_envs(workers: int, device: str | None) -> list[dict[str, str]]:
    """One device per worker: with several GPUs, worker i sees only GPU i (mod the count)."""
    envs: list[dict[str, str]] = [{} for _ in range(workers)]
    if workers < 2 or (device not in (None, "auto", "cuda")):
        return envs
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g for g in visible.split(",") if g.strip()]
    else:
        try:
            import torch

            gpus = [str(i) for i in range(torch.cuda.device_count())]
        except Exception:
            gpus = []
    if len(gpus) > 1:
        for i, env in enumerate(envs):
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    return envs


def _die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the batch process is gone (Linux: at once; elsewhere: within half a second)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def _log_to_file(path: Path, job: dict) -> None:
    """Send this process's stdout/stderr to the job's log, so bars and --json output stay clean
    and the log holds the job's warnings and tracebacks (nowhere when the log is refused)."""
    fd = open_log(path)
    if fd is None:
        fd = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {job['prompt']}", flush=True)


def child_main(spec: str, job: dict, options: dict, conn: Connection, parent_pid: int, env: dict) -> None:
    """Entry of a job process: run the job, send progress and then one final message."""
    os.environ.update(env)
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's to handle; it stops us
    _log_to_file(log_path(options["out"], job["id"]), job)
    from magic3d.batch.job import describe, execute

    last = [0.0]

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if step >= total or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            conn.send(("progress", {"stage": stage, "step": int(step), "total": int(total), "loss": float(loss)}))

    try:
        result = execute(spec, job, options, progress)
    except BaseException as exc:  # noqa: BLE001 - everything is reported, the parent decides
        traceback.print_exc()
        sys.stderr.flush()
        conn.send(("failed", describe(exc)))
    else:
        try:
            conn.send(("done", result))
        except Exception as exc:  # e.g. an unpicklable metric: a failure of this job, not a crash
            conn.send(("failed", f"the job's result could not be sent back ({describe(exc)})"))
    conn.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the result is sent: don't wait on threads a library may have left running


class LocalBackend:
    def __init__(self, options: Any):
        self.spec = options.job_spec()
        self.capacity = options.workers or 1
        self.ctx = mp.get_context("spawn")
        self.envs = _slot_envs(self.capacity, options.device)
        self.children: dict[str, _Child] = {}

    def start(self, job: Job, payload: dict, options: dict) -> int:
        used = {c.slot for c in self.children.values()}
        slot = next(i for i in range(self.capacity) if i not in used)
        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(
            target=child_main, args=(self.spec, payload, options, child_conn, os.getpid(), self.envs[slot]),
            name=f"magic3d-job-{job.id}", daemon=True,
        )
        process.start()
        child_conn.close()
        self.children[job.id] = _Child(job.id, slot, process, parent_conn)
        return slot

    def wait(self, timeout: float) -> list:
        from magic3d.batch.job import Outcome

        if not self.children:
            time.sleep(timeout)
            return []
        waitables: list[Any] = []
        for c in self.children.values():
            waitables += [c.conn, c.process.sentinel]
        wait(waitables, timeout)
        outcomes = []
        for child in list(self.children.values()):
            outcomes += self._drain(child)
            if child.final is None and not child.process.is_alive():
                outcomes += self._drain(child)  # a last message may land as it exits
            if child.final is not None or not child.process.is_alive():
                self._reap(child)
                if child.final is None:
                    reason = f"{_death_reason(child.process.exitcode)}; see {child.job_id}/batch.log"
                    outcomes.append(Outcome(child.job_id, "lost", error=reason))
                elif child.final[0] == "done":
                    outcomes.append(Outcome(child.job_id, "done", result=child.final[1]))
                else:
                    outcomes.append(Outcome(child.job_id, "failed", error=child.final[1]))
        return outcomes

    def _drain(self, child: _Child) -> list:
        from magic3d.batch.job import Outcome

        out = []
        try:
            while child.final is None and child.conn.poll():
                kind, data = child.conn.recv()
                if kind == "progress":
                    out.append(Outcome(child.job_id, "progress", result=data))
                else:
                    child.final = (kind, data)
        except (EOFError, OSError):
            pass
        return out

    def _reap(self, child: _Child) -> None:
        self.children.pop(child.job_id, None)
        child.process.join(timeout=5)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(timeout=5)
        child.conn.close()

    def cancel(self, job_id: str, reason: str) -> Any:
        from magic3d.batch.job import Outcome

        child = self.children.get(job_id)
        if child is not None:
            child.process.kill()
            self._reap(child)
        return Outcome(job_id, "failed", error=reason)

    def close(self) -> None:
        for job_id in list(self.children):
            self.cancel(job_id, "closed")


def _death_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the job's process was killed ({name})"
    return f"the job's process exited with code {code} before reporting a result"
