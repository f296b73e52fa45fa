"""Checkpoints: exact round trips, RNG states, keeping two, and falling back past damaged files."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from magic3d.checkpoint import (
    list_checkpoints,
    load_latest_checkpoint,
    load_optimizer,
    optimizer_tensors,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)


def trained_adam():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    q = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.Adam([{"params": [p], "lr": 0.1}, {"params": [q], "lr": 0.01}])
    for _ in range(3):
        opt.zero_grad()
        (p.square().sum() + q.sin().sum()).backward()
        opt.step()
    return p, q, opt


def test_round_trip_of_tensors_state_and_optimizer(tmp_path):
    p, q, opt = trained_adam()
    tensors, opt_state = optimizer_tensors(opt)
    path = save_checkpoint(tmp_path, "coarse", 7, {"field/p": p, "field/q": q, **tensors},
                           {**opt_state, "metrics": {"loss": 0.5}})
    assert path.name == "coarse-000007.safetensors" and path.with_suffix(".json").is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["step"] == 7 and len(sidecar["sha256"]) == 64

    ck = load_latest_checkpoint(tmp_path, "coarse")
    assert ck is not None and ck.step == 7 and ck.stage == "coarse" and ck.state["metrics"] == {"loss": 0.5}
    assert torch.equal(ck.tensors["field/p"], p.detach()) and torch.equal(ck.tensors["field/q"], q.detach())

    p2 = torch.nn.Parameter(ck.tensors["field/p"].clone())
    q2 = torch.nn.Parameter(ck.tensors["field/q"].clone())
    opt2 = torch.optim.Adam([{"params": [p2], "lr": 1.0}, {"params": [q2], "lr": 1.0}])
    load_optimizer(opt2, ck.tensors, ck.state)
    assert [g["lr"] for g in opt2.param_groups] == [0.1, 0.01]
    # One more step from the restored state equals one more step of the original.
    for params, o in (((p, q), opt), ((p2, q2), opt2)):
        o.zero_grad()
        (params[0].square().sum() + params[1].sin().sum()).backward()
        o.step()
    assert torch.equal(p, p2) and torch.equal(q, q2)


def test_keeps_only_the_last_two(tmp_path):
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, "coarse", step, {"x": torch.full((2,), float(step))}, {})
    save_checkpoint(tmp_path, "fine", 5, {"x": torch.zeros(1)}, {})
    assert [p.name for p in list_checkpoints(tmp_path, "coarse")] == ["coarse-000020.safetensors",
                                                                      "coarse-000030.safetensors"]
    assert not (tmp_path / "coarse-000010.json").exists()
    assert load_latest_checkpoint(tmp_path, "fine").step == 5
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "bad_json"])
def test_damaged_newest_falls_back_to_previous_with_warning(tmp_path, damage):
    save_checkpoint(tmp_path, "coarse", 1, {"x": torch.ones(1000)}, {})
    newest = save_checkpoint(tmp_path, "coarse", 2, {"x": torch.full((1000,), 2.0)}, {})
    if damage == "truncate":
        data = newest.read_bytes()
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data = bytearray(newest.read_bytes())
        data[-5] ^= 0xFF
        newest.write_bytes(bytes(data))
    elif damage == "no_sidecar":
        newest.with_suffix(".json").unlink()
    else:
        newest.with_suffix(".json").write_text("{not json")
    with pytest.warns(UserWarning, match="coarse-000002"):
        ck = load_latest_checkpoint(tmp_path, "coarse")
    assert ck is not None and ck.step == 1 and torch.equal(ck.tensors["x"], torch.ones(1000))


def test_all_damaged_or_none_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path / "missing", "coarse") is None
    path = save_checkpoint(tmp_path, "coarse", 1, {"x": torch.ones(3)}, {})
    path.write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_latest_checkpoint(tmp_path, "coarse") is None


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(4)
    np.random.seed(5)
    random.seed(6)
    tensors, state = rng_state(gen)
    save_checkpoint(tmp_path, "coarse", 1, tensors, {"rng": state})
    expected = (torch.rand(4, generator=gen), torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    # Scramble every source, then restore from disk.
    gen.manual_seed(99)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    ck = load_latest_checkpoint(tmp_path, "coarse")
    restore_rng_state(ck.tensors, ck.state["rng"], gen)
    got = (torch.rand(4, generator=gen), torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert np.array_equal(got[2], expected[2]) and got[3] == expected[3]


def test_checkpoints_are_not_pickles(tmp_path):
    path = save_checkpoint(tmp_path, "coarse", 1, {"x": torch.ones(3)}, {"note": "plain"})
    head = path.read_bytes()[:16]
    assert not head.startswith(b"\x80") and not head.startswith(b"PK"), "looks like a pickle/zip torch.save file"


def test_a_rerun_sweeps_the_temp_files_killed_writers_left(tmp_path, monkeypatch):
    from exporters.common import TEMP_NAME, atomic_output
    from magic3d import pipeline
    from magic3d.config import load_config
    from magic3d.errors import RunError

    with atomic_output(tmp_path / "probe" / "run.json") as tmp:  # the names the sweep looks for
        assert TEMP_NAME.match(tmp.name)
    run_dir = tmp_path / "out" / "a-red-cube"
    stale = [run_dir / ".run.json.k3j2x9aq.tmp.json",
             run_dir / "checkpoints" / ".coarse-000002.safetensors.a_b1c2d3.tmp.safetensors",
             run_dir / "textures" / ".albedo.png.Zz09abcd.tmp.png"]
    kept = [run_dir / ".notes.tmp", run_dir / "asset.tmp.usda", run_dir / "mine.txt"]
    for p in stale + kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")

    def stop(*args, **kwargs):
        raise RunError("stop after the sweep")

    monkeypatch.setattr(pipeline, "run_stages", stop)
    with pytest.raises(RunError):
        pipeline.run_planned("a red cube", load_config("builtin"), run_dir)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_tensor_files_are_written_whole_under_names_the_sweep_knows(tmp_path, monkeypatch):
    """A writer killed mid-file must leave only a temp name the resume sweep removes."""
    import os

    from exporters.common import TEMP_NAME

    renamed: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):
        renamed.append((Path(src).name, Path(dst).name))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    path = save_checkpoint(tmp_path, "coarse", 3, {"x": torch.arange(4.0)}, {"k": 1})
    assert [dst for _, dst in renamed] == [path.name, path.with_suffix(".json").name]
    assert all(TEMP_NAME.match(src) for src, _ in renamed)
    assert load_file(str(path))["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_no_module_writes_tensors_with_safetensors_save_file():
    """safetensors' save_file writes its own ``.tmpXXXXXX`` beside the target before renaming it,
    a name our sweep does not know, so a kill at that moment leaves litter in the run folder
    (seen in the kill-and-resume test). Every tensor file goes through atomic_write_tensors."""
    import ast

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for source in [*(root / "magic3d").rglob("*.py"), *(root / "exporters").rglob("*.py")]:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("safetensors"):
                offenders += [f"{source.relative_to(root)}:{node.lineno}" for a in node.names if a.name == "save_file"]
    assert offenders == []
