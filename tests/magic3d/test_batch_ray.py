"""The Ray backend on a local Ray instance started by the test, with the fake job."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from magic3d.batch import BatchOptions, run_batch
from magic3d.batch.report import Reporter
from magic3d.errors import InputError

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_ray_missing_gives_an_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n")
    with pytest.raises(InputError, match=r"pip install 'magic3d\[dist\]'"):
        run_batch(f, BatchOptions(out=tmp_path / "out", backend="ray"))


def test_ray_address_without_a_cluster_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n")
    with pytest.raises(InputError, match="ray start --head"):
        run_batch(f, BatchOptions(out=tmp_path / "out", backend="ray", address="auto"))


@pytest.mark.slow
def test_ray_actors_keep_the_prior_and_a_killed_or_hung_one_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    # The workers inherit this environment from the Ray instance started below.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(HERE)]))
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:fake_job")
    monkeypatch.setenv("MAGIC3D_BATCH_PLAN", "batch_fakes:fake_plan")
    monkeypatch.setenv("FAKE_STEPS", "2")
    monkeypatch.setenv("FAKE_STEP_S", "0.05")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    f = tmp_path / "p.txt"
    f.write_text("a red cube\ndie once please\na blue ball\nplease fail\nhang forever\na green cone\na gold ring\n")
    out = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rep = Reporter(quiet=True)
        # The clock runs from the claim, so it also covers Ray starting a worker process: on a loaded
        # 2-core machine that alone passed 8 s and failed the quick jobs as timed out.
        summary = run_batch(f, BatchOptions(out=out, backend="ray", retries=0, num_gpus=0, timeout=25), rep)
    finally:
        ray.shutdown()
    assert sorted(summary.done) == ["a-blue-ball", "a-gold-ring", "a-green-cone", "a-red-cube", "die-once-please"], (
        summary.failed)
    assert sorted(summary.failed) == ["hang-forever", "please-fail"]
    assert "asked to fail" in summary.failed["please-fail"]
    assert "timed out after 25 s" in summary.failed["hang-forever"]
    lost = [e for e in rep.events if e["event"] == "job_failed" and e["lost"]]
    assert [e["job"] for e in lost] == ["die-once-please"] and lost[0]["retry"]
    assert "WorkerCrashedError" in lost[0]["error"] or "died" in lost[0]["error"]
    start = next(e for e in rep.events if e["event"] == "batch_start")
    assert start["workers"] == 2  # capacity from the cluster's 2 CPUs
    completed = [line.split() for line in (out / "fake-log.txt").read_text().splitlines()]
    assert sorted(x[0] for x in completed) == sorted(summary.done)
    loads = (out / "prior-loads.txt").read_text().split()
    # Two actors at first, one more for each the crash and the timeout took down: each loaded the prior once.
    assert len(loads) == len(set(loads)) <= 4 and all(x[1] == x[3] and x[1] in loads for x in completed)
    assert len({x[1] for x in completed}) < len(completed)  # some actor ran more than one job
    assert (out / "world.usda").is_file()

