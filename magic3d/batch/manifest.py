"""The batch manifest: one SQLite file in the output folder recording every job and who runs it.

Jobs are claimed under a lease (owner + expiry) inside an immediate transaction, so two batch
processes on the same folder never run the same job at once. Owners renew their leases while the
job runs; a lease whose owner was killed is reclaimable when it expires, or at once when the
owner was a process on this machine that no longer exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magic3d.batch.sources import JobSource
from magic3d.errors import InputError

MANIFEST_NAME = "batch.sqlite"
STATES = ("pending", "running", "done", "failed")
# A killed worker is not the prompt's fault: retry it this many times whatever --retries says.
MAX_LOST = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    line INTEGER,
    prompt TEXT NOT NULL,
    seed INTEGER,
    preset TEXT,
    source TEXT,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    run_attempts INTEGER NOT NULL DEFAULT 0,
    lost INTEGER NOT NULL DEFAULT 0,
    completions INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created REAL,
    started REAL,
    finished REAL,
    duration REAL,
    outputs TEXT,
    metrics TEXT,
    bounds TEXT,
    lease_owner TEXT,
    lease_expires REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""
# Columns added since the first manifests: (name, declaration), added to an older file on open.
_ADDED = (("source", "TEXT"),)  # sources.JobSource as JSON: what the job starts from besides its prompt


@dataclass(frozen=True)
class Job:
    id: str
    position: int
    line: int | None
    prompt: str
    seed: int | None
    preset: str | None
    source: JobSource | None
    state: str
    attempts: int
    run_attempts: int
    lost: int
    completions: int
    error: str | None
    started: float | None
    finished: float | None
    duration: float | None
    outputs: dict[str, str]
    metrics: dict[str, Any]
    bounds: dict[str, Any] | None
    lease_owner: str | None
    lease_expires: float | None


def new_owner() -> str:
    """``host:pid:token``: the host and pid let a later process on this machine see the owner died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str | None, me: str | None = None) -> bool:
    """True only when certain: the owner was a process on this host that no longer exists."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process: its runs release what they hold when they end
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def refuse_link(path: Path) -> None:
    """One line for a link where the batch writes one of its own files: through it, the file
    would land outside --out."""
    if path.is_symlink():
        raise InputError(f"{str(path)!r} is a link; magic3d batch never writes through links in --out: "
                         "remove it or choose another --out.")


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an flock on ``path`` (created if needed, never through a link)."""
    refuse_link(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise InputError(f"Cannot open the lock file {str(path)!r} ({exc.strerror}); choose another --out.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _init_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    return exclusive_lock(path.with_name(path.name + ".lock"))


class Manifest:
    """``<out>/batch.sqlite``; every method is one short transaction, safe across processes."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / MANIFEST_NAME
        for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite's own files beside it, too
            refuse_link(self.path.with_name(self.path.name + suffix))
        try:
            # Switching a new file to WAL and creating the schema take locks that SQLite's busy
            # handler does not wait for; two batches starting together serialise here instead.
            with _init_lock(self.path):
                self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                self.db.row_factory = sqlite3.Row
                self.db.execute("PRAGMA busy_timeout = 60000")
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self.db.executescript(_SCHEMA)
                have = {r["name"] for r in self.db.execute("PRAGMA table_info(jobs)")}
                for name, decl in _ADDED:
                    if name not in have:
                        self.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        except sqlite3.DatabaseError as exc:
            raise InputError(
                f"The batch manifest {str(self.path)!r} cannot be used ({exc}); "
                "move it away to start the batch afresh, or choose another --out."
            ) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def sync(self, items: Sequence[Any], replace: Iterable[str] = ()) -> None:
        """Add new jobs (objects with slug, line, prompt, seed, preset, source); refuse ones that changed,
        unless their id is in ``replace`` (jobs being restarted): those take the new line."""
        now = time.time()
        replace = set(replace)
        db = self._tx()
        try:
            known = {r["id"]: r for r in db.execute("SELECT id, prompt, seed, preset, source FROM jobs")}
            next_pos = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM jobs").fetchone()[0]
            changed = []
            for item in items:
                row = known.get(item.slug)
                source = item.source.to_json() if getattr(item, "source", None) else None
                if row is None:
                    db.execute(
                        "INSERT INTO jobs (id, position, line, prompt, seed, preset, source, created) "
                        "VALUES (?,?,?,?,?,?,?,?)",
                        (item.slug, next_pos, item.line, item.prompt, item.seed, item.preset, source, now),
                    )
                    next_pos += 1
                elif (row["prompt"], row["seed"], row["preset"], row["source"]) == (
                        item.prompt, item.seed, item.preset, source):
                    db.execute("UPDATE jobs SET line = ? WHERE id = ?", (item.line, item.slug))
                elif item.slug in replace:
                    db.execute("UPDATE jobs SET line = ?, prompt = ?, seed = ?, preset = ?, source = ? WHERE id = ?",
                               (item.line, item.prompt, item.seed, item.preset, source, item.slug))
                else:
                    changed.append(item)
            if changed:
                listed = ", ".join(f"line {i.line} ({i.slug})" for i in changed[:3])
                more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
                raise InputError(
                    f"{listed}{more} changed prompt, seed, preset or source since the batch in {str(self.path.parent)!r} "
                    f"was started; give those lines a new \"name\", start them over with --restart-job NAME "
                    f"(e.g. --restart-job {changed[0].slug}), or use another --out."
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def restart(self, ids: Iterable[str], owner: str) -> int:
        """Forget the results of jobs being started over: pending again, with no completion, output
        or error of their earlier run, so a restarted job that finishes counts once. A job that a
        live batch process elsewhere is running is left to it."""
        db = self._tx()
        n = 0
        try:
            for job_id in ids:
                row = db.execute("SELECT state, lease_owner, lease_expires FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
                if row is None:
                    continue
                held = (row["state"] == "running" and row["lease_owner"] != owner
                        and (row["lease_expires"] or 0) >= time.time() and not owner_is_dead(row["lease_owner"], owner))
                if held:
                    continue
                n += db.execute(
                    "UPDATE jobs SET state = 'pending', run_attempts = 0, lost = 0, completions = 0, error = NULL, "
                    "finished = NULL, duration = NULL, outputs = NULL, metrics = NULL, bounds = NULL, "
                    "lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                    (job_id,),
                ).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def reset_failed(self, ids: Iterable[str]) -> int:
        """Give failed jobs a fresh attempt budget for this invocation."""
        db = self._tx()
        n = 0
        for job_id in ids:
            n += db.execute(
                "UPDATE jobs SET state = 'pending', run_attempts = 0, lost = 0 WHERE id = ? AND state = 'failed'",
                (job_id,),
            ).rowcount
        db.execute("COMMIT")
        return n

    def claim(self, owner: str, ids: Iterable[str], lease_s: float) -> Job | None:
        """Take the first job that is pending, or running under an expired or orphaned lease."""
        wanted = set(ids)
        now = time.time()
        db = self._tx()
        try:
            rows = db.execute(
                "SELECT id, state, lease_owner, lease_expires FROM jobs "
                "WHERE state IN ('pending', 'running') ORDER BY position"
            ).fetchall()
            for row in rows:
                if row["id"] not in wanted:
                    continue
                if row["state"] == "running":
                    expired = (row["lease_expires"] or 0) < now
                    if not (expired or owner_is_dead(row["lease_owner"], owner)):
                        continue
                db.execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, "
                    "run_attempts = CASE WHEN state = 'running' THEN 1 ELSE run_attempts + 1 END, "
                    "lease_owner = ?, lease_expires = ?, started = ?, finished = NULL WHERE id = ?",
                    (owner, now + lease_s, now, row["id"]),
                )
                db.execute("COMMIT")
                return self.get(row["id"])
            db.execute("COMMIT")
            return None
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def heartbeat(self, owner: str, lease_s: float) -> int:
        """Extend every lease ``owner`` holds; returns how many it still holds."""
        cur = self.db.execute(
            "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND state = 'running'",
            (time.time() + lease_s, owner),
        )
        return cur.rowcount

    def release(self, job_id: str, owner: str) -> None:
        """Give a claimed job back untouched (interrupted before it ran), not charging an attempt."""
        self.db.execute(
            "UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0), "
            "run_attempts = MAX(run_attempts - 1, 0), lease_owner = NULL, lease_expires = NULL "
            "WHERE id = ? AND lease_owner = ? AND state = 'running'",
            (job_id, owner),
        )

    def mark_done(
        self,
        job_id: str,
        owner: str,
        outputs: dict[str, str],
        metrics: dict[str, Any],
        bounds: dict[str, Any] | None,
    ) -> bool:
        """Record a finished job; False (nothing written) if ``owner`` no longer holds its lease."""
        now = time.time()
        cur = self.db.execute(
            "UPDATE jobs SET state = 'done', error = NULL, finished = ?, duration = ? - started, "
            "outputs = ?, metrics = ?, bounds = ?, completions = completions + 1, "
            "lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ? AND state = 'running'",
            (now, now, json.dumps(outputs), json.dumps(metrics, default=str), json.dumps(bounds), job_id, owner),
        )
        return cur.rowcount == 1

    def mark_failed(self, job_id: str, owner: str, error: str, retries: int, lost: bool = False) -> str | None:
        """Record a failure; the job goes back to pending while retries remain. Returns the new state."""
        now = time.time()
        db = self._tx()
        try:
            row = db.execute(
                "SELECT run_attempts, lost FROM jobs WHERE id = ? AND lease_owner = ? AND state = 'running'",
                (job_id, owner),
            ).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            if lost and row["lost"] < MAX_LOST:
                state, charge, lost_inc = "pending", 1, 1  # the attempt is not charged
            else:
                state = "pending" if row["run_attempts"] <= retries else "failed"
                charge, lost_inc = 0, 0
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished = ?, duration = ? - started, "
                "run_attempts = run_attempts - ?, lost = lost + ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE id = ?",
                (state, error, now, now, charge, lost_inc, job_id),
            )
            db.execute("COMMIT")
            return state
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get(self, job_id: str) -> Job:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return _job(row)

    def jobs(self, ids: Iterable[str] | None = None) -> list[Job]:
        rows = self.db.execute("SELECT * FROM jobs ORDER BY position").fetchall()
        wanted = None if ids is None else set(ids)
        return [_job(r) for r in rows if wanted is None or r["id"] in wanted]

    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for job in self.jobs(ids):
            out[job.state] += 1
        return out

    def held_elsewhere(self, ids: Iterable[str], owner: str) -> int:
        """Running jobs among ``ids`` whose live lease belongs to another process."""
        now = time.time()
        return sum(
            1
            for j in self.jobs(ids)
            if j.state == "running" and j.lease_owner != owner and (j.lease_expires or 0) >= now
            and not owner_is_dead(j.lease_owner, owner)
        )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], position=row["position"], line=row["line"], prompt=row["prompt"], seed=row["seed"],
        preset=row["preset"], source=JobSource.from_json(row["source"]), state=row["state"], attempts=row["attempts"], run_attempts=row["run_attempts"],
        lost=row["lost"], completions=row["completions"], error=row["error"], started=row["started"],
        finished=row["finished"], duration=row["duration"], outputs=json.loads(row["outputs"] or "{}"),
        metrics=json.loads(row["metrics"] or "{}"), bounds=json.loads(row["bounds"] or "null"),
        lease_owner=row["lease_owner"], lease_expires=row["lease_expires"],
    )
