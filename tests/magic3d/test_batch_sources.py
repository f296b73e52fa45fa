"""Batch lines that start from something (issue 23: ``edit_from``, ``init_shape``, ``texture_mesh``),
``magic3d batch --from MODEL_DIR`` (issue 24) and ``--jobs-per-worker`` (issue 22).

Dispatch runs ``batch_fakes.planning_job``: each job is planned by its single command's planner
as the real job is, then a fake asset is written. One real end-to-end case per kind of run:
a texture line with the built-in prior, and a --from batch on a tiny amortized model."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest
import trimesh

from magic3d.batch import BatchOptions, run_batch
from magic3d.batch.cli import main as batch_main
from magic3d.errors import InputError

PLANNING_JOB = "batch_fakes:planning_job"


@pytest.fixture(autouse=True)
def planning_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", PLANNING_JOB)
    monkeypatch.delenv("MAGIC3D_BATCH_PLAN", raising=False)  # plain lines: the pipeline's own checks
    monkeypatch.setenv("FAKE_STEPS", "2")
    monkeypatch.setenv("FAKE_STEP_S", "0.01")


def finished_run(folder: Path, prompt: str = "a blue cube", seed: int = 4) -> Path:
    """What ``control.plan.finished_run`` accepts: run.json done, a baked mesh, a coarse checkpoint."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"prompt": prompt, "config": {}, "status": "done", "seed": seed}))
    (folder / "checkpoints" / "baked.glb").write_bytes(b"glb")
    (folder / "checkpoints" / "coarse-000002.safetensors").write_bytes(b"st")
    return folder


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A batch folder holding a finished run, a closed cube mesh, and bad things to point at."""
    root = tmp_path / "in"
    finished_run(root / "runs" / "a-blue-cube")
    (root / "meshes").mkdir()
    trimesh.creation.box().export(root / "meshes" / "cube.obj")
    (root / "meshes" / "notes.glb").write_text("not a mesh")
    unfinished = root / "runs" / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"prompt": "a red cube", "config": {}, "status": "running"}))
    return root


def jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d-batch", *argv])
    with pytest.raises(SystemExit) as exit_info:
        batch_main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


def test_each_control_kind_runs_from_what_its_line_names(tmp_path: Path, inputs: Path) -> None:
    f = jsonl(inputs / "batch.jsonl", [  # relative paths: from the batch file's folder
        {"prompt": "a red cube"},
        {"prompt": "a red cube", "edit_from": "runs/a-blue-cube", "keep": "geometry", "name": "edited"},
        {"prompt": "a green cube", "init_shape": "meshes/cube.obj", "seed": 7},
        {"prompt": "a yellow cube", "texture_mesh": str(inputs / "meshes" / "cube.obj")},
    ])
    out = tmp_path / "out"
    summary = run_batch(f, BatchOptions(out=out, overrides=("fine.steps=0",)))
    assert sorted(summary.done) == ["a-green-cube", "a-red-cube", "a-yellow-cube", "edited"]
    record = {j: json.loads((out / j / "run.json").read_text()) for j in summary.done}
    source, cube = str(inputs / "runs" / "a-blue-cube"), str(inputs / "meshes" / "cube.obj")
    assert record["edited"]["edited_from"] == {"run": source, "prompt": "a blue cube", "seed": 4, "keep": "geometry"}
    assert record["a-green-cube"]["control"]["init_shape"] == cube and record["a-green-cube"]["seed"] == 7
    assert record["a-yellow-cube"]["control"]["texture_mesh"] == cube
    plain = record["a-red-cube"]["control"]
    assert (plain["init_shape"], plain["texture_mesh"], plain["edit_from"]) == ("", "", "")
    assert all(len(r["control"]["source_sha256"]) == 64 for j, r in record.items() if j != "a-red-cube")
    with sqlite3.connect(out / "batch.sqlite") as db:
        rows = dict(db.execute("SELECT id, source FROM jobs").fetchall())
    assert json.loads(rows["edited"]) == {"kind": "edit_from", "path": source, "keep": "geometry"}
    assert rows["a-red-cube"] is None
    gallery = (out / "index.html").read_text()
    assert f"edited from {source} (keep geometry)" in gallery and f"init shape {cube}" in gallery
    # A line whose source changed is another job: refused, not resumed into.
    f2 = jsonl(inputs / "batch.jsonl", [{"prompt": "a green cube", "init_shape": "meshes/other.obj", "seed": 7}])
    trimesh.creation.icosphere().export(inputs / "meshes" / "other.obj")
    with pytest.raises(InputError, match="changed prompt, seed, preset or source"):
        run_batch(f2, BatchOptions(out=out, overrides=("fine.steps=0",)))


BAD_LINES = {
    "missing mesh": ({"prompt": "a red cube", "texture_mesh": "meshes/missing.obj"}, "missing.obj"),
    "text named .glb": ({"prompt": "a red cube", "init_shape": "meshes/notes.glb"}, "notes.glb"),
    "unfinished run": ({"prompt": "a red cube", "edit_from": "runs/unfinished"}, "has not finished"),
    "two sources": ({"prompt": "a red cube", "init_shape": "meshes/cube.obj", "texture_mesh": "meshes/cube.obj"},
                    "at most one of"),
    "unknown key": ({"prompt": "a red cube", "mesh": "meshes/cube.obj"}, "unknown key(s) ['mesh']"),
    "keep without edit": ({"prompt": "a red cube", "keep": "geometry"}, '"keep" applies only'),
    "bad keep": ({"prompt": "a red cube", "edit_from": "runs/a-blue-cube", "keep": "all"}, '"keep" must be one of'),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_control_line_is_refused_before_any_job(monkeypatch, capsys, tmp_path, inputs, case) -> None:
    bad, words = BAD_LINES[case]
    f = jsonl(inputs / "batch.jsonl", [{"prompt": "a blue cube", "init_shape": "meshes/cube.obj"}, bad])
    out = tmp_path / "out"
    code, err = cli(monkeypatch, capsys, str(f), "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "line 2:" in lines[0] and "line 1" not in lines[0] and words in lines[0], lines[0]
    assert not out.exists()


def test_a_prompt_file_read_for_its_prompts_only_refuses_source_lines(tmp_path: Path) -> None:
    from magic3d.batch.input import RunDefaults, read_batch_file

    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "a red cube"}, {"prompt": "a red cube", "init_shape": "m.obj"}])
    parsed = read_batch_file(f, RunDefaults(), use_default_plan=False)  # as ``magic3d amortize`` reads it
    assert [i.line for i in parsed.items] == [1]
    assert parsed.problems == [(2, '"init_shape" is for lines of magic3d batch; this file is read for its prompts')]


def fake_model(folder: Path, prior: str = "builtin") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"prior": prior, "prompts": ["a red cube"], "status": "done",
                                                   "preset": None, "overrides": []}))
    return folder


def test_from_refuses_another_prior_s_model_bad_prompts_and_lines_it_cannot_make(monkeypatch, capsys, tmp_path):
    f = jsonl(tmp_path / "p.jsonl", [{"prompt": "a red cube"}, {"prompt": "a blue cube"}])
    out = tmp_path / "out"
    other = fake_model(tmp_path / "sd-model", prior="stabilityai/stable-diffusion-2-1-base")
    ours = fake_model(tmp_path / "model")
    cases = [
        ((str(f), "--from", str(other), "--prior", "builtin"), "trained with prior"),
        ((str(f), "--from", str(tmp_path)), "not an amortized model folder"),
        ((str(f), "--from", str(ours), "--preset", "fast"), "--preset does not apply with --from"),
        ((str(jsonl(tmp_path / "q.jsonl", [{"prompt": "a red cube"}, {"prompt": "a purple dragon"}])), "--from",
          str(ours)), "line 2:"),
        ((str(jsonl(tmp_path / "r.jsonl", [{"prompt": "a red cube", "init_shape": "cube.obj"}])), "--from",
          str(ours)), 'line 1: "init_shape" does not apply with --from'),
    ]
    for argv, words in cases:
        code, err = cli(monkeypatch, capsys, *argv, "--out", str(out))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (argv, err)
        assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-3", "1000000001"])
def test_jobs_per_worker_out_of_range_is_refused(monkeypatch, capsys, tmp_path, value) -> None:
    f = tmp_path / "p.txt"
    f.write_text("a red cube\n")
    code, err = cli(monkeypatch, capsys, str(f), "--out", str(tmp_path / "out"), "--jobs-per-worker", value)
    assert code == 2 and err.startswith("error: --jobs-per-worker must be a whole number from 1 to"), err
    assert not (tmp_path / "out").exists()


def test_warm_workers_are_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from magic3d.batch.cli import register

    app = typer.Typer()
    register(app)
    help_text = " ".join(CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split())
    assert "--jobs-per-worker" in help_text and "Default: never" in help_text
    assert BatchOptions().jobs_per_worker is None
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:fake_job")
    f = tmp_path / "p.txt"
    f.write_text("a red cube\na blue cube\na green cube\n")
    out = tmp_path / "out"
    assert len(run_batch(f, BatchOptions(out=out)).done) == 3
    assert len((out / "prior-loads.txt").read_text().split()) == 1  # one worker, one prior load
    fresh = tmp_path / "fresh"
    assert len(run_batch(f, BatchOptions(out=fresh, jobs_per_worker=1)).done) == 3
    assert len(set((fresh / "prior-loads.txt").read_text().split())) == 3  # a process per job


# --- the real jobs -----------------------------------------------------------------------------

CONTROL_TINY = ("fine.steps=2", "fine.tet_resolution=32", "bake.texture_size=64", "export.preview=false",
                "export.formats=[glb,usdc]", "runtime.threads=1")


def test_a_texture_line_runs_the_real_pipeline_and_keeps_the_mesh(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    from exporters import load_asset

    monkeypatch.delenv("MAGIC3D_BATCH_JOB")
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cube.export(tmp_path / "cube.obj")
    f = jsonl(tmp_path / "b.jsonl", [{"prompt": "a red cube", "texture_mesh": "cube.obj"}])
    out = tmp_path / "out"
    summary = run_batch(f, BatchOptions(out=out, prior="builtin", device="cpu", overrides=CONTROL_TINY, retries=0))
    assert summary.done == ["a-red-cube"], summary.failed
    record = json.loads((out / "a-red-cube" / "run.json").read_text())
    assert record["config"]["control"]["texture_mesh"] == str(tmp_path / "cube.obj")
    asset = load_asset(out / "a-red-cube" / "asset.glb")
    got = np.unique(np.asarray(asset.vertices).round(9), axis=0)
    want = np.unique(np.asarray(cube.vertices) + [0.0, 0.5, 0.0], axis=0)  # the export frame: standing at height 0
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-6
    assert "a-red-cube" in (out / "index.html").read_text() and (out / "world.usda").is_file()


AMORTIZE_TINY = ["amortize.steps=2", "amortize.texture.steps=0", "amortize.prompts_per_step=2", "amortize.checkpoint_every=2",
                 "amortize.mapping.hidden=16", "coarse.resolution=16", "coarse.samples_per_ray=8",
                 "coarse.occupancy_every=2", "coarse.field.levels=2", "coarse.field.features_per_level=2",
                 "coarse.field.max_res=16", "coarse.field.hidden=16", "fine.tet_resolution=16", "bake.texture_size=32",
                 "export.preview=false", "export.formats=[usda,glb]"]


def test_from_a_model_every_line_shares_one_loaded_model(tmp_path: Path, monkeypatch) -> None:
    from magic3d.amortize.train import train

    (tmp_path / "train.txt").write_text("a red cube\na blue sphere\n")
    model = train(tmp_path / "train.txt", tmp_path / "model", prior="builtin", overrides=AMORTIZE_TINY,
                  device="cpu").model_dir
    monkeypatch.setenv("MAGIC3D_BATCH_JOB", "batch_fakes:counted_model_job")
    f = tmp_path / "p.txt"
    f.write_text("a blue sphere\na red cube\n")
    out = tmp_path / "out"
    summary = run_batch(f, BatchOptions(out=out, from_model=model, device="cpu", retries=0))
    assert summary.done == ["a-blue-sphere", "a-red-cube"], summary.failed
    assert len((out / "model-loads.txt").read_text().split()) == 1  # the worker loaded it once for both
    for slug in summary.done:
        record = json.loads((out / slug / "run.json").read_text())
        assert record["from"] == str(model) and record["unseen"] is False and record["metrics"]["faces"] > 0
        assert (out / slug / "asset.glb").stat().st_size > 0
    assert f"from model {model}" in (out / "index.html").read_text()


def test_a_manifest_from_before_sources_gains_the_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    from magic3d.batch import manifest as m
    from magic3d.batch.input import BatchItem
    from magic3d.batch.sources import JobSource

    old = m._SCHEMA.replace("    source TEXT,\n", "")
    assert old != m._SCHEMA
    with sqlite3.connect(tmp_path / m.MANIFEST_NAME) as db:
        db.executescript(old)
        db.execute("INSERT INTO jobs (id, position, line, prompt, state) VALUES ('a-red-cube', 0, 1, 'a red cube', 'done')")
    with m.Manifest(tmp_path) as manifest:
        cube = JobSource("init_shape", str(tmp_path / "cube.obj"))
        manifest.sync([BatchItem(1, "a red cube", "a-red-cube"), BatchItem(2, "a red cube", "shaped", source=cube)])
        jobs = {j.id: j for j in manifest.jobs()}
    assert jobs["a-red-cube"].state == "done" and jobs["a-red-cube"].source is None
    assert jobs["shaped"].source == cube and jobs["shaped"].state == "pending"
