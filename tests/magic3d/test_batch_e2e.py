"""``magic3d batch`` with the real pipeline on the built-in prior and tiny step counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magic3d.batch import BatchOptions, run_batch
from magic3d.batch.report import Reporter

PROMPTS = ["a red cube", "a blue sphere", "a green torus", "a yellow cone", "a small red cylinder", "a big blue cube"]
TINY = (
    "coarse.steps=3", "coarse.resolution=16", "coarse.samples_per_ray=8", "coarse.checkpoint_every=2",
    "fine.steps=0", "bake.texture_size=32", "export.preview=false", "runtime.threads=1",
)


def pipeline_missing() -> str | None:
    """Why the real pipeline cannot run here yet, or None. Other errors are failures, not skips."""
    from magic3d.errors import ConfigError

    try:
        from magic3d.guidance.builtin import weights_available
        from magic3d.pipeline import plan_run

        plan_run("a red cube", out="/nonexistent/never-written", overrides=list(TINY), device="cpu")
    except ImportError as exc:
        return f"pipeline not assembled yet ({exc})"
    except ConfigError as exc:
        if "preset" not in str(exc):
            raise
        return f"built-in preset missing ({exc})"
    return None if weights_available() else "built-in prior weights missing"


def world_problems(path: Path) -> list[str]:
    """Compliance errors, and NVIDIA failures (its warnings on a 3-step mesh are not the batch's business)."""
    try:
        from exporters.validate import compliance_problems, nvidia_available, nvidia_problems
    except ImportError:
        from pxr import UsdUtils

        checker = UsdUtils.ComplianceChecker(arkit=False)
        checker.CheckCompliance(str(path))
        return [*checker.GetErrors(), *checker.GetFailedChecks()]
    return compliance_problems(path) + (nvidia_problems(path, "FAILURE") if nvidia_available() else [])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Use of UsdUtils.ComplianceChecker is deprecated")
def test_six_prompts_one_made_to_fail_then_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = pipeline_missing()
    if reason:
        pytest.skip(reason)
    from pxr import Usd

    monkeypatch.delenv("MAGIC3D_BATCH_PLAN", raising=False)
    monkeypatch.setenv("FAIL_JOB", "a-green-torus")
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    options = BatchOptions(out=out, prior="builtin", overrides=TINY, device="cpu", seed=3,
                           workers=2, retries=0, job_fn="batch_fakes:real_or_fail")
    first = run_batch(f, options, Reporter(quiet=True))
    assert sorted(first.failed) == ["a-green-torus"] and "made to fail" in first.failed["a-green-torus"]
    assert len(first.done) == 5
    for slug in first.done:
        record = json.loads((out / slug / "run.json").read_text())
        assert record["status"] == "done" and record["seed"] == 3
        for path in record["files"].values():
            assert (out / slug / path).is_file()
        log = (out / slug / "batch.log").read_text()
        assert "coarse" in log and "timings: load_prior" in log and "done:" in log  # what the job did
    assert "made to fail" in (out / "a-green-torus" / "batch.log").read_text()
    stage = Usd.Stage.Open(str(first.world), Usd.Stage.LoadNone)
    assert sorted(p.GetName() for p in stage.GetDefaultPrim().GetAllChildren()) == sorted(
        s.replace("-", "_") for s in first.done
    )
    assert world_problems(first.world) == []  # loads every payload: the exported assets are checked too

    monkeypatch.delenv("FAIL_JOB")
    rep = Reporter(quiet=True)
    second = run_batch(f, options, rep)
    assert [e["job"] for e in rep.events if e["event"] == "job_start"] == ["a-green-torus"]
    assert sorted(second.done) == sorted(s.replace(" ", "-") for s in PROMPTS) and not second.failed
