"""Amortized generation with the built-in prior at tiny sizes: training, generate --from,
interpolate, resume, bad input, and that the conditioning really picks the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# No texture stage (the preset's 800 steps) unless a test adds TEXTURE below.
TINY = ["amortize.steps=4", "amortize.texture.steps=0", "amortize.prompts_per_step=2", "amortize.checkpoint_every=2",
        "amortize.mapping.hidden=16",
        "coarse.resolution=16", "coarse.samples_per_ray=8", "coarse.occupancy_every=2", "coarse.field.levels=2",
        "coarse.field.features_per_level=2", "coarse.field.max_res=16", "coarse.field.hidden=16",
        "fine.tet_resolution=16", "bake.texture_size=32", "export.preview_frames=2", "export.preview_resolution=32",
        "export.formats=[usda,glb]"]
PROMPTS = "a red cube\na blue sphere\n# a comment\na red cube\n"


def cli(*args: str, module: str = "magic3d.amortize.cli") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=600)


def sets(overrides: list[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from magic3d.amortize.train import train

    root = tmp_path_factory.mktemp("amortize")
    (root / "prompts.txt").write_text(PROMPTS)
    result = train(root / "prompts.txt", root / "model", prior="builtin", overrides=TINY, device="cpu")
    assert result.steps == 4
    return result.model_dir


def test_model_folder_records_prior_and_prompt_set(model):
    record = json.loads((model / "model.json").read_text())
    assert record["prior"] == "builtin" and record["status"] == "done"
    assert record["prompts"] == ["a red cube", "a blue sphere"]  # the file's order, each once
    assert sorted(p.name for p in (model / "checkpoints").glob("amortize-*.safetensors")) == [
        "amortize-000002.safetensors", "amortize-000004.safetensors"]


def test_conditioning_changes_the_field(model):
    from magic3d.amortize.generate import conditioning_of, load_conditioned, plan_model

    plan = plan_model(model, "cpu")
    trained, table = load_conditioned(plan, torch.device("cpu"))
    cond, _ = conditioning_of(plan, ["a red cube", "a blue sphere", "a red cube"], table, torch.device("cpu"))
    points = torch.rand(512, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        red, blue, again = (trained.conditioned.at(c) for c in cond)
        assert torch.equal(red.density(points), again.density(points))
        assert (red.albedo(points) - blue.albedo(points)).abs().max() > 1e-4
        assert (red.density(points) - blue.density(points)).abs().max() > 1e-5
        # The zero-initialised mapping starts every prompt as the plain field: training made them differ.
        assert trained.conditioned.mapping[-1].weight.abs().sum() > 0


def test_resumed_training_matches_uninterrupted(tmp_path):
    """What a kill between checkpoints leaves (the step-2 checkpoint, the record still "training"):
    the same command resumes from step 2 and ends on the uninterrupted run's weights exactly."""
    from safetensors.torch import load_file

    from magic3d.amortize.train import train

    (tmp_path / "p.txt").write_text(PROMPTS)
    model = tmp_path / "model"
    train(tmp_path / "p.txt", model, prior="builtin", overrides=TINY, device="cpu")
    final = model / "checkpoints" / "amortize-000004.safetensors"
    expected = load_file(str(final))
    final.unlink()
    final.with_suffix(".json").unlink()
    record = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**record, "status": "training"}))
    notices = []
    result = train(tmp_path / "p.txt", model, prior="builtin", overrides=TINY, device="cpu", notice=notices.append)
    assert result.steps == 4 and notices and "step 2" in notices[0]
    got = load_file(str(final))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_weights(tmp_path):
    """A real `magic3d amortize` killed with SIGKILL wherever it is after its first checkpoints
    (mid-step, mid-checkpoint-write): the same command run again finishes, and its weights are
    the uninterrupted run's, bit for bit."""
    import signal
    import time

    from safetensors.torch import load_file

    from magic3d.amortize.train import train

    steps = [*TINY, "amortize.steps=12"]
    (tmp_path / "p.txt").write_text(PROMPTS)
    train(tmp_path / "p.txt", tmp_path / "whole", prior="builtin", overrides=steps, device="cpu")
    args = ["-m", "magic3d.amortize.cli", "amortize", str(tmp_path / "p.txt"), "--out", str(tmp_path / "killed"),
            "--prior", "builtin", *sets(steps)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("amortize-000004.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "training ended before it could be killed"
    assert not (checkpoints / "amortize-000012.safetensors").exists()
    resumed = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resum" in resumed.stderr.lower()
    expected = load_file(str(tmp_path / "whole" / "checkpoints" / "amortize-000012.safetensors"))
    got = load_file(str(checkpoints / "amortize-000012.safetensors"))
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    assert json.loads((tmp_path / "killed" / "model.json").read_text())["status"] != "training"


def test_generate_from_seen_and_unseen_prompts(model, tmp_path):
    from pxr import Usd

    out = tmp_path / "out"
    seen = cli("generate", "a red cube", "--from", str(model), "--out", str(out), "--quiet", module="magic3d")
    assert seen.returncode == 0, seen.stderr
    unseen = cli("generate", "a blue cube", "--from", str(model), "--out", str(out), "--quiet")
    assert unseen.returncode == 0, unseen.stderr
    for slug, flag in (("a-red-cube", False), ("a-blue-cube", True)):
        record = json.loads((out / slug / "run.json").read_text())
        assert record["unseen"] is flag and record["from"] == str(model) and record["prior"] == "builtin"
        assert record["metrics"]["faces"] > 0
        # The preset cuts a model's hazy fields where the renders see them (magic3d.fields.sight).
        assert record["config"]["run"]["fine"]["surface"] == "sight" and "sight_depth" in record["metrics"]["fine"]
        # The forward pass (mapping + field evaluations) is reported apart from the mesh and file work.
        for timings in (record["timings"], record["cpu_timings"]):
            assert {"load", "forward", "mesh", "bake", "export", "preview"} <= timings.keys()
        assert record["timings"]["forward"] > 0
        assert Usd.Stage.Open(str(out / slug / "asset.usda")).GetDefaultPrim()
        assert (out / slug / "asset.glb").stat().st_size > 0
    assert f"glb: {out / 'a-red-cube' / 'asset.glb'}" in seen.stdout
    assert seen.stdout.strip().splitlines()[-1].startswith("seconds: forward ")


def test_refine_steps_optimise_the_prompt_one_render_a_step(model, tmp_path, monkeypatch):
    import trimesh

    from magic3d.amortize import model as amortized
    from magic3d.amortize.generate import generate_from

    renders = []
    real_step = amortized.CoarseModel.step

    def counted(self, *args, **kwargs):
        renders.append(1)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(amortized.CoarseModel, "step", counted)
    plain = generate_from("a red cube", model, out=tmp_path / "plain")
    assert renders == []
    refined = generate_from("a red cube", model, out=tmp_path / "refined", refine_steps=3)
    assert len(renders) == 3  # one render a step, not training's prompts_per_step (2 here)
    record = json.loads((refined.run_dir / "run.json").read_text())
    assert record["refine_steps"] == 3 and record["timings"]["refine"] > 0
    before, after = (trimesh.load(r.files["glb"], force="mesh") for r in (plain, refined))
    assert before.vertices.shape != after.vertices.shape or not (before.vertices == after.vertices).all()


def test_fine_steps_run_the_fine_stage_on_the_models_field(model, tmp_path, monkeypatch):
    from magic3d.amortize.generate import generate_from
    from magic3d.stages import fine as fine_stage

    steps = []
    real_step = fine_stage.FineModel.step

    def counted(self, step, *args, **kwargs):
        steps.append(step)
        return real_step(self, step, *args, **kwargs)

    monkeypatch.setattr(fine_stage.FineModel, "step", counted)
    result = generate_from("a blue sphere", model, out=tmp_path, overrides=["fine.steps=2", "fine.texture_init_steps=2"])
    assert steps == [0, 1]
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["timings"]["fine"] > 0 and "mesh" not in record["timings"]
    assert record["metrics"]["faces"] > 0 and (result.run_dir / "asset.glb").stat().st_size > 0


def test_interpolate_writes_frames_gif_and_one_usd(model, tmp_path):
    from PIL import Image
    from pxr import Usd

    out = tmp_path / "morph"
    done = cli("interpolate", str(model), "a red cube", "a blue sphere", "--frames", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.parent.name for p in (out / "frames").glob("*/asset.glb")) == ["frame-00", "frame-01", "frame-02"]
    assert Image.open(out / "morph.gif").n_frames == 3
    stage = Usd.Stage.Open(str(out / "sequence.usda"))
    variants = stage.GetDefaultPrim().GetVariantSets().GetVariantSet("frame")
    assert variants.GetVariantNames() == ["frame_00", "frame_01", "frame_02"]
    variants.SetVariantSelection("frame_02")
    assert stage.GetDefaultPrim().GetChild("Geometry").IsValid()  # the reference resolves to the frame's asset
    record = json.loads((out / "interpolation.json").read_text())
    assert [f["s"] for f in record["frames"]] == [0.0, 0.5, 1.0]


def one_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_bad_input_is_one_line_before_any_work(model, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    assert "holds no prompts" in one_error(cli("amortize", str(empty), "--out", str(tmp_path / "m1")))
    refused = tmp_path / "refused.txt"
    refused.write_text("a red cube\na flying spaghetti monster\n")
    assert "line 2" in one_error(cli("amortize", str(refused), "--out", str(tmp_path / "m2")))
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()
    # A model folder of another prior: refused by amortize (resume) and by generate --from.
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((model / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**record, "prior": "stabilityai/stable-diffusion-2-1-base"}))
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    assert "trained with prior" in one_error(cli("amortize", str(prompts), "--out", str(other), "--prior", "builtin",
                                                 *sets(TINY)))
    assert "trained with prior" in one_error(cli("generate", "a red cube", "--from", str(model), "--prior",
                                                 "stabilityai/stable-diffusion-2-1-base", "--out", str(tmp_path / "g")))
    assert "does not know" in one_error(cli("generate", "a purple dragon", "--from", str(model), "--out", str(tmp_path / "g")))
    assert "not an amortized model" in one_error(cli("generate", "a red cube", "--from", str(tmp_path), "--out",
                                                     str(tmp_path / "g")))
    assert "--frames" in one_error(cli("interpolate", str(model), "a red cube", "a blue cube", "--frames", "1",
                                       "--out", str(tmp_path / "i")))
    assert not (tmp_path / "g").exists() and not (tmp_path / "i").exists()


def test_commands_import_no_torch():
    code = "import sys, magic3d.amortize.cli, magic3d.amortize.generate, magic3d.amortize.interpolate; " \
           "print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "False"


def test_trains_and_generates_on_cuda_with_a_diffusers_prior(tiny_prior_dir, tmp_path):
    """The device rule (tests/device_harness.py): every tensor on the run device, through a
    Stable-Diffusion-shaped prior whose "B 77 D" embeddings the mapping network pools and whitens,
    the preset's extraction by sight, and the texture stage's rasterized renders."""
    from device_harness import DeviceHarness

    from magic3d.amortize.generate import generate_from
    from magic3d.amortize.train import train

    (tmp_path / "p.txt").write_text("a red chair\na blue table\n")
    with DeviceHarness(ignore_syncs_in=("raster/torch_backend.py",)):
        trained = train(tmp_path / "p.txt", tmp_path / "model", prior=str(tiny_prior_dir),
                        overrides=[*TINY, *TEXTURE, "amortize.mapping.whiten=true"], device="cuda")
        result = generate_from("a green lamp", trained.model_dir, out=tmp_path / "out", device="cuda")
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["device"].startswith("cuda") and record["unseen"] is True
    assert "sight_depth" in record["metrics"]["fine"]
    record = json.loads((trained.model_dir / "model.json").read_text())
    assert record["device"].startswith("cuda") and record["texture_steps"] == 2
    assert result.files["glb"].stat().st_size > 0


def test_whitening_balances_the_words_of_a_pooled_embedding():
    from magic3d.amortize.field import whitening

    # Colour moves the embedding ten times as far as kind does: after whitening both move it alike.
    gen = torch.Generator().manual_seed(0)
    colour, kind = torch.randn(4, 16, generator=gen) * 10.0, torch.randn(3, 16, generator=gen)
    table = torch.stack([c + k for c in colour for k in kind])  # 12 prompts
    mean, matrix = whitening(table, floor=1e-6)
    white = (table - mean) @ matrix
    assert torch.allclose(white.mean(0), torch.zeros(16), atol=1e-4)
    spread = torch.linalg.svdvals(white)
    assert torch.allclose(spread[:5], spread[0].expand(5), rtol=1e-3)  # 3 + 2 directions, all unit variance
    by = lambda rows: (white[rows[0]] - white[rows[1]]).norm()  # noqa: E731
    colour_step, kind_step = by((0, 3)), by((0, 1))  # change the colour only; the kind only
    assert 0.3 < float(colour_step / kind_step) < 3.0
    raw_ratio = (table[0] - table[3]).norm() / (table[0] - table[1]).norm()
    assert raw_ratio > 5.0


def test_a_whitened_model_saves_and_reloads_its_map(tmp_path):
    from magic3d.amortize.generate import conditioning_of, load_conditioned, plan_model
    from magic3d.amortize.train import train

    (tmp_path / "prompts.txt").write_text(PROMPTS)
    result = train(tmp_path / "prompts.txt", tmp_path / "model", prior="builtin", device="cpu",
                   overrides=[*TINY, "amortize.mapping.whiten=true"])
    plan = plan_model(result.model_dir, "cpu")
    model, table = load_conditioned(plan, torch.device("cpu"))
    from magic3d.checkpoint import load_latest_checkpoint

    field = model.conditioned
    saved = load_latest_checkpoint(result.model_dir / "checkpoints", "amortize", "cpu").tensors
    assert torch.equal(saved["field/text_whiten"], field.text_whiten) and torch.equal(saved["field/text_mean"], field.text_mean)
    assert torch.allclose(field.text_mean, table.mean(0), atol=1e-5)
    cond, _ = conditioning_of(plan, ["a red cube", "a blue sphere"], table, torch.device("cpu"))
    white = (cond - field.text_mean) @ field.text_whiten
    assert white.norm(dim=-1).min() > 0.1  # two prompts: one direction, each half a unit away from the mean


TEXTURE = ["amortize.texture.steps=2", "amortize.texture.prompts_per_step=2", "amortize.texture.checkpoint_every=1",
           "amortize.texture.max_res=8", "amortize.texture.hidden=8", "fine.resolution=16"]


def test_a_texture_stage_added_to_a_trained_model_keeps_its_coarse_weights(model, tmp_path):
    import shutil

    from magic3d.amortize.generate import conditioning_of, load_conditioned, plan_model
    from magic3d.amortize.texture import model_surface
    from magic3d.amortize.train import train
    from magic3d.errors import ConfigError

    folder = tmp_path / "model"
    shutil.copytree(model, folder)
    coarse = {p.name: p.read_bytes() for p in (folder / "checkpoints").glob("amortize-0*.safetensors")}
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    result = train(tmp_path / "prompts.txt", folder, prior="builtin", overrides=[*TINY, *TEXTURE], device="cpu")
    # The coarse stage was resumed, not retrained; the texture stage checkpointed beside it.
    assert {p.name: p.read_bytes() for p in (folder / "checkpoints").glob("amortize-0*.safetensors")} == coarse
    assert sorted(p.name for p in (folder / "checkpoints").glob("amortize-texture-*.safetensors")) == [
        "amortize-texture-000001.safetensors", "amortize-texture-000002.safetensors"]
    record = json.loads((result.model_dir / "model.json").read_text())
    assert record["status"] == "done" and record["texture_steps"] == 2 and "texture_identity" in record

    plan = plan_model(folder, "cpu", overrides=TEXTURE)
    trained, table = load_conditioned(plan, torch.device("cpu"))
    assert trained.texture_net is not None
    cond, _ = conditioning_of(plan, ["a red cube"], table, torch.device("cpu"))
    with torch.no_grad():
        field = trained.conditioned.at(cond[0]).eval()
    surface = model_surface(trained, field, cond[0], plan.cfg.run.fine, "cpu")
    points = surface.vertices[:200]
    corrected, coarse_albedo = surface.color_fn(points), field.albedo(points)
    assert corrected.shape == (points.shape[0], 3) and ((corrected >= 0) & (corrected <= 1)).all()
    assert (corrected - coarse_albedo).abs().max() > 1e-5  # two steps moved the residual off zero
    # Another texture config on the same folder is refused before any work, as another coarse config is.
    with pytest.raises(ConfigError, match="another prompt set or config"):
        train(tmp_path / "prompts.txt", folder, prior="builtin", device="cpu",
              overrides=[*TINY, *TEXTURE, "amortize.texture.lr=0.05"])


def test_an_untrained_texture_stage_is_the_coarse_albedo(model):
    from magic3d.amortize.config import TextureStageConfig
    from magic3d.amortize.generate import load_conditioned, plan_model
    from magic3d.amortize.texture import ConditionedTexture

    plan = plan_model(model, "cpu")
    trained, table = load_conditioned(plan, torch.device("cpu"))
    net = ConditionedTexture(TextureStageConfig(max_res=8, hidden=8), trained.conditioned, "cpu")
    with torch.no_grad():
        field = trained.conditioned.at(table[0]).eval()
        points = torch.rand(300, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8
        base = field.albedo(points).clamp(1e-3, 1 - 1e-3)
    assert torch.allclose(net.colour_fn(trained.conditioned, field, table[0])(points), base, atol=1e-5)
