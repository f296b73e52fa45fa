"""Refused input and ``--help`` never import torch, numpy, the model libraries, the writers or the pipeline.

Each command runs in a fresh interpreter through ``magic3d.cli.main``; an ``atexit`` hook (set
before magic3d is imported) writes the names in ``sys.modules`` to a file when the process ends,
so whatever was imported on the way to the error is seen, whoever imported it. A control case
(a mesh file only the readers can refuse) shows that the hook does see what was loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "diffusers", "transformers", "nerfstudio", "trimesh", "pxr", "magic3d.pipeline")

# Runs the CLI as the console script does; the module list is written however the process exits.
RUN_CLI = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["magic3d", *sys.argv[1:]]
from magic3d.cli import main
main()
"""

# Every refusal below in one interpreter, each reported with the modules it added.
SWEEP = """
import contextlib, io, json, sys
from magic3d.cli import app
from magic3d.console import run_app
results = []
for argv in json.loads(sys.argv[1]):
    before, err = set(sys.modules), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_app(app, argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "new": sorted(set(sys.modules) - before)})
print(json.dumps(results))
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), MODULES_OUT=str(tmp_path / "modules.json"), HF_HUB_OFFLINE="1")


def run_cli(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    r = subprocess.run([sys.executable, "-c", RUN_CLI, *args], cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=120)
    return r, set(json.loads((tmp_path / "modules.json").read_text()))


def heavy(modules: set[str] | list[str]) -> list[str]:
    return [m for m in HEAVY if m in modules]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("in the way\n")
    (tmp_path / "bad.yaml").write_text("coarse: [\n")
    (tmp_path / "bad.txt").write_text("a red cube\na purple dragon\n")
    (tmp_path / "ok.txt").write_text("a red cube\n")
    return tmp_path


def assert_refused(code: int, stderr: str, what: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, f"{what}: exit {code}, stderr {stderr!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: {stderr!r}"


GENERATE = ["generate", "a red cube", "--out", "out"]
CASES = {
    "prompt": (["generate", "a purple dragon", "--out", "out"], "does not know dragon"),
    "key": ([*GENERATE, "--set", "coarse.stepz=3"], "'coarse.stepz' is unknown"),
    "value": ([*GENERATE, "--set", "coarse.lr=nan"], "must be a finite number"),
    "preset": ([*GENERATE, "--preset", "nope"], "Unknown preset 'nope'"),
    "path": (["generate", "a red cube", "--out", "afile"], "'afile' is a file, not a folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refusal_never_imports_torch(files: Path, case: str) -> None:
    argv, words = CASES[case]
    r, modules = run_cli(files, *argv)
    assert_refused(r.returncode, r.stderr, case)
    assert words in r.stderr
    assert heavy(modules) == [], f"refusing a bad {case} imported {heavy(modules)}"
    assert not (files / "out").exists()  # refused before anything was written


# Every other refusal of the CLI that needs no model: one interpreter, each case's imports apart.
SWEEP_CASES = [
    [*GENERATE, "--set", "coarse.steps=-1"],
    [*GENERATE, "--set", "coarse.steps=abc"],
    [*GENERATE, "--set", "coarse.sds.t_min=0.9", "--set", "coarse.sds.t_max=0.5"],
    [*GENERATE, "--set", "noequals"],
    [*GENERATE, "--preset", "bad.yaml"],
    [*GENERATE, "--preset", "missing.yaml"],
    [*GENERATE, "--seed", "-1"],
    [*GENERATE, "--device", "tpu"],
    [*GENERATE, "--prior", "not a hub id"],
    [*GENERATE, "--prior", "./no-such-folder"],
    [*GENERATE, "--json", "--set", "coarse.stepz=3"],
    ["generate", "", "--out", "out"],
    ["generate", "a red cube", "--out", ""],
    ["generate", "a red cube", "--out", "afile/below"],
    ["export", "no-such-run"],
    ["export", "afile"],
    ["convert", "missing.glb"],
    ["convert", "afile", "--format", "xyz"],
    ["convert", "afile.stl", "--up-axis", "X"],
    ["preview", "missing.glb"],
    ["batch", "missing.txt", "--out", "out"],
    ["batch", "bad.txt", "--out", "out"],
    ["batch", "ok.txt", "--out", "out", "--workers", "0"],
    ["batch", "ok.txt", "--out", "out", "--set", "coarse.lr=nan"],
    ["batch", "ok.txt", "--out", "out", "--backend", "slurm"],
    ["batch", "ok.txt", "--out", "out", "--jobs-per-worker", "0"],
    ["batch", "ok.txt", "--out", "out", "--from", "."],
]


def test_every_other_refusal_is_one_line_and_imports_nothing_heavy(files: Path) -> None:
    r = subprocess.run([sys.executable, "-c", SWEEP, json.dumps(SWEEP_CASES)], cwd=files, env=_env(files),
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    assert len(results) == len(SWEEP_CASES)
    for result in results:
        what = " ".join(result["argv"])
        assert_refused(result["code"], result["stderr"], what)
        assert heavy(result["new"]) == [], f"{what!r} imported {heavy(result['new'])}"
    assert not (files / "out").exists()


def test_help_of_every_command_never_imports_torch(tmp_path: Path) -> None:
    from typer.main import get_command

    from magic3d.cli import app

    # Commands other modules register (register(app)) are found, not listed here.
    commands = sorted(get_command(app).commands)
    assert {"generate", "export", "convert", "preview", "info", "batch"} <= set(commands)
    r = subprocess.run([sys.executable, "-c", SWEEP, json.dumps([["--help"]] + [[c, "--help"] for c in commands])],
                       cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for result in json.loads(r.stdout):
        assert result["code"] == 0, result
        assert heavy(result["new"]) == [], f"{' '.join(result['argv'])} imported {heavy(result['new'])}"


def test_the_hook_sees_what_a_refusal_after_reading_imports(files: Path) -> None:
    # A file that only the mesh readers can refuse: they (trimesh) are loaded, and the hook says so.
    (files / "junk.stl").write_text("not a mesh\n")
    r, modules = run_cli(files, "convert", "junk.stl", "--out", "out")
    assert_refused(r.returncode, r.stderr, "convert junk.stl")
    assert "trimesh" in heavy(modules)


def test_checks_import_without_torch() -> None:
    code = ("import sys, magic3d, magic3d.plan, magic3d.config, magic3d.guidance, magic3d.batch.input, "
            "magic3d.guidance.builtin_words; print(json.dumps(sorted(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", "import json; " + code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert heavy(json.loads(r.stdout)) == []
    import magic3d

    assert callable(magic3d.generate)  # the public API stays, imported on use


def test_the_export_formats_checked_before_the_writers_load_are_theirs() -> None:
    from exporters import FORMATS
    from magic3d.config import EXPORT_FORMATS

    assert tuple(EXPORT_FORMATS) == tuple(FORMATS)


def test_a_gpu_asked_for_where_none_can_be_is_refused_without_torch(tmp_path: Path, monkeypatch) -> None:
    # CUDA_VISIBLE_DEVICES="" hides every GPU on any machine, so this holds with a GPU too.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    r, modules = run_cli(tmp_path, *GENERATE, "--device", "cuda")
    assert_refused(r.returncode, r.stderr, "--device cuda")
    assert "no CUDA GPU is visible" in r.stderr
    assert heavy(modules) == [], f"refusing --device cuda imported {heavy(modules)}"
    assert not (tmp_path / "out").exists()


def test_without_torch_loaded_the_gpu_check_reads_the_environment(monkeypatch) -> None:
    from magic3d.plan import no_cuda_without_torch

    for hidden in ("", "-1", " "):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert no_cuda_without_torch()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr("os.path.exists", lambda p: p == "/dev/nvidiactl")
    assert not no_cuda_without_torch()  # a device node: only torch can tell
