"""`generate --json` and `batch --json` speak one schema (magic3d/events.schema.json), line by line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "magic3d" / "events.schema.json").read_text())
TINY = ["--set", "coarse.steps=3", "--set", "fine.steps=0", "--set", "bake.texture_size=32",
        "--set", "export.formats=glb", "--set", "export.preview=false"]


def events(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    out = []
    for line in lines:
        record = json.loads(line)  # every line is JSON on its own (no NaN, no partial lines)
        jsonschema.validate(record, SCHEMA)
        out.append(record)
    return out


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests" / "magic3d")]),
                OMP_NUM_THREADS="1")


def test_the_schema_rejects_what_it_should():
    good = {"event": "progress", "time": 1.0, "stage": "coarse", "step": 1, "total": 3, "loss": 0.5}
    jsonschema.validate(good, SCHEMA)
    for bad in ({**good, "step": "one"}, {k: v for k, v in good.items() if k != "loss"}, {**good, "event": "nope"},
                {"event": "job_done", "time": 1.0, "job": "a", "seconds": 1.0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


@pytest.mark.slow
def test_generate_json_is_a_stream_of_valid_events_ending_with_the_result(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "magic3d", "generate", "a red cube", "--prior", "builtin",
                           "--out", str(tmp_path / "out"), "--json", *TINY],
                          capture_output=True, text=True, env=env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = events(proc.stdout)
    assert got[0]["event"] == "run_start" and got[-1]["event"] == "run_done"
    steps = [e["step"] for e in got if e["event"] == "progress" and e["stage"] == "coarse"]
    assert steps == [1, 2, 3]
    done = got[-1]
    assert Path(done["files"]["glb"]).is_file() and "coarse" in done["metrics"] and "bake" in done["timings"]
    again = subprocess.run([sys.executable, "-m", "magic3d", "generate", "a red cube", "--prior", "builtin",
                            "--out", str(tmp_path / "out"), "--json", *TINY],
                           capture_output=True, text=True, env=env(), timeout=600)
    notices = [e["message"] for e in events(again.stdout) if e["event"] == "notice"]
    assert any("already finished" in m for m in notices)


def test_generate_json_reports_bad_input_as_an_error_event(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "magic3d", "generate", "a purple dragon", "--prior", "builtin",
                           "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    got = events(proc.stdout)
    assert got[-1]["event"] == "error" and "dragon" in got[-1]["message"] and got[-1]["exit_code"] == 2
    assert not (tmp_path / "out").exists()


def test_batch_json_with_a_failing_job_validates_line_by_line(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\nplease fail now\na blue ball\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "magic3d.batch.cli", str(prompts), "--out", str(tmp_path / "out"),
                           "--json", "--retries", "0"], capture_output=True, text=True, timeout=300,
                          env={**env(), "MAGIC3D_BATCH_JOB": "batch_fakes:fake_job", "MAGIC3D_BATCH_PLAN": "batch_fakes:fake_plan",
                               "FAKE_STEPS": "2", "FAKE_STEP_S": "0.01"})
    assert proc.returncode == 1, proc.stderr
    got = events(proc.stdout)
    kinds = [e["event"] for e in got]
    assert kinds[0] == "batch_start" and kinds[-1] == "batch_end"
    assert kinds.count("job_done") == 2 and kinds.count("job_failed") == 1 and "job_progress" in kinds
