"""Issue 23's control commands on the built-in prior with tiny step counts: ``generate --init-shape``,
``magic3d texture`` and ``magic3d edit`` (what they keep, record and refuse). How well they follow
the prompt with real step counts is measured by scripts/eval_control.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from exporters import load_asset
from magic3d import cli

TINY = ["--set", "fine.tet_resolution=32", "--set", "bake.texture_size=64", "--set", "export.preview=false",
        "--set", "export.formats=[glb,obj,usdc]", "--set", "control.init_fit_steps=40"]


def run_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def run_cli_events(monkeypatch, capsys, *argv: str) -> tuple[int, list[dict], str]:
    """``magic3d ARGV --json``: exit code, the events on stdout (each checked against the schema), stderr."""
    import jsonschema

    from magic3d.command import __file__ as command_file

    schema = json.loads((Path(command_file).parent / "events.schema.json").read_text())
    monkeypatch.setattr(sys, "argv", ["magic3d", *argv, "--json"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    for event in events:
        jsonschema.validate(event, schema)
    return exit_info.value.code, events, captured.err


def cone_file(path):
    cone = trimesh.creation.cone(radius=0.6, height=1.3, sections=32)
    cone.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # Y up
    cone.export(path)
    return path


@pytest.fixture
def bad_files(tmp_path):
    text = tmp_path / "notes.glb"
    text.write_text("not a mesh")
    empty = tmp_path / "empty.obj"
    empty.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    box = trimesh.creation.box()
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2], process=False)
    holes = tmp_path / "open.obj"
    open_box.export(holes)
    return {"text": text, "empty": empty, "open": holes}


@pytest.mark.parametrize("which", ["text", "empty", "open", "missing"])
def test_texture_and_init_shape_refuse_bad_meshes_before_any_work(monkeypatch, capsys, tmp_path, bad_files, which):
    path = str(bad_files.get(which, tmp_path / "missing.stl"))
    out = tmp_path / "out"
    for argv in (["texture", path, "a red cube", "--out", str(out)],
                 ["generate", "a green cone", "--init-shape", path, "--out", str(out)]):
        code, err = run_cli(monkeypatch, capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert path in lines[0] or "notes.glb" in lines[0]
        assert not out.exists()


def test_control_commands_refuse_prompts_outside_the_vocabulary(monkeypatch, capsys, tmp_path):
    mesh = cone_file(tmp_path / "cone.obj")
    for argv in (["texture", str(mesh), "a plaid cone"], ["generate", "a plaid cone", "--init-shape", str(mesh)],
                 ["edit", str(tmp_path), "a plaid cone"]):
        code, err = run_cli(monkeypatch, capsys, *argv, "--out", str(tmp_path / "out"))
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_edit_refuses_unfinished_run_folders(monkeypatch, capsys, tmp_path):
    run = tmp_path / "a-blue-torus"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"prompt": "a blue torus", "status": "running", "config": {}}))
    for source in (run, tmp_path / "nowhere", tmp_path):
        code, err = run_cli(monkeypatch, capsys, "edit", str(source), "a red torus", "--out", str(tmp_path / "out"))
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    code, err = run_cli(monkeypatch, capsys, "edit", str(run), "a red torus", "--keep", "colour")
    assert code == 2 and "--keep" in err
    assert not (tmp_path / "out").exists()


def test_edit_and_texture_json_report_bad_input_as_an_error_event(monkeypatch, capsys, tmp_path, bad_files):
    for argv in (["edit", str(tmp_path / "nowhere"), "a red torus"], ["texture", str(bad_files["text"]), "a red cube"]):
        code, events, err = run_cli_events(monkeypatch, capsys, *argv, "--out", str(tmp_path / "out"))
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert [e["event"] for e in events] == ["run_start", "error"] and events[-1]["exit_code"] == 2
        assert events[-1]["message"] in err
    assert not (tmp_path / "out").exists()


def test_sketch_shape_loss_is_zero_on_the_shape_and_pulls_the_field_towards_it():
    import torch

    from magic3d.control.init_shape import density_occupancy, sketch_shape_loss

    sdf = torch.tensor([-0.5, -0.2, -0.01, 0.0, 0.01, 0.2, 0.5])
    inside = sdf < 0
    exact = torch.where(inside, torch.tensor(1e4), torch.tensor(0.0))  # opaque inside, empty outside
    assert sketch_shape_loss(density_occupancy(exact, 0.06), sdf, band=0.05) == 0.0
    density = torch.full_like(sdf, 2.0, requires_grad=True)  # half-full everywhere
    loss = sketch_shape_loss(density_occupancy(density, 0.06), sdf, band=0.05)
    assert loss > 0
    (grad,) = torch.autograd.grad(loss, density)
    assert (grad[sdf < -0.1] < 0).all() and (grad[sdf > 0.1] > 0).all()  # descent fills inside, empties outside
    # Next to the surface the shape has (almost) no say: SDS decides there.
    assert grad[3] == 0 and grad[2].abs() < 0.05 * grad[0].abs() and grad[4].abs() < 0.05 * grad[6].abs()
    # Outside, a NeRF's term is the step's optical depth: one known value.
    far = sketch_shape_loss(density_occupancy(torch.tensor([3.0]), 0.1), torch.tensor([1.0]), band=0.05)
    assert float(far) == pytest.approx(0.3 * (1 - np.exp(-200.0)), rel=1e-5)


def test_init_shape_adds_the_shape_loss_to_the_coarse_stage_and_holds_the_fine_sdf(tmp_path):
    import torch

    from magic3d.config import load_config
    from magic3d.control.init_shape import stage_start
    from magic3d.errors import ConfigError
    from magic3d.stages.coarse import CoarseModel

    cone = cone_file(tmp_path / "cone.obj")
    for bad in ("control.shape_weight=-1.0", "control.shape_weight=1e9", "control.shape_weight=nan",
                "control.init_fine_sdf_lr_scale=2.0"):
        with pytest.raises(ConfigError, match=bad.split(".")[1].split("=")[0]):
            load_config("builtin", [f"control.init_shape={cone}", bad])
    cpu = torch.device("cpu")
    blob = stage_start(load_config("builtin", []), cpu)  # from the blob: nothing added, the fine stage as configured
    assert blob.coarse_loss is None and blob.fine is None
    off = stage_start(load_config("builtin", [f"control.init_shape={cone}", "control.shape_weight=0"]), cpu)
    assert off.coarse_loss is None
    cfg = load_config("builtin", [f"control.init_shape={cone}", "control.init_fit_steps=40"])
    start = stage_start(cfg, cpu)
    assert start.fine.sdf_lr == 0.0 and start.fine.deform_lr == cfg.fine.deform_lr > 0 and cfg.fine.sdf_lr > 0
    model = CoarseModel(cfg.coarse, None, cpu, regulariser=start.coarse_loss)
    before, metrics = start.coarse_loss(model.field, torch.Generator().manual_seed(0))
    assert before.requires_grad and float(metrics["shape"]) == pytest.approx(float(before.detach()))
    start.init(model, torch.Generator().manual_seed(0))  # the fitted cone is nearer what the loss asks than the blob
    fitted, _ = start.coarse_loss(model.field, torch.Generator().manual_seed(0))
    assert 0 < fitted < before, (float(fitted), float(before))


def test_init_shape_fit_puts_the_mesh_in_the_coarse_density(tmp_path):
    import torch

    from magic3d.config import load_config
    from magic3d.control.init_shape import stage_start
    from magic3d.stages.coarse import CoarseModel

    cfg = load_config("builtin", [f"control.init_shape={cone_file(tmp_path / 'cone.obj')}",
                                  "control.init_fit_steps=40"])
    assert len(cfg.control.source_sha256) == 64
    model = CoarseModel(cfg.coarse, None, torch.device("cpu"))
    metrics = stage_start(cfg, torch.device("cpu")).init(model, torch.Generator().manual_seed(0))
    assert metrics["init_iou"] > 0.8, metrics
    with torch.no_grad():  # the cone's axis is full, the space beside its tip empty
        density = model.field.density(torch.tensor([[0.0, -0.2, 0.0], [0.5, 0.5, 0.0]]))
    assert density[0] > 2.0 and density[1] < 0.3, density


def test_texture_keeps_positions_and_faces_of_an_obj_and_the_uvs_of_a_glb(monkeypatch, capsys, tmp_path):
    cube = trimesh.creation.box(extents=(2.0, 1.0, 1.5))
    cube.apply_translation((3.0, 1.0, -2.0))
    cube.export(tmp_path / "cube.obj")
    code, err = run_cli(monkeypatch, capsys, "texture", str(tmp_path / "cube.obj"), "a red cube", "--out",
                        str(tmp_path / "out"), "--set", "fine.steps=2", *TINY)
    assert code == 0, err
    run = tmp_path / "out" / "cube-a-red-cube"
    record = json.loads((run / "run.json").read_text())
    assert record["metrics"]["uv"] == "xatlas" and record["config"]["export"]["size_m"] == 2.0
    shift = np.array([3.0, 0.5, -2.0])  # the documented frame: footprint centred, standing at height 0
    for name in ("asset.glb", "asset.obj"):
        asset = load_asset(run / name)
        welded, index = np.unique(np.round(asset.vertices, 9), axis=0, return_inverse=True)
        expected = np.unique(np.asarray(cube.vertices) - shift, axis=0)
        assert welded.shape == expected.shape and np.abs(welded - expected).max() < 1e-6
        tris = {tuple(sorted(map(tuple, welded[index.reshape(-1)[f]].round(6)))) for f in asset.faces}
        wanted = {tuple(sorted(map(tuple, (np.asarray(cube.vertices)[f] - shift).round(6)))) for f in cube.faces}
        assert tris == wanted
    # A GLB with its own atlas keeps it: same UVs per vertex, baked into.
    uv = np.random.default_rng(0).uniform(0.05, 0.95, (len(cube.vertices), 2))
    uv_cube = trimesh.Trimesh(cube.vertices, cube.faces, process=False,
                              visual=trimesh.visual.TextureVisuals(uv=uv))
    uv_cube.export(tmp_path / "uvcube.glb")
    code, events, err = run_cli_events(monkeypatch, capsys, "texture", str(tmp_path / "uvcube.glb"), "a red cube",
                                       "--out", str(tmp_path / "out"), "--set", "fine.steps=2", "--size", "1", *TINY)
    assert code == 0, err
    run = tmp_path / "out" / "uvcube-a-red-cube"
    assert events[0] == {**events[0], "event": "run_start", "prompt": "a red cube"}
    assert events[-1]["event"] == "run_done" and Path(events[-1]["files"]["glb"]) == run / "asset.glb"
    assert [(e["stage"], e["step"]) for e in events if e["event"] == "progress"] == [("texture", 1), ("texture", 2)]
    assert json.loads((run / "run.json").read_text())["metrics"]["uv"] == "own"
    asset = load_asset(run / "asset.glb")
    order = np.lexsort(np.asarray(asset.vertices).T)
    source = np.lexsort(((np.asarray(cube.vertices) - shift) / 2.0).T)
    assert np.abs(np.asarray(asset.visual.uv)[order] - uv[source]).max() < 1e-6
    assert np.ptp(np.asarray(asset.vertices), axis=0).max() == pytest.approx(1.0)


@pytest.mark.slow
def test_init_shape_then_edit_keeps_the_source_and_records_it(monkeypatch, capsys, tmp_path):
    cone = cone_file(tmp_path / "cone.obj")
    out = tmp_path / "out"
    code, err = run_cli(monkeypatch, capsys, "generate", "a green cone", "--init-shape", str(cone), "--out", str(out),
                        "--set", "coarse.steps=0", "--set", "fine.steps=0", *TINY, "--quiet")
    assert code == 0, err
    source = out / "a-green-cone"
    record = json.loads((source / "run.json").read_text())
    assert record["config"]["control"]["init_shape"] == str(cone)
    from magic3d.guidance.builtin_world import recognise_kind

    kind, scores = recognise_kind(load_asset(source / "asset.glb"))
    assert kind == "cone" and scores["cone"] > 0.8, scores
    # coarse.steps=0 made no coarse checkpoint: give the edit one by a 2-step run of the same shape.
    code, err = run_cli(monkeypatch, capsys, "generate", "a green cone", "--init-shape", str(cone), "--out", str(out),
                        "--set", "coarse.steps=2", "--set", "fine.steps=0", *TINY, "--quiet", "--restart")
    assert code == 0, err
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    edits = tmp_path / "edits"
    code, err = run_cli(monkeypatch, capsys, "edit", str(source), "a red cone", "--keep", "geometry", "--out",
                        str(edits), "--set", "fine.steps=2", "--quiet")
    assert code == 0, err
    edited = json.loads((edits / "a-red-cone" / "run.json").read_text())
    assert edited["edited_from"] == {"run": str(source), "prompt": "a green cone", "seed": 0, "keep": "geometry"}
    data = (edits / "a-red-cone" / "asset.glb").read_bytes()
    gltf = json.loads(data[20:20 + int.from_bytes(data[12:16], "little")])  # the GLB's JSON chunk
    assert gltf["asset"]["extras"]["edited_from"] == f"{source} (a green cone, seed 0)"
    kept = load_asset(edits / "a-red-cone" / "asset.glb")
    src = load_asset(source / "asset.glb")
    assert np.allclose(np.sort(np.unique(kept.vertices.round(6), axis=0), 0),
                       np.sort(np.unique(src.vertices.round(6), axis=0), 0), atol=1e-5)
    code, events, err = run_cli_events(monkeypatch, capsys, "edit", str(source), "a green sphere", "--keep", "none",
                                       "--steps", "2", "--out", str(edits), "--set", "fine.steps=0")
    assert code == 0, err
    assert [e["step"] for e in events if e["event"] == "progress" and e["stage"] == "coarse"][-1] == 2
    assert events[-1]["event"] == "run_done" and events[-1]["run_dir"] == str(edits / "a-green-sphere")
    assert json.loads((edits / "a-green-sphere" / "run.json").read_text())["metrics"]["coarse"]["edit_source_step"] == 2
    assert before == {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}  # the source is never written
