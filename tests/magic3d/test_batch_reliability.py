"""``magic3d batch`` against bad input and stale run folders (issue 19): one ``error:`` line and
exit code 2 before anything is written; a bounded read of the prompt file; one config plan per
distinct setting; and a way out, per job, for a run folder that holds another run."""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from magic3d.batch import BatchOptions, run_batch
from magic3d.batch.input import MAX_FILE_BYTES, MAX_LINES, RunDefaults, load_batch, read_batch_file
from magic3d.batch.report import Reporter
from magic3d.batch.run import batch_advice
from magic3d.errors import InputError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(autouse=True)
def fake_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:fake_job")
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    monkeypatch.setenv("FAKE_STEPS", "3")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE)])
    env.pop("MAGIC3D_DEBUG", None)
    return env


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "magic3d.batch.cli", *args], env=_env(), capture_output=True,
                          text=True, timeout=120)


def good_file(tmp_path: Path) -> Path:
    f = tmp_path / "ok.txt"
    f.write_text("a red cube\na blue ball\n", encoding="utf-8")
    return f


# --- bad input: one line, exit 2, nothing written -------------------------------------------------

def _dev_zero(tmp_path: Path) -> str:
    return "/dev/zero"


def _fifo(tmp_path: Path) -> str:
    os.mkfifo(tmp_path / "prompts.fifo")  # nobody writes: a read would block for ever
    return str(tmp_path / "prompts.fifo")


def _directory(tmp_path: Path) -> str:
    (tmp_path / "prompts.txt").mkdir()
    return str(tmp_path / "prompts.txt")


