"""No write escapes --out: links planted at or inside a run folder are refused, never followed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from magic3d import cli
from magic3d.errors import InputError
from magic3d.storage import atomic_write_text, check_run_folder, confined


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): (p.lstat().st_size if p.is_file() else -1) for p in root.rglob("*")}


def run_cli(argv, capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("where", ["", "checkpoints", "Payload", "thumbnails", "cache"])
def test_generate_refuses_a_run_folder_holding_a_link_and_writes_nothing_through_it(where, tmp_path, capsys, monkeypatch):
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = out / "a-red-cube"
    if where:
        run.mkdir(parents=True)
        (run / where).symlink_to(elsewhere, target_is_directory=True)
    else:
        out.mkdir()
        run.symlink_to(elsewhere, target_is_directory=True)
    before = tree(tmp_path)
    code, err = run_cli(["generate", "a red cube", "--prior", "builtin", "--out", str(out),
                         "--set", "coarse.steps=2", "--set", "fine.steps=0"], capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "is a link" in lines[0] and len(lines[0]) <= 300
    assert repr(str(run / where if where else run)) in lines[0]
    assert tree(tmp_path) == before  # nothing written anywhere: not in the run, not through the link
    assert list(elsewhere.iterdir()) == []


def test_a_link_planted_after_the_check_stops_the_write_and_nothing_lands_outside(tmp_path):
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (root / "run").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "run" / "textures").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InputError, match="is a link") as info:
        with confined(root):
            atomic_write_text(root / "run" / "textures" / "albedo.png", "x")
    assert "textures" in str(info.value)
    assert list(elsewhere.iterdir()) == []
    # A link deeper down, below a folder made in the same block, is caught too.
    with pytest.raises(InputError):
        with confined(root):
            atomic_write_text(root / "run" / "new" / "ok.txt", "fine")
            (root / "run" / "new" / "deep").symlink_to(elsewhere, target_is_directory=True)
            atomic_write_text(root / "run" / "new" / "deep" / "x.txt", "no")
    assert (root / "run" / "new" / "ok.txt").read_text() == "fine"
    assert list(elsewhere.iterdir()) == []


def test_paths_that_leave_the_root_are_refused_even_without_a_link(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(InputError, match="outside"):
        with confined(root):
            atomic_write_text(root / ".." / "escaped.txt", "no")
    assert not (tmp_path / "escaped.txt").exists()


def test_a_link_to_a_file_inside_a_run_folder_is_refused(tmp_path):
    run = tmp_path / "out" / "run"
    run.mkdir(parents=True)
    (tmp_path / "secret.json").write_text("{}")
    (run / "run.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(InputError, match="run.json"):
        check_run_folder(run)
    check_run_folder(tmp_path / "out" / "missing")  # a folder that does not exist yet is fine


def test_export_refuses_a_finished_run_with_a_link_inside(tmp_path, capsys, monkeypatch):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    (run / "checkpoints").mkdir(parents=True)
    elsewhere.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "done", "prompt": "a red cube", "config": {"export": {}}}))
    (run / "checkpoints" / "baked.glb").write_bytes(b"not really")
    (run / "textures").symlink_to(elsewhere, target_is_directory=True)
    code, err = run_cli(["export", str(run), "--format", "usdc"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and "textures" in err and "is a link" in err
    assert list(elsewhere.iterdir()) == []


def test_the_output_folder_itself_may_be_a_link(tmp_path):
    real = tmp_path / "disk"
    real.mkdir()
    out = tmp_path / "out"
    out.symlink_to(real, target_is_directory=True)
    with confined(out):
        atomic_write_text(out / "run" / "run.json", "{}")
    assert (real / "run" / "run.json").read_text() == "{}"
    assert os.path.islink(out)
