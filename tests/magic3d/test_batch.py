"""Batch logic with the fake job (tests/magic3d/batch_fakes.py): seconds, not minutes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from magic3d.batch import BatchOptions, run_batch
from magic3d.batch.input import RunDefaults, load_batch, read_batch_file
from magic3d.batch.manifest import Manifest
from magic3d.batch.report import Reporter
from magic3d.errors import InputError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAKE_JOB = "batch_fakes:fake_job"
FAKE_PLAN = "batch_fakes:fake_plan"

SIX = ["a red cube", "a blue ball", "a green cone", "please fail now", "a gold ring", "a grey stone"]


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", FAKE_JOB)
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", FAKE_PLAN)
    monkeypatch.setenv("FAKE_STEPS", "3")
    monkeypatch.setenv("FAKE_STEP_S", "0.02")


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def log_lines(out: Path) -> list[list[str]]:
    log = out / "fake-log.txt"
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def starts(reporter: Reporter) -> list[str]:
    return [e["job"] for e in reporter.events if e["event"] == "job_start"]


# --- input ---------------------------------------------------------------------------------


def test_text_file_skips_comments_and_names_duplicates_apart(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["# props", "", "a red cube", "  a   red cube  ", "a tall tree  # not a comment"])
    parsed = load_batch(f, RunDefaults(out=tmp_path / "out"))
    assert [(i.line, i.slug) for i in parsed.items] == [(3, "a-red-cube"), (4, "a-red-cube-2"), (5, "a-tall-tree-not-a-comment")]
    assert parsed.items[1].prompt == "a red cube"


def test_every_bad_line_is_reported_and_nothing_starts(tmp_path: Path) -> None:
    f = write(tmp_path / "p.jsonl", [
        '{"prompt": "a red cube", "seed": 3}',
        '{"prompt": "a cube", "sede": 3}',
        "not json",
        '{"prompt": "   "}',
        '{"prompt": "a forbidden shape"}',
        '{"prompt": "a ball", "seed": -1}',
        '{"prompt": "a ball", "name": "../etc"}',
        '{"prompt": "a cone", "preset": "nope"}',
        '{"prompt": "x", "name": "dup"}',
        '{"prompt": "y", "name": "dup"}',
    ])
    out = tmp_path / "out"
    with pytest.raises(InputError) as err:
        run_batch(f, BatchOptions(out=out))
    msg = str(err.value)
    for line in (2, 3, 4, 5, 6, 7, 8, 10):
        assert f"line {line}:" in msg
    assert "line 1:" not in msg and "line 9:" not in msg
    assert "has 8 invalid lines" in msg and "--skip-invalid" in msg
    assert "\n" not in msg
    assert not out.exists()


def test_skip_invalid_runs_the_rest(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "a forbidden shape", "a blue ball"])
    rep = Reporter(quiet=True)
    summary = run_batch(f, BatchOptions(out=tmp_path / "out", skip_invalid=True), rep)
    assert summary.done == ["a-red-cube", "a-blue-ball"]
    assert [ln for ln, _ in summary.skipped_lines] == [2]
    assert [e["line"] for e in rep.events if e["event"] == "invalid_line"] == [2]


def test_empty_and_missing_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no prompts"):
        load_batch(write(tmp_path / "e.txt", ["# nothing", ""]), RunDefaults())
    with pytest.raises(InputError, match="does not exist"):
        read_batch_file(tmp_path / "missing.txt", RunDefaults())


# --- manifest and leases --------------------------------------------------------------------


class _Item:
    def __init__(self, slug: str, line: int) -> None:
        self.slug, self.line, self.prompt, self.seed, self.preset = slug, line, f"prompt {slug}", None, None


def test_leases_keep_two_owners_apart_and_dead_owners_lose_theirs(tmp_path: Path) -> None:
    a, b = Manifest(tmp_path), Manifest(tmp_path)
    a.sync([_Item("j1", 1), _Item("j2", 2)])
    ids = ["j1", "j2"]
    me = f"{os.uname().nodename}:{os.getpid()}:aaaa"
    first = a.claim(me, ids, lease_s=60)
    # another live process on this host (pid 1 is always alive) holds j2
    other = f"{os.uname().nodename}:1:bbbb"
    second = b.claim(other, ids, lease_s=60)
    assert {first.id, second.id} == {"j1", "j2"}
    assert a.claim(me, ids, 60) is None and b.claim("elsewhere:1:c", ids, 60) is None
    # a lease past its expiry is taken over, and the old owner's result is refused
    b.db.execute("UPDATE jobs SET lease_expires = 0 WHERE id = ?", (second.id,))
    taken = a.claim(me, ids, 60)
    assert taken.id == second.id and taken.attempts == 2
    assert not b.mark_done(second.id, other, {}, {}, None)
    assert a.mark_done(second.id, me, {"usdc": "x"}, {}, None)
    # an owner on this host whose process is gone loses its lease at once
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    c = Manifest(tmp_path)
    c.sync([_Item("j3", 3)])
    assert c.claim(f"{os.uname().nodename}:{dead.pid}:dddd", ["j3"], 600).id == "j3"
    assert a.claim(me, ["j3"], 60).id == "j3"
    assert a.get("j2").completions == 1 and a.counts() == {"pending": 0, "running": 2, "done": 1, "failed": 0}


def test_changed_prompt_for_a_known_name_is_refused(tmp_path: Path) -> None:
    m = Manifest(tmp_path)
    m.sync([_Item("j1", 1)])
    changed = _Item("j1", 1)
    changed.prompt = "something else"
    with pytest.raises(InputError, match="changed prompt"):
        m.sync([changed])


def test_corrupt_manifest_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "batch.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="cannot be used"):
        Manifest(tmp_path)


# --- runs -------------------------------------------------------------------------------------


def test_one_failing_prompt_leaves_the_others_done_and_rerun_does_only_it(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", SIX)
    out = tmp_path / "out"
    rep = Reporter(quiet=True)
    summary = run_batch(f, BatchOptions(out=out, workers=2, retries=1), rep)
    assert len(summary.done) == 5
    assert list(summary.failed) == ["please-fail-now"]
    assert "asked to fail" in summary.failed["please-fail-now"]
    log = (out / "please-fail-now" / "batch.log").read_text()
    # Both attempts logged: their start, traceback and reason, and the driver's verdict after each.
    assert log.count("start: 'please fail now'") == 2 and log.count("Traceback") == 2
    assert log.count("failed: RuntimeError: asked to fail") == 2
    assert "will retry after" in log and "gave up after" in log
    assert starts(rep).count("please-fail-now") == 2  # first try + one retry
    assert sorted(r[0] for r in log_lines(out)) == sorted(s for s in summary.done)
    rep2 = Reporter(quiet=True)
    again = run_batch(f, BatchOptions(out=out, workers=2, retries=0), rep2)
    assert starts(rep2) == ["please-fail-now"]
    assert again.done == summary.done and list(again.failed) == ["please-fail-now"]
    with sqlite3.connect(out / "batch.sqlite") as db:
        rows = dict(db.execute("SELECT id, attempts FROM jobs"))
    assert rows["please-fail-now"] == 3 and rows["a-red-cube"] == 1


def test_timeout_nan_and_a_killed_worker_are_isolated(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "hang forever", "a nan ball", "die once please"])
    out = tmp_path / "out"
    rep = Reporter(quiet=True)
    summary = run_batch(f, BatchOptions(out=out, workers=2, retries=0, timeout=3.0), rep)
    assert sorted(summary.done) == ["a-red-cube", "die-once-please"]
    assert "timed out after 3 s" in summary.failed["hang-forever"]
    assert "NaN" in summary.failed["a-nan-ball"]
    lost = [e for e in rep.events if e["event"] == "job_failed" and e["lost"]]
    assert [e["job"] for e in lost] == ["die-once-please"] and "SIGKILL" in lost[0]["error"]


def usd_problems(path: Path) -> list[str]:
    """exporters.validate (ComplianceChecker + NVIDIA rules) when present, else the checker alone."""
    try:
        from exporters.validate import validate_asset
    except ImportError:
        from pxr import UsdUtils

        checker = UsdUtils.ComplianceChecker(arkit=False)
        checker.CheckCompliance(str(path))
        return [*checker.GetErrors(), *checker.GetFailedChecks()]
    return validate_asset(path)


def _batch_cmd(f: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "magic3d.batch.cli", str(f), "--out", str(out), *extra]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    env.update(extra)
    return env


def _check_outputs_complete(out: Path) -> None:
    from PIL import Image
    from pxr import Usd

    for run in (p for p in out.iterdir() if p.is_dir()):
        for file in run.iterdir():
            if file.name.startswith("."):
                continue
            if file.suffix == ".usdc":
                assert Usd.Stage.Open(str(file)).GetDefaultPrim(), file
            elif file.suffix == ".png":
                Image.open(file).verify()
            elif file.name == "run.json":
                assert json.loads(file.read_text())["status"] == "done"
    assert Usd.Stage.Open(str(out / "world.usda"))
    assert "</html>" in (out / "index.html").read_text()


def test_sigkill_mid_run_then_rerun_finishes_everything_once(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", [p.replace("please fail now", "a pink cup") for p in SIX])
    out = tmp_path / "out"
    env = _env(FAKE_STEPS="6", FAKE_STEP_S="0.15")
    proc = subprocess.Popen(_batch_cmd(f, out, "--workers", "2", "--quiet"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(log_lines(out)) < 2:
        time.sleep(0.1)
    assert len(log_lines(out)) >= 2, "the batch never got going"
    def part_way() -> bool:  # a job with a checkpoint but no result yet
        return any((d / "checkpoints" / "step.txt").exists() and not (d / "run.json").exists()
                   for d in out.iterdir() if d.is_dir())

    while time.time() < deadline and not part_way():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(out / "batch.sqlite") as db:
        interrupted = [r[0] for r in db.execute("SELECT id FROM jobs WHERE state = 'running'")]
    assert interrupted, "expected jobs caught mid-run"
    done = subprocess.run(_batch_cmd(f, out, "--workers", "2", "--json"), env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "batch_start" and events[-1]["event"] == "batch_end"
    assert events[-1]["done"] == 6 and events[-1]["failed"] == 0
    completed = [r[0] for r in log_lines(out)]
    assert sorted(completed) == sorted(set(completed)) and len(completed) == 6  # each job finished exactly once
    resumed = {r[0]: int(r[2]) for r in log_lines(out)}
    assert any(resumed[j] > 0 for j in interrupted), "an interrupted job should resume from its checkpoint"
    with sqlite3.connect(out / "batch.sqlite") as db:
        assert set(db.execute("SELECT state, completions FROM jobs")) == {("done", 1)}
    _check_outputs_complete(out)


def test_two_batch_processes_on_one_folder_never_run_a_job_twice(tmp_path: Path) -> None:
    prompts = [f"a thing number {i}" for i in range(8)]
    f = write(tmp_path / "p.txt", prompts)
    out = tmp_path / "out"
    env = _env(FAKE_STEPS="3", FAKE_STEP_S="0.1")
    procs = [subprocess.Popen(_batch_cmd(f, out, "--json"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    ran = [[json.loads(x)["job"] for x in r[0].splitlines() if json.loads(x)["event"] == "job_done"] for r in results]
    assert sorted(ran[0] + ran[1]) == sorted(f"a-thing-number-{i}" for i in range(8))
    assert ran[0] and ran[1], "both processes should have taken work"
    completed = [r[0] for r in log_lines(out)]
    assert len(completed) == 8 == len(set(completed))


@pytest.mark.filterwarnings("ignore:Use of UsdUtils.ComplianceChecker is deprecated")
def test_world_and_gallery_list_exactly_the_done_assets(tmp_path: Path) -> None:
    from pxr import Usd

    f = write(tmp_path / "p.txt", ["a red cube", "please fail", 'a "quoted" <b>tag</b>'])
    out = tmp_path / "out"
    summary = run_batch(f, BatchOptions(out=out, retries=0))
    stage = Usd.Stage.Open(str(summary.world), Usd.Stage.LoadNone)
    names = sorted(p.GetName() for p in stage.GetDefaultPrim().GetAllChildren())  # unloaded: not "children"
    assert names == sorted(s.replace("-", "_") for s in summary.done)
    assert sorted(stage.GetRootLayer().GetExternalReferences()) == sorted(f"./{s}/asset.usdc" for s in summary.done)
    assert usd_problems(summary.world) == []
    page = summary.gallery.read_text()
    assert "a &quot;quoted&quot; &lt;b&gt;tag&lt;/b&gt;" in page and "<b>tag" not in page
    assert page.count('data-state="done">') == 2 and page.count('data-state="failed">') == 1
    assert "asked to fail" in page
    for s in summary.done:
        for href in (f"{s}/asset.glb", f"{s}/asset.usdc", f"{s}/preview.png"):
            assert f'"{href}"' in page and (out / href).is_file()


def test_cli_exit_codes(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "please fail"])
    r = subprocess.run(_batch_cmd(f, tmp_path / "out", "--retries", "0", "--quiet"), env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "1 of 2 jobs failed" in r.stderr and "please-fail" in r.stderr
    assert "world: " in r.stdout
    bad = write(tmp_path / "bad.txt", ["a forbidden thing"])
    r = subprocess.run(_batch_cmd(bad, tmp_path / "out2"), env=_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "line 1:" in r.stderr
    assert r.stderr.count("\n") == 1


def test_sigterm_stops_children_and_hands_jobs_back(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "a blue ball"])
    out = tmp_path / "out"
    env = _env(FAKE_STEPS="40", FAKE_STEP_S="0.1")
    proc = subprocess.Popen(_batch_cmd(f, out, "--quiet"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "a-red-cube" / "checkpoints" / "step.txt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    with sqlite3.connect(out / "batch.sqlite") as db:
        states = dict(db.execute("SELECT id, state FROM jobs"))
        attempts = dict(db.execute("SELECT id, attempts FROM jobs"))
    assert states == {"a-red-cube": "pending", "a-blue-ball": "pending"}
    assert attempts == {"a-red-cube": 0, "a-blue-ball": 0}  # an interruption is not charged
    step = int((out / "a-red-cube" / "checkpoints" / "step.txt").read_text())
    time.sleep(0.5)
    assert int((out / "a-red-cube" / "checkpoints" / "step.txt").read_text()) == step  # the child is gone


def test_each_local_worker_gets_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from magic3d.batch.local_backend import _slot_envs

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert [e.get("CUDA_VISIBLE_DEVICES") for e in _slot_envs(3, "cuda")] == ["2", "3", "2"]
    assert _slot_envs(3, "cpu") == [{}, {}, {}]
    assert _slot_envs(2, "cuda:1") == [{}, {}]  # an explicit device is the user's choice
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _slot_envs(2, "auto") == [{}, {}]  # no GPU: nothing to split


def test_each_job_log_holds_its_progress_timings_and_error(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "please fail now"])
    out = tmp_path / "out"
    summary = run_batch(f, BatchOptions(out=out, retries=0), Reporter(quiet=True))
    assert summary.done and summary.failed
    ok = (out / summary.done[0] / "batch.log").read_text()
    assert "start: 'a red cube'" in ok and " 3/3 loss " in ok and "done:" in ok
    failed_id = next(iter(summary.failed))
    bad = (out / failed_id / "batch.log").read_text()
    assert "failed:" in bad and summary.failed[failed_id].split(";")[0][:30] in bad
    assert "gave up" in bad


def test_the_batch_eta_comes_from_finished_jobs_and_from_running_jobs_progress() -> None:
    from magic3d.batch.report import Eta, clock

    eta = Eta(jobs=6, done=0, workers=2)
    assert eta.seconds_left(0.0) is None  # nothing to go on yet: shown as -:--:--
    eta.start("a", 0.0)
    eta.start("b", 0.0)
    eta.progress("a", "coarse", 50, 100)  # 27.5% of a job in 10 s: a job is ~36 s
    left = eta.seconds_left(10.0)
    assert left is not None and 60 < left < 120  # (6 - 0.275) jobs x 36 s / 2 workers ~ 104 s
    eta.finish("a", 40.0, final=True)
    eta.finish("b", 40.0, final=True)
    eta.start("c", 40.0)
    assert eta.seconds_left(60.0) == pytest.approx((4 - 0.5) * 40.0 / 2)
    eta.finish("c", None, final=False)  # a failure that will be retried still has to be done
    assert eta.left == 4
    assert clock(3725) == "eta 1:02:05" and clock(None) == "eta -:--:--"


def test_plain_progress_lines_carry_the_eta(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    f = write(tmp_path / "p.txt", ["a red cube", "a blue ball", "a green cone"])
    run_batch(f, BatchOptions(out=tmp_path / "out"), Reporter(stream=stream))
    done_lines = [line for line in stream.getvalue().splitlines() if line.startswith("done ")]
    assert len(done_lines) == 3 and all("eta " in line for line in done_lines)
    assert "eta -:--:--" not in done_lines[0]  # one finished job is enough to estimate



# --- warm workers: one prior load per worker, failures still kept apart --------------------------


def prior_loads(out: Path) -> list[str]:
    return (out / "prior-loads.txt").read_text().split()


def test_a_raise_a_segfault_and_a_hang_are_marked_while_replaced_workers_finish_the_rest(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "please fail now", "a blue ball", "segv once please",
                                   "a green cone", "hang forever", "a gold ring"])
    out = tmp_path / "out"
    rep = Reporter(quiet=True)
    summary = run_batch(f, BatchOptions(out=out, workers=1, retries=0, timeout=5.0), rep)
    assert summary.done == ["a-red-cube", "a-blue-ball", "segv-once-please", "a-green-cone", "a-gold-ring"]
    assert sorted(summary.failed) == ["hang-forever", "please-fail-now"]
    assert "asked to fail" in summary.failed["please-fail-now"]
    assert "timed out after 5 s" in summary.failed["hang-forever"]
    lost = [e for e in rep.events if e["event"] == "job_failed" and e["lost"]]
    assert [e["job"] for e in lost] == ["segv-once-please"] and lost[0]["retry"]
    assert "killed (SIGSEGV)" in lost[0]["error"]
    assert "will retry after: the job's worker process was killed (SIGSEGV)" in (
        out / "segv-once-please" / "batch.log").read_text()
    pid = {r[0]: r[1] for r in log_lines(out)}
    # the raise left its worker running; the segfault and the hang each took theirs down
    assert pid["a-red-cube"] == pid["a-blue-ball"] != pid["segv-once-please"] == pid["a-green-cone"] != pid["a-gold-ring"]
    assert len({pid["a-red-cube"], pid["a-green-cone"], pid["a-gold-ring"]}) == 3
    assert prior_loads(out) == [pid["a-red-cube"], pid["a-green-cone"], pid["a-gold-ring"]]  # once each
    assert all(r[1] == r[3] for r in log_lines(out))  # every job used its own worker's prior


def test_the_prior_loads_once_per_worker_or_once_per_job_with_fresh_workers(tmp_path: Path) -> None:
    prompts = [p.replace("please fail now", "a pink cup") for p in SIX]
    f = write(tmp_path / "p.txt", prompts)
    warm = tmp_path / "warm"
    summary = run_batch(f, BatchOptions(out=warm, workers=2), Reporter(quiet=True))
    assert len(summary.done) == 6
    pids = [r[1] for r in log_lines(warm)]
    assert sorted(prior_loads(warm)) == sorted(set(pids)) and len(set(pids)) == 2  # two workers, one load each
    fresh = tmp_path / "fresh"
    summary = run_batch(f, BatchOptions(out=fresh, workers=2, jobs_per_worker=1), Reporter(quiet=True))
    assert len(summary.done) == 6
    pids = [r[1] for r in log_lines(fresh)]
    assert sorted(prior_loads(fresh)) == sorted(pids) and len(set(pids)) == 6  # a process per job


def test_a_batch_process_never_imports_torch(tmp_path: Path) -> None:
    f = write(tmp_path / "p.txt", ["a red cube", "a blue ball"])
    code = ("import sys; from magic3d.batch import BatchOptions, run_batch; "
            f"run_batch({str(f)!r}, BatchOptions(out={str(tmp_path / 'out')!r}, workers=2, device='auto')); "
            "print(sorted(m for m in ('torch', 'magic3d.pipeline', 'diffusers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"  # only the workers import them
    assert len(log_lines(tmp_path / "out")) == 2


def test_a_run_with_a_second_prior_for_the_fine_stage_does_not_keep_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import magic3d.pipeline as pipeline
    from magic3d.batch.job import PRIORS, warm_prior
    from magic3d.config import load_config

    loads: list[str] = []
    monkeypatch.setattr(pipeline, "load_first_prior", lambda cfg, device: loads.append(cfg.prior.id) or object())
    PRIORS.clear()
    one = load_config("builtin")
    assert warm_prior(one, "cpu") is warm_prior(one, "cpu") and loads == ["builtin"]
    assert warm_prior(one, "cuda:1") is not warm_prior(one, "cpu") and len(loads) == 3  # one model at a time
    two = load_config("builtin", ["prior.fine_id=\"elsewhere\""])
    assert warm_prior(two, "cpu") is not warm_prior(two, "cpu") and PRIORS.value is None  # freed for the fine one
    PRIORS.clear()
