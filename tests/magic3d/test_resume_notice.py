"""A resume says where it picks up; a finished run's re-run says it did no work."""

from __future__ import annotations

import sys

import pytest

from magic3d import cli, pipeline

OVERRIDES = ["coarse.steps=6", "coarse.checkpoint_every=2", "fine.steps=0", "bake.texture_size=64",
             "export.formats=glb", "export.preview=false"]
SETTINGS = ["--prior", "builtin", "--seed", "2", *(a for o in OVERRIDES for a in ("--set", o))]


def run_cli(argv, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


@pytest.mark.slow
def test_a_killed_run_says_where_it_resumes_and_a_finished_one_that_it_did_nothing(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    real = pipeline.run_stages

    def killed_after_step_3(*args, **kwargs):
        def progress(stage, step, total, loss):
            if stage == "coarse" and step == 3:  # the step-2 checkpoint is on disk
                raise Killed()
        return real(*args, **{**kwargs, "progress": progress})

    monkeypatch.setattr(pipeline, "run_stages", killed_after_step_3)
    with pytest.raises(Killed):
        pipeline.generate("a red cube", out=out, prior="builtin", overrides=OVERRIDES, seed=2)
    monkeypatch.setattr(pipeline, "run_stages", real)
    capsys.readouterr()

    code, err = run_cli(["generate", "a red cube", "--out", out, *SETTINGS], capsys, monkeypatch)
    assert code == 0, err
    assert "Resuming" in err and "the coarse stage at step 2 of 6" in err

    code, err = run_cli(["generate", "a red cube", "--out", out, *SETTINGS], capsys, monkeypatch)
    assert code == 0 and "already finished: nothing was run" in err
    code, err = run_cli(["generate", "a red cube", "--out", out, "--quiet", *SETTINGS], capsys, monkeypatch)
    assert code == 0 and err == ""  # --quiet prints only the result paths
