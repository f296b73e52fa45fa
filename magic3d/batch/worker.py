"""A local batch worker: one process that runs job after job and keeps the prior (and a --from
model) it loaded.

The batch process (local_backend.py) hands it one job at a time over a pipe and hears back
progress and then one final message per job. A job that raises is reported and the worker takes
the next; a crash, or a hang that the batch kills at ``--timeout``, takes the process down and
the backend starts another in its place. While a job runs, the process's stdout and stderr go to
that job's log; between jobs, nowhere.

Only this module's functions run in the worker: torch and the pipeline are imported there, by
the job, never by the batch process that starts it.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

PROGRESS_EVERY_S = 0.25


def worker_main(spec: str, conn: Connection, parent_pid: int, env: dict[str, str], max_jobs: int | None) -> None:
    """Entry of a worker process: run the jobs the pipe brings until told to stop (or ``max_jobs``)."""
    os.environ.update(env)  # before anything imports torch: CUDA_VISIBLE_DEVICES picks this slot's GPU
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's to handle; it stops us
    _output_to(None)
    ran = 0
    while max_jobs is None or ran < max_jobs:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the batch is gone
            break
        if message[0] != "job":
            break
        _, job, options = message
        run_one(spec, job, options, conn)
        ran += 1
    conn.close()
    os._exit(0)  # don't wait on threads a library may have left running


def run_one(spec: str, job: dict, options: dict, conn: Connection) -> None:
    """One job: its output to its log, progress and then ``done`` or ``failed`` sent back."""
    from magic3d.batch.job import describe, execute, log_path

    _output_to(log_path(options["out"], job["id"]))
    print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {job['prompt']}", flush=True)
    last = [0.0]

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if step >= total or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            conn.send(("progress", job["id"], {"stage": stage, "step": int(step), "total": int(total),
                                                "loss": float(loss)}))

    try:
        final = ("done", execute(spec, job, options, progress))
    except BaseException as exc:  # noqa: BLE001 - everything is reported, the batch decides
        traceback.print_exc()
        final = ("failed", describe(exc))
    try:
        conn.send((final[0], job["id"], final[1]))
    except Exception as exc:  # e.g. an unpicklable metric: a failure of this job, not a crash
        conn.send(("failed", job["id"], f"the job's result could not be sent back ({describe(exc)})"))
    _output_to(None)
    _tidy()


def _output_to(path: Path | None) -> None:
    """Point file descriptors 1 and 2 at the job's log (None, or a refused log: nowhere), so bars
    and --json output stay clean and the log holds the job's warnings and tracebacks."""
    from magic3d.batch.job import open_log

    fd = open_log(path) if path is not None else None
    if fd is None:
        fd = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _tidy() -> None:
    """Hand back what the last job held, so the next one starts with the memory the first had."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _die_with_parent(parent_pid: int) -> None:
    """Exit as soon as the batch process is gone (Linux: at once; elsewhere: within half a second),
    so a re-run never races an orphan writing into the same run folder."""
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
