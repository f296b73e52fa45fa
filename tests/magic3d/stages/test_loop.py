"""The shared optimisation loop with a tiny stand-in model: resume, rollback, divergence, previews."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magic3d.errors import RunError
from magic3d.stages.loop import LoopSpec, run_loop


class Quadratic:
    """Fits w to noisy targets drawn from the loop's generator, so RNG restore matters."""

    def __init__(self, nan_at: set[int] | None = None, nan_times: int = 1) -> None:
        self.w = torch.nn.Parameter(torch.zeros(8))
        self.nan_at, self.nan_left = nan_at or set(), nan_times
        self.calls: list[int] = []

    def param_groups(self):
        return [{"params": [self.w], "lr": 0.05}]

    def state_tensors(self):
        return {"w": self.w}

    def load_state_tensors(self, tensors):
        with torch.no_grad():
            self.w.copy_(tensors["w"])

    def step(self, step, ratio, generator):
        self.calls.append(step)
        target = 1.0 + 0.1 * torch.randn(8, generator=generator)
        loss = (self.w - target).square().sum()
        if step in self.nan_at and self.nan_left > 0:
            self.nan_left -= 1
            loss = loss * float("nan")
        return loss, {"ratio": ratio}

    def after_step(self, step, generator):
        pass

    def preview(self):
        return np.full((4, 6, 3), 128, np.uint8)


def run(tmp_path, steps, model=None, resume=True, every=3):
    model = model or Quadratic()
    gen = torch.Generator().manual_seed(0)
    result = run_loop(model, LoopSpec("coarse", steps, every, preview_every=5), tmp_path, gen, resume=resume)
    return model, result


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    straight, _ = run(tmp_path / "a", 10)
    run(tmp_path / "b", 6)  # "killed" after its step-6 checkpoint
    resumed, result = run(tmp_path / "b", 10)
    assert result.resumed_from == 6 and resumed.calls == [6, 7, 8, 9]
    assert torch.equal(straight.w, resumed.w)
    assert (tmp_path / "b" / "previews" / "coarse-000010.png").is_file()


def test_resume_false_starts_over(tmp_path):
    run(tmp_path, 6)
    model, result = run(tmp_path, 6, resume=False)
    assert result.resumed_from == 0 and model.calls == list(range(6))


def test_nan_once_rolls_back_with_lower_lr(tmp_path):
    progress = []
    model = Quadratic(nan_at={4})
    gen = torch.Generator().manual_seed(0)
    result = run_loop(model, LoopSpec("coarse", 8, 3), tmp_path, gen,
                      progress=lambda *a: progress.append(a))
    # Steps 3 and 4 ran, step 4 was non-finite, so training went back to the step-3 checkpoint.
    assert model.calls == [0, 1, 2, 3, 4, 3, 4, 5, 6, 7]
    assert torch.isfinite(model.w).all() and result.steps == 8
    assert all(np.isfinite(loss) for *_, loss in progress)
    from magic3d.checkpoint import load_latest_checkpoint

    ck = load_latest_checkpoint(tmp_path / "checkpoints", "coarse")
    assert ck.state["lr_scale"] == 0.5 and ck.state["nan_events"] == 1
    assert ck.state["param_groups"][0]["lr"] == pytest.approx(0.025)


def test_nan_before_any_checkpoint_rolls_back_to_the_start(tmp_path):
    model = Quadratic(nan_at={1})
    run(tmp_path, 4, model=model, every=100)
    assert model.calls == [0, 1, 0, 1, 2, 3]


def test_nan_twice_is_a_clear_run_error(tmp_path):
    model = Quadratic(nan_at={4}, nan_times=2)
    with pytest.raises(RunError, match="diverged twice"):
        run(tmp_path, 8, model=model)


class InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("inf"))


def test_non_finite_parameters_are_caught_too(tmp_path):
    class Exploding(Quadratic):
        def step(self, step, ratio, generator):
            loss, m = super().step(step, ratio, generator)
            if step == 2:  # a finite loss whose gradient is infinite: only the parameter check sees it
                loss = loss + InfGrad.apply(self.w).sum() * 0.0
            assert torch.isfinite(loss)
            return loss, m

    with pytest.raises(RunError, match="diverged twice"):
        run(tmp_path, 5, model=Exploding())


def test_a_resume_writes_the_final_preview_a_kill_lost(tmp_path):
    run(tmp_path, 9)  # killed after the step-9 checkpoint, before its preview was written
    final = tmp_path / "previews" / "coarse-000009.png"
    final.unlink()
    model, result = run(tmp_path, 9)
    assert model.calls == [] and result.resumed_from == 9  # no step reruns...
    assert final.is_file()  # ...but the stage's promised output is back


def tamper(sidecar_path, **changes):
    import json

    sidecar = json.loads(sidecar_path.read_text())
    for key, value in changes.items():
        if key == "param_groups":
            sidecar["state"]["param_groups"] = value
        else:
            sidecar[key] = value
    sidecar_path.write_text(json.dumps(sidecar))


@pytest.mark.parametrize("damage", ["step past the stage", "step unlike its name", "optimizer groups",
                                    "tensor shape"])
def test_a_tampered_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(damage, tmp_path):
    from safetensors.torch import load_file, save_file

    from magic3d.checkpoint import sha256

    straight, _ = run(tmp_path / "a", 10)
    run(tmp_path / "b", 6)  # checkpoints at steps 3 and 6
    newest = tmp_path / "b" / "checkpoints" / "coarse-000006.safetensors"
    sidecar = newest.with_suffix(".json")
    if damage == "step past the stage":
        tamper(sidecar, step=99)
        newest.rename(newest.with_name("coarse-000099.safetensors"))
        sidecar.rename(sidecar.with_name("coarse-000099.json"))
    elif damage == "step unlike its name":
        tamper(sidecar, step=9)
    elif damage == "optimizer groups":
        tamper(sidecar, param_groups=[{"lr": 1.0, "params": [0, 1, 2]}])
    else:
        tensors = load_file(str(newest))
        tensors["w"] = torch.zeros(3)
        save_file(tensors, str(newest))
        tamper(sidecar, sha256=sha256(newest))
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        resumed, result = run(tmp_path / "b", 10)
    assert result.resumed_from == 3 and resumed.calls == [3, 4, 5, 6, 7, 8, 9]
    assert torch.equal(straight.w, resumed.w)  # the older checkpoint resumes exactly


def test_when_every_checkpoint_is_unusable_the_stage_starts_over_from_its_own_start(tmp_path):
    straight, _ = run(tmp_path / "a", 6)
    run(tmp_path / "b", 6)
    for sidecar in (tmp_path / "b" / "checkpoints").glob("*.json"):
        tamper(sidecar, param_groups=[])
    with pytest.warns(UserWarning):
        again, result = run(tmp_path / "b", 6)
    assert result.resumed_from == 0 and again.calls == list(range(6))
    assert torch.equal(straight.w, again.w)
