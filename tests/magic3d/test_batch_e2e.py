"""``magic3d batch`` with the real pipeline on the built-in prior and tiny step counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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


def _prior_tensors(prior: object) -> dict[str, torch.Tensor]:
    """Every weight and buffer the prior holds, by name."""
    found: dict[str, torch.Tensor] = {}
    for name, value in vars(prior).items():
        if isinstance(value, torch.nn.Module):
            found |= {f"{name}.{k}": v for k, v in value.state_dict().items()}
        elif isinstance(value, torch.Tensor):
            found[name] = value
    return found


@pytest.mark.slow
def test_a_warm_worker_s_jobs_share_one_prior_that_no_run_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = pipeline_missing()
    if reason:
        pytest.skip(reason)
    import magic3d.pipeline as pipeline
    from magic3d.batch.job import PRIORS, run_job

    loads: list[str] = []
    real = pipeline.load_first_prior
    monkeypatch.setattr(pipeline, "load_first_prior", lambda cfg, device: loads.append(cfg.prior.id) or real(cfg, device))
    PRIORS.clear()
    options = {"out": str(tmp_path), "prior": "builtin", "overrides": list(TINY), "device": "cpu", "seed": 3}
    try:
        first = run_job({"id": "first", "prompt": "a red cube", "seed": None}, options)
        prior = PRIORS.value
        before = {k: v.clone() for k, v in _prior_tensors(prior).items()}
        run_job({"id": "between", "prompt": "a blue sphere", "seed": 5}, options)
        again = run_job({"id": "again", "prompt": "a red cube", "seed": None}, options)
        assert loads == ["builtin"] and PRIORS.value is prior  # loaded once for three jobs
        after = _prior_tensors(prior)
    finally:
        PRIORS.clear()
    assert before.keys() == after.keys() and len(before) > 10
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert first["metrics"]["coarse"] and again["metrics"] == first["metrics"]  # nothing of an earlier job carried over