def _too_many_bytes(tmp_path: Path) -> str:
    f = tmp_path / "huge.txt"
    with open(f, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: refused by its size, never read
    return str(f)


def _too_many_lines(tmp_path: Path) -> str:
    f = tmp_path / "long.txt"
    f.write_text("a red cube\n" * (MAX_LINES + 1), encoding="utf-8")
    return str(f)


def _nul_byte(tmp_path: Path) -> str:
    f = tmp_path / "nul.txt"
    f.write_bytes(b"a red cube\na blue\x00 ball\n")
    return str(f)


def _utf16(tmp_path: Path) -> str:
    f = tmp_path / "utf16.txt"
    f.write_text("a red cube\n", encoding="utf-16")
    return str(f)


def _latin1(tmp_path: Path) -> str:
    f = tmp_path / "latin1.txt"
    f.write_bytes("a red caf\xe9 cube\n".encode("latin-1"))
    return str(f)


def _dangling_link(tmp_path: Path) -> str:
    (tmp_path / "link.txt").symlink_to(tmp_path / "gone.txt")
    return str(tmp_path / "link.txt")


BAD_FILES = {
    "dev-zero": (_dev_zero, "The prompt file '/dev/zero' is a character device, not a file"),
    "fifo": (_fifo, "is a FIFO (named pipe), not a file"),
    "directory": (_directory, "is a folder, not a file"),
    "over-byte-cap": (_too_many_bytes, "is larger than 64 MiB"),
    "over-line-cap": (_too_many_lines, f"has {MAX_LINES + 1:,} lines, more than the {MAX_LINES:,} a batch takes"),
    "nul-byte": (_nul_byte, "is not text (it holds NUL bytes)"),
    "utf-16": (_utf16, "is not text (it holds NUL bytes)"),
    "latin-1": (_latin1, "is not UTF-8 text"),
    "dangling-link": (_dangling_link, "is a dangling link, not a file"),
}

BAD_OPTIONS = {
    "timeout-nan": (["--timeout", "nan"], "--timeout must be a finite number of seconds more than 0"),
    "timeout-inf": (["--timeout", "inf"], "--timeout must be a finite number"),
    "timeout-negative": (["--timeout", "-5"], "not -5.0"),
    "timeout-zero": (["--timeout", "0"], "not 0.0"),
    "retries-negative": (["--retries", "-1"], "--retries must be a whole number from 0 to 100, not -1"),
    "retries-huge": (["--retries", str(10**30)], "--retries must be a whole number from 0 to 100"),
    "workers-zero": (["--workers", "0"], "--workers must be a whole number from 1 to 1024, not 0"),
    "workers-huge": (["--workers", "1000000"], "not 1000000"),
    "num-cpus-nan": (["--num-cpus", "nan"], "--num-cpus must be a finite number more than 0"),
    "num-cpus-negative": (["--num-cpus", "-1"], "--num-cpus must be"),
    "num-gpus-nan": (["--num-gpus", "nan"], "--num-gpus must be a finite number from 0"),
    "num-gpus-negative": (["--num-gpus", "-0.5"], "not -0.5"),
    "seed-2**64": (["--seed", str(2**64)], "--seed must be a whole number from 0 to 9223372036854775807"),
    "restart-unknown-job": (["--restart-job", "no-such-job"], "--restart-job 'no-such-job' names no job"),
}


def assert_one_line_refusal(r: subprocess.CompletedProcess[str], out: Path, expected: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert len(r.stderr.strip()) <= 300, len(r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert expected in r.stderr, r.stderr
    assert not out.exists(), sorted(out.rglob("*"))  # no folder, so no batch.sqlite and no run folder


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_file_that_is_not_a_prompt_file_is_one_line(tmp_path: Path, case: str) -> None:
    make, expected = BAD_FILES[case]
    out = tmp_path / "out"
    assert_one_line_refusal(run_cli(make(tmp_path), "--out", str(out)), out, expected)


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_a_bad_number_is_one_line(tmp_path: Path, case: str) -> None:
    args, expected = BAD_OPTIONS[case]
    out = tmp_path / "out"
    assert_one_line_refusal(run_cli(str(good_file(tmp_path)), "--out", str(out), *args), out, expected)


def test_the_python_api_refuses_the_same_numbers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for bad in (dict(timeout=float("nan")), dict(retries=True), dict(workers=1.5), dict(num_gpus=float("inf")),
                dict(lease_s=0.0), dict(seed=10**5000)):
        with pytest.raises(InputError, match="must be a (finite|whole) number"):
            run_batch(good_file(tmp_path), BatchOptions(out=out, **bad))
    assert not out.exists()


def test_the_seed_bound_is_the_configs() -> None:
    from magic3d.batch.input import SEED_MAX, SEED_MIN
    from magic3d.config import BOUNDS

    assert (SEED_MIN, SEED_MAX) == BOUNDS["seed"]


def test_many_bad_lines_make_one_bounded_message(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("".join(f"a forbidden thing {i}\n" if i % 2 else f"a red cube {i}\n" for i in range(5000)))
    with pytest.raises(InputError) as err:
        load_batch(f, RunDefaults(out=tmp_path / "out"))
    msg = str(err.value)
    assert "has 2500 invalid lines" in msg and "lines 2, 4, 6 and 2497 more: The prompt uses words" in msg
    assert len(msg) < 600 and "\n" not in msg


# Where a link planted in --out would send the batch's writes elsewhere.
LINKS = {"run-folder": "a-red-cube", "checkpoints": "a-red-cube/checkpoints", "manifest": "batch.sqlite",
         "manifest-wal": "batch.sqlite-wal", "publish-lock": ".batch-publish.lock"}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_a_link_in_out_is_refused_and_never_written_through(tmp_path: Path, case: str) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = out / LINKS[case]
    link.parent.mkdir(parents=True)
    folder = case in ("run-folder", "checkpoints")
    target = elsewhere / "target"
    if folder:
        target.mkdir()
    link.symlink_to(target, target_is_directory=folder)  # a file link dangles: following it would create it
    r = run_cli(str(good_file(tmp_path)), "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "is a link" in r.stderr and len(r.stderr) <= 300 and "Traceback" not in r.stderr
    assert sorted(elsewhere.rglob("*")) == ([target] if folder else [])  # nothing written through it
    assert not (out / "batch.sqlite").is_file() or (out / "batch.sqlite").is_symlink()
    assert not (out / "a-blue-ball").exists()  # no job ran


# --- validation plans each distinct config once ----------------------------------------------------

def test_ten_thousand_lines_plan_the_config_once_per_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import magic3d.plan as plan

    monkeypatch.delenv("MAGIC3D_BATCH_PLAN")
    calls: list[tuple] = []
    real = plan.plan_config

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(plan, "plan_config", counting)
    rows = []
    for i in range(10_000):
        row = {"prompt": "a red cube" if i % 500 else "a purple dragon", "seed": i}
        if i % 2:
            row["preset"] = "builtin"
        rows.append(json.dumps(row))
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(rows) + "\n")
    defaults = RunDefaults(out=tmp_path / "out", prior="builtin", device="cpu")
    parsed = read_batch_file(f, defaults)
    assert len(calls) == 2 and {c[0] for c in calls} == {None, "builtin"}  # one per distinct preset
    assert [n for n, _ in parsed.problems] == [1 + i for i in range(0, 10_000, 500)]
    assert len(parsed.items) == 10_000 - 20
    # the per-line result is plan_run's, word for word
    with pytest.raises(InputError) as err:
        plan.plan_run("a purple dragon", out=tmp_path / "out", prior="builtin", seed=0, device="cpu")
    assert parsed.problems[0][1] == str(err.value).rstrip(".")

    calls.clear()
    broken = RunDefaults(out=tmp_path / "out", prior="builtin", overrides=("coarse.lr=nan",), device="cpu")
    parsed = read_batch_file(f, broken)
    assert len(calls) == 2 and len(parsed.problems) == 10_000 and not parsed.items
    assert {reason for _, reason in parsed.problems} == {"Config key 'coarse.lr' must be a finite number, not nan"}


# --- a run folder that holds another run: --restart-job / --restart --------------------------------

def fake_log(out: Path) -> list[tuple[str, int]]:
    log = out / "fake-log.txt"
    return [(ln.split()[0], int(ln.split()[2])) for ln in log.read_text().splitlines()] if log.exists() else []


def manifest_rows(out: Path) -> dict[str, tuple[str, int]]:
    with sqlite3.connect(out / "batch.sqlite") as db:
        return {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, state, completions FROM jobs")}


def test_a_mismatched_run_folder_recovers_with_restart_job_and_is_done_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # `magic3d generate "a red cube" --seed 5 --out out` was here first, and was killed part way
    stale = out / "a-red-cube"
    (stale / "checkpoints").mkdir(parents=True)
    (stale / "run.json").write_text(json.dumps({"prompt": "a red cube", "seed": 5, "overrides": []}))
    (stale / "checkpoints" / "step.txt").write_text("2")
    f = good_file(tmp_path)

    first = run_batch(f, BatchOptions(out=out, retries=0))
    assert first.done == ["a-blue-ball"] and list(first.failed) == ["a-red-cube"]
    error = first.failed["a-red-cube"]
    assert "holds a run with another prompt or config" in error
    assert "pass --restart-job a-red-cube to replace it" in error
    assert not re.search(r"--restart\b(?!-job)", error)  # batch's advice, not generate's
    assert 'pass --restart-job a-red-cube' in summary_line(f, out)

    rep = Reporter(quiet=True)
    second = run_batch(f, BatchOptions(out=out, retries=0, restart_jobs=("a-red-cube",)), rep)
    assert second.ran == ["a-red-cube"] and sorted(second.done) == ["a-blue-ball", "a-red-cube"]
    assert [e["job"] for e in rep.events if e["event"] == "job_start"] == ["a-red-cube"]
    assert fake_log(out) == [("a-blue-ball", 0), ("a-red-cube", 0)]  # started over, not resumed at step 2
    assert json.loads((stale / "run.json").read_text())["seed"] == 0
    assert manifest_rows(out) == {"a-red-cube": ("done", 1), "a-blue-ball": ("done", 1)}

    # restarting a job that is done runs it again, and the manifest still counts it once
    third = run_batch(f, BatchOptions(out=out, restart_jobs=("a-blue-ball",)))
    assert third.ran == ["a-blue-ball"]
    assert fake_log(out)[-1] == ("a-blue-ball", 0)
    assert manifest_rows(out) == {"a-red-cube": ("done", 1), "a-blue-ball": ("done", 1)}


def summary_line(f: Path, out: Path) -> str:
    """What the CLI prints when a job of the batch failed (exit 1)."""
    r = run_cli(str(f), "--out", str(out), "--retries", "0", "--quiet")
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_restart_starts_every_job_over_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "out"
    f = good_file(tmp_path)
    first = run_cli(str(f), "--out", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    again = run_cli(str(f), "--out", str(out), "--quiet")  # done: nothing runs
    assert again.returncode == 0 and len(fake_log(out)) == 2
    restarted = run_cli(str(f), "--out", str(out), "--quiet", "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert sorted(fake_log(out)) == sorted([("a-red-cube", 0), ("a-blue-ball", 0)] * 2)
    assert manifest_rows(out) == {"a-red-cube": ("done", 1), "a-blue-ball": ("done", 1)}


def test_a_changed_line_can_be_restarted_under_its_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "a red cube", "name": "thing"}\n')
    run_batch(f, BatchOptions(out=out))
    f.write_text('{"prompt": "a blue ball", "name": "thing"}\n')
    with pytest.raises(InputError, match=r"changed prompt.*--restart-job thing"):
        run_batch(f, BatchOptions(out=out))
    summary = run_batch(f, BatchOptions(out=out, restart_jobs=("thing",)))
    assert summary.ran == ["thing"]
    assert json.loads((out / "thing" / "run.json").read_text())["prompt"] == "a blue ball"
    with sqlite3.connect(out / "batch.sqlite") as db:
        assert list(db.execute("SELECT prompt, state, completions FROM jobs")) == [("a blue ball", "done", 1)]


def test_the_ray_worker_passes_restart_to_the_job(tmp_path: Path) -> None:
    from magic3d.batch.ray_backend import ray_job

    out = tmp_path / "out"
    (out / "a-red-cube").mkdir(parents=True)
    (out / "a-red-cube" / "run.json").write_text(json.dumps({"prompt": "a red cube", "seed": 9, "overrides": []}))
    job = {"id": "a-red-cube", "prompt": "a red cube", "seed": None, "preset": None}
    options = {"out": str(out), "overrides": []}
    refused = ray_job("batch_fakes:fake_job", {**job, "restart": False}, options)
    assert not refused["ok"] and "--restart" in refused["error"]
    done = ray_job("batch_fakes:fake_job", {**job, "restart": True}, options)
    assert done["ok"] and fake_log(out) == [("a-red-cube", 0)]


def test_batch_advice_names_the_job() -> None:
    assert batch_advice("pass --restart to start over; --restart-job x stays", "a-b") == (
        "pass --restart-job a-b to start over; --restart-job x stays")
    # Advice naming its own command is about that command's folder (an amortized model), not the job.
    model = "no checkpoint; train the model again: magic3d amortize PROMPTS --out MODEL_DIR --restart."
    assert batch_advice(model, "a-b") == model


# --- every option an error can advise exists in `magic3d batch` ------------------------------------

# Messages of commands that batch never runs: `magic3d preview` and `magic3d export`'s re-export.
# Messages of other commands (their own options), and the gallery's HTML (a CSS --custom-property).
NOT_REACHED_FROM_BATCH = {("magic3d/preview.py", "*"), ("magic3d/convert.py", "*"),
                          ("exporters/validate.py", "*"), ("magic3d/export.py", "reexport"),
                          ("magic3d/amortize/interpolate.py", "*"),
                          ("magic3d/batch/gallery_cli.py", "*"), ("magic3d/batch/viewer.py", "*")}
# Planners a batch line does reach (batch/sources.py), but only with these options valid: an
# "edit_from" line's "keep" is checked by the JSONL parser first, and batch passes plan_edit's
# default --steps and --lr-scale and plan_generation's --refine-steps of 0. Their other advice counts.
NEVER_INVALID_FROM_BATCH = {("magic3d/control/plan.py", "plan_edit"): {"--keep", "--steps", "--lr-scale"},
                            ("magic3d/amortize/generate.py", "plan_generation"): {"--refine-steps"}}


def batch_flags() -> set[str]:
    """The long options of ``magic3d batch``, as click parses them."""
    import typer

    from magic3d.batch.cli import register

    app = typer.Typer()
    register(app)
    command = typer.main.get_command(app)  # a single command: the command itself
    return {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def advised_flags(path: Path, rel: str) -> list[tuple[str, str]]:
    """(function, flag) for every --flag in a string of ``path`` outside docstrings and typer options."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Option", "Argument"):
            skip |= {id(n) for n in ast.walk(node)}  # an option's own declaration and help
    found = []

    def visit(node: ast.AST, func: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            if (rel, "*") not in NOT_REACHED_FROM_BATCH and (rel, func) not in NOT_REACHED_FROM_BATCH:
                text = re.sub(r"`[^`]*`", "", node.value)  # `ray start --head`: another program's command
                found.extend((func, m) for m in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, "")
    return found


def test_every_option_a_message_advises_exists_in_batch() -> None:
    flags = batch_flags()
    assert {"--restart", "--restart-job", "--set", "--out", "--device", "--prior", "--skip-invalid"} <= flags
    wrong = []
    for package in ("magic3d", "exporters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            wrong += [f"{rel}:{func} {flag}" for func, flag in advised_flags(path, rel)
                      if flag not in flags and flag not in NEVER_INVALID_FROM_BATCH.get((rel, func), ())]
    assert wrong == []


# --- the real pipeline: its own mismatch error, and the way out ------------------------------------

@pytest.mark.slow
def test_the_pipeline_s_mismatch_recovers_with_restart_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_batch_e2e import TINY, pipeline_missing

    reason = pipeline_missing()
    if reason:
        pytest.skip(reason)
    monkeypatch.delenv("MAGIC3D_BATCH_PLAN")
    monkeypatch.delenv("MAGIC3D_BATCH_JOB")
    out = tmp_path / "out"
    stale = out / "a-red-cube"
    stale.mkdir(parents=True)  # what `magic3d generate "a blue cube" --out out --name a-red-cube` might leave
    (stale / "run.json").write_text(json.dumps({"prompt": "a blue cube", "config": {}, "status": "running"}))
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n")
    options = dict(out=out, prior="builtin", overrides=TINY, device="cpu", seed=3, retries=0)
    first = run_batch(f, BatchOptions(**options))
    assert list(first.failed) == ["a-red-cube"]
    assert "holds a run with another prompt or config; pass --restart-job a-red-cube to replace it" in (
        first.failed["a-red-cube"])
    second = run_batch(f, BatchOptions(**options, restart_jobs=("a-red-cube",)))
    assert second.done == ["a-red-cube"] and second.ran == ["a-red-cube"]
    record = json.loads((stale / "run.json").read_text())
    assert record["prompt"] == "a red cube" and record["status"] == "done" and record["seed"] == 3
    assert manifest_rows(out) == {"a-red-cube": ("done", 1)}
