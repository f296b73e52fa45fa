"""The built-in prior: its vocabulary gate, its procedural world, its shipped weights and its SDS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magic3d.errors import InputError
from magic3d.guidance.base import SDSConfig
from magic3d.guidance.builtin import (
    VOCABULARY,
    WEIGHTS_DIR,
    load_builtin_prior,
    validate_prompt,
    weights_available,
)
from magic3d.guidance.builtin_model import (
    BagOfWordsEncoder,
    CameraEncoder,
    build_unet,
    load_camera_encoder,
    load_text_encoder,
    save_camera_encoder,
    save_text_encoder,
)
from magic3d.guidance.builtin_world import (
    COLOURS,
    GENUS,
    KINDS,
    SIZES,
    _parts,
    canonical_mesh,
    make_object,
    recognise_kind,
)


@pytest.fixture(scope="module")
def prior():
    return load_builtin_prior(None, "cpu")


# --- vocabulary -------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["a red cube", "A photo of a small blue torus, side view", "big green tree"])
def test_known_prompts_pass(prompt):
    validate_prompt(prompt)


def test_unknown_words_are_named_with_the_vocabulary_and_a_pointer_to_real_priors():
    with pytest.raises(InputError) as err:
        validate_prompt("a majestic red dragon")
    msg = str(err.value)
    assert "dragon" in msg and "majestic" in msg and "red" not in msg.split("it knows")[0]
    assert all(word in msg for word in ("torus", "mushroom", "purple", "small"))
    assert "--prior" in msg


@pytest.mark.parametrize("prompt", ["x" * 10_000, "a majestic red dragon breathing fire over wonderful castles",
                                    "../../../etc/passwd", "a cube " + " ".join(f"w{i}" * 9 for i in range(99))])
def test_refusals_fit_one_short_line_whatever_the_prompt(prompt):
    with pytest.raises(InputError) as err:
        validate_prompt(prompt)
    msg = str(err.value)
    assert len("error: " + msg) <= 300 and "\n" not in msg, msg
    assert "it knows sphere cube" in msg and msg.endswith("--prior with a hub model.")


def test_prompt_without_a_kind_is_refused():
    with pytest.raises(InputError, match="object kind"):
        validate_prompt("a red one")


def test_vocabulary_covers_the_world():
    assert len(KINDS) >= 12 and len(COLOURS) >= 10
    assert set(KINDS) | set(COLOURS) | set(SIZES) <= set(VOCABULARY)


# --- world ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_part_is_a_closed_surface_of_the_kind_genus(kind):
    for mesh, _ in _parts(kind):
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > 0  # outward normals
        assert mesh.euler_number == 2 - 2 * GENUS[kind]


def test_torus_has_one_hole_and_cube_is_cubic():
    assert canonical_mesh("torus").euler_number == 0
    extents = canonical_mesh("cube").bounding_box_oriented.extents
    assert np.allclose(extents, extents.mean(), rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_objects_fit_the_stage_frame_and_take_colour_and_size(kind):
    v_big, f, c = make_object(kind, "blue", "big")
    v_small, _, _ = make_object(kind, "blue", "small")
    assert v_big.shape[1] == 3 and f.shape[1] == 3 and c.shape == v_big.shape
    assert f.max() < len(v_big) and f.min() >= 0
    assert np.abs(v_big).max() <= 1.0  # inside the [-1, 1]^3 box the stages optimise
    assert np.ptp(v_small, axis=0).max() < np.ptp(v_big, axis=0).max()
    # The main part carries the named colour exactly; other parts are shades of it.
    assert np.isclose(c, COLOURS["blue"], atol=1e-6).all(axis=1).any()
    assert c.max() <= 1.0


def test_composites_have_structure_in_three_dimensions():
    for kind in ("mushroom", "snowman", "table", "lamp", "tree", "house"):
        assert len(_parts(kind)) >= 2
        extents = np.ptp(make_object(kind)[0], axis=0)
        assert extents.min() > 0.3, kind


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="unknown kind"):
        make_object("dragon")


# --- model ------------------------------------------------------------------------------------


def test_unet_size_is_cpu_trainable():
    params = sum(p.numel() for p in build_unet().parameters())
    assert 1.0e6 < params < 4.5e6


def test_text_encoder_round_trips_and_ignores_word_order(tmp_path):
    enc = BagOfWordsEncoder().eval()
    save_text_encoder(enc, tmp_path)
    back = load_text_encoder(tmp_path)
    prompts = ["a red cube, side view", "cube red, view side", ""]
    with torch.no_grad():
        a, b = enc.encode(prompts), back.encode(prompts)
    assert torch.allclose(a, b)
    assert torch.allclose(a[0], a[1], atol=1e-5)
    assert not torch.allclose(a[0], a[2])


def test_camera_encoder_starts_silent_tells_angles_apart_and_round_trips(tmp_path):
    cams = torch.tensor([[10.0, 0.0], [10.0, 45.0], [10.0, 45.0 + 360.0], [float("nan"), float("nan")]])
    fresh = CameraEncoder()
    with torch.no_grad():
        assert torch.equal(fresh(cams), torch.zeros(4, fresh.mlp[-1].out_features))  # a text-only model is unchanged
        torch.nn.init.normal_(fresh.mlp[-1].weight)
        out = fresh(cams)
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(out[1], out[2], atol=1e-4)  # angles, not numbers: a full turn is the same camera
    assert torch.equal(CameraEncoder.features(cams[3:]), torch.zeros(1, 9))  # NaN: no camera at all
    save_camera_encoder(fresh, tmp_path)
    with torch.no_grad():
        assert torch.allclose(load_camera_encoder(tmp_path)(cams), out)
    assert load_camera_encoder(tmp_path / "missing") is None


# --- shipped weights through the real loading path ----------------------------------------------


def test_committed_weights_exist_and_are_small():
    assert weights_available()
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 25 * 2**20


def test_load_prior_builtin_goes_through_the_same_path():
    from magic3d.guidance import PriorConfig, load_prior

    loaded = load_prior("builtin", PriorConfig(), torch.device("cpu"))
    assert loaded.name == "builtin" and loaded.resolution == 32
    assert not any(p.requires_grad for p in loaded.unet.parameters())


def test_encode_prompt_shapes_and_unseen_view_word(prior):
    emb = prior.encode_prompt(["a red cube, front view", "a red cube, overhead view", "a red cube, view"], [])
    assert emb.cond.shape == emb.uncond.shape and emb.cond.shape[0] == 3 and emb.cond.dim() == 2
    assert torch.allclose(emb.cond[1], emb.cond[2])
    assert not torch.allclose(emb.cond[0], emb.cond[1])
    assert torch.allclose(emb.uncond[0], emb.uncond[1])


def test_shape_prompt_drops_only_colour_words(prior):
    assert prior.shape_prompt("a big red torus") == "a big torus"
    assert prior.shape_prompt("a Blue cube, side view") == "a cube, side view"


def test_sds_gives_finite_loss_and_a_gradient_on_the_renders(prior):
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    emb = prior.encode_prompt(["a blue torus, side view"] * 2, [])
    cfg = SDSConfig(guidance_scale=10.0, t_min=0.2, t_max=0.8)
    out = prior.sds(images, emb, 0.5, cfg, torch.Generator().manual_seed(0))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert images.grad.shape == images.shape and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0 and out.grad_norm > 0
    assert ((out.t >= 0.2 * 999 - 1) & (out.t <= 0.8 * 999 + 1)).all()
    # Same generator, same draw: the loss is reproducible.
    again = prior.sds(images.detach(), emb, 0.5, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(again.loss, out.loss.detach())


def test_sds_reads_the_camera_in_both_halves_of_guidance(prior):
    assert prior.camera_encoder is not None  # the shipped weights are camera-conditioned
    images = torch.rand(1, 3, 32, 32)
    emb = prior.encode_prompt(["a red house, front view"], [])
    cfg = SDSConfig(guidance_scale=10.0, t_min=0.5, t_max=0.5)

    def grad_for(cameras):
        x = images.clone().requires_grad_(True)
        emb.cameras = cameras
        prior.sds(x, emb, 0.5, cfg, torch.Generator().manual_seed(0)).loss.backward()
        return x.grad

    front, turned = grad_for(torch.tensor([[10.0, 0.0]])), grad_for(torch.tensor([[10.0, 40.0]]))
    assert not torch.allclose(front, turned)
    # 400 and 40 degrees differ by float32 rounding of the angle, which the UNet carries into the
    # gradient at up to ~1e-4 (seen on one build VM, not on another); a camera the prior did not
    # read as periodic would differ by O(1).
    assert torch.allclose(grad_for(torch.tensor([[10.0, 400.0]])), turned, atol=1e-4, rtol=1e-4)
    with_text = prior.with_camera(emb.cond, torch.tensor([[10.0, 40.0]]))
    assert torch.allclose(with_text - emb.cond, prior.with_camera(emb.uncond, torch.tensor([[10.0, 40.0]])) - emb.uncond,
                          atol=1e-5)


def test_sample_returns_images_in_unit_range(prior):
    x = prior.sample(["a red cube, front view", "a green tree, side view"], steps=3,
                     generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 32, 32) and x.min() >= 0 and x.max() <= 1


def test_shapes_are_recognised_from_their_meshes_after_a_turn_and_a_rescale():
    import trimesh

    turn = trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])
    for kind in KINDS:
        v, f, _ = make_object(kind, "red", "small")
        mesh = trimesh.Trimesh(v * 1.7 + 0.2, f, process=False)
        mesh.apply_transform(turn)
        found, scores = recognise_kind(mesh, resolution=16)
        assert found == kind, (kind, sorted(scores.items(), key=lambda kv: -kv[1])[:3])
        assert scores[kind] > 0.6


def test_a_cube_tilted_and_turned_off_the_quarter_turns_is_still_a_cube():
    # SDS leaves objects a few degrees off upright and at any turn: 20 degrees about Y and 8 about X
    # lost to the sphere (0.64 against it) when only 45-degree turns were tried.
    import trimesh

    v, f, _ = make_object("cube", "red")
    mesh = trimesh.Trimesh(v, f, process=False)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(20), [0, 1, 0]))
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(8), [1, 0, 0]))
    found, scores = recognise_kind(mesh, resolution=16)
    assert found == "cube" and scores["cube"] > 0.85, sorted(scores.items(), key=lambda kv: -kv[1])[:3]


def test_posed_occupancy_matches_voxelising_the_turned_mesh():
    import trimesh

    from magic3d.guidance.builtin_world import occupancy, pose_rotations, posed_occupancies

    rotations = pose_rotations(yaw_step=120.0, tilts=(0.0, 10.0))
    for kind in ("torus", "pyramid"):  # one closed surface each, as generated meshes are
        v, f, _ = make_object(kind, "red")
        mesh = trimesh.Trimesh(v, f, process=False)
        fast = posed_occupancies([mesh], rotations, resolution=16)
        assert fast.shape == (len(rotations), 16**3)
        for rot, grid in zip(rotations, fast, strict=True):
            turned = mesh.copy()
            turned.vertices = np.asarray(mesh.vertices) @ rot.T
            exact = occupancy([turned], 16).ravel()
            # Read from a voxelisation at twice the resolution: only voxels the surface cuts may differ.
            assert (grid != exact).mean() < 0.03 and abs(int(grid.sum()) - int(exact.sum())) < 0.08 * exact.sum()


def test_a_cube_turned_half_a_quarter_is_still_a_cube():
    import trimesh

    v, f, _ = make_object("cube", "red")
    mesh = trimesh.Trimesh(v, f, process=False)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 4, [0, 1, 0]))
    found, scores = recognise_kind(mesh, resolution=16)
    assert found == "cube" and scores["cube"] > 0.9


# --- precision --------------------------------------------------------------------------------


def test_dtype_choice_follows_the_config_and_the_cpu(monkeypatch):
    from magic3d.guidance import builtin

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert builtin.builtin_dtype("float32", cpu) == torch.float32
    assert builtin.builtin_dtype("bfloat16", cpu) == torch.bfloat16
    assert builtin.builtin_dtype("float16", cpu) == torch.float32  # fp16 convolutions: CUDA only
    assert builtin.builtin_dtype("float16", cuda) == torch.float16
    assert builtin.builtin_dtype("auto", cuda) == torch.float32
    monkeypatch.setattr(builtin, "native_cpu_bf16", lambda: True)
    assert builtin.builtin_dtype("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(builtin, "native_cpu_bf16", lambda: False)
    assert builtin.builtin_dtype("auto", cpu) == torch.float32


def test_a_bf16_unet_predicts_what_the_fp32_one_does(prior):
    from magic3d.guidance.builtin import BuiltinPrior

    fp32, bf16 = BuiltinPrior(WEIGHTS_DIR, "cpu", torch.float32), BuiltinPrior(WEIGHTS_DIR, "cpu", torch.bfloat16)
    assert next(bf16.unet.parameters()).dtype == torch.bfloat16
    emb = fp32.encode_prompt(["a blue torus"], [""])
    text = fp32.guidance_pair(emb.uncond, emb.cond, None)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    a, b = fp32.predict_noise(x, t, text), bf16.predict_noise(x, t, text)
    assert b.dtype == torch.float32 and b.shape == a.shape  # callers see the rays' precision
    assert (a - b).abs().mean() < 0.02 * a.abs().mean()
