"""The config tree: presets, dotted overrides, type conversion and validation naming the key."""

from __future__ import annotations

import pytest

from magic3d.config import available_presets, load_config, to_dict, walk
from magic3d.errors import ConfigError


def test_shipped_presets_load_and_validate():
    assert {"builtin", "fast", "paper"} <= set(available_presets())
    for name in available_presets():
        cfg = load_config(name)
        assert cfg.coarse.steps > 0


def test_paper_preset_follows_magic3d_coarse_stage():
    cfg = load_config("paper")
    assert cfg.coarse.resolution == 64
    assert cfg.coarse.field.levels == 16
    assert cfg.coarse.field.features_per_level == 2
    assert cfg.coarse.field.log2_hashmap_size == 19
    assert (cfg.coarse.sds.guidance_scale, cfg.coarse.sds.weighting) == (20, "uniform")  # threestudio's IF config
    assert (cfg.coarse.sds.t_min, cfg.coarse.sds.t_max) == (0.02, 0.98)
    assert cfg.fine.resolution == 512
    assert (cfg.fine.sds.t_min, cfg.fine.sds.t_max) == (0.02, 0.5)


def test_overrides_convert_types_and_win_over_presets():
    cfg = load_config("fast", ["coarse.steps=123", "coarse.sds.guidance_scale=7.5", "export.formats=glb,obj",
                               "export.up_axis=Z", "fine.density_threshold=null", "prior.perp_neg=true",
                               "fine.sdf_lr=2e-3"])
    assert cfg.coarse.steps == 123 and isinstance(cfg.coarse.steps, int)
    assert cfg.fine.sdf_lr == 0.002  # exponent without a dot, which YAML 1.1 reads as text
    assert cfg.coarse.sds.guidance_scale == 7.5
    assert cfg.export.formats == ("glb", "obj")
    assert cfg.export.up_axis == "Z"
    assert cfg.fine.density_threshold is None
    assert cfg.prior.perp_neg is True


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("coarse.stepz=5", "coarse.stepz"),
        ("coarse.steps=-1", "coarse.steps"),
        ("coarse.steps=1.5", "coarse.steps"),
        ("coarse.steps=true", "coarse.steps"),
        ("coarse.resolution=20", "coarse.resolution"),
        ("fine.resolution=4096", "fine.resolution"),
        ("coarse.sds.t_max=1.5", "coarse.sds.t_max"),
        ("fine.sdf_lr=fast", "fine.sdf_lr"),
        ("coarse.sds.weighting=linear", "coarse.sds.weighting"),
        ("export.up_axis=X", "export.up_axis"),
        ("export.formats=usdc,fbx", "export.formats"),
        ("prior.perp_neg=maybe", "prior.perp_neg"),
        ("coarse=3", "coarse"),
        ("runtime.device=gpu", "runtime.device"),
        ("fine.tet_resolution=33", "fine.tet_resolution"),
        ("fine.tet_resolution=0", "fine.tet_resolution"),
        ("fine.surface=level", "fine.surface"),
        ("coarse.orientation_weight=.nan", "coarse.orientation_weight"),
        ("coarse.opacity_weight=.inf", "coarse.opacity_weight"),
        ("coarse.opacity_weight=-1", "coarse.opacity_weight"),
        ("coarse.orientation_schedule=[[0,10],[5000,.nan]]", "coarse.orientation_schedule"),
        ("coarse.orientation_schedule=[[0,10],[5000,.inf]]", "coarse.orientation_schedule"),
        ("coarse.orientation_schedule=[[0,-10]]", "coarse.orientation_schedule"),
        ("coarse.orientation_schedule=[[-1,10]]", "coarse.orientation_schedule"),
        ("coarse.orientation_schedule=[[5000,10],[0,1000]]", "coarse.orientation_schedule"),
        ("coarse.orientation_schedule=[[0,10,1000]]", "coarse.orientation_schedule"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(override, named):
    with pytest.raises(ConfigError) as err:
        load_config("fast", [override])
    assert named in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="Did you mean coarse.steps"):
        load_config("fast", ["coarse.step=5"])


def test_config_round_trips_through_a_plain_dict():
    cfg = load_config("paper", ["coarse.steps=7"])
    plain = to_dict(cfg)
    assert plain["coarse"]["steps"] == 7
    keys = dict(walk(cfg))
    assert keys["coarse.sds.guidance_scale"] == plain["coarse"]["sds"]["guidance_scale"]


def test_a_schedule_override_reads_as_step_weight_points():
    cfg = load_config("fast", ["coarse.orientation_schedule=[[0, 10], [5000, 1000]]"])
    assert cfg.coarse.orientation_schedule == ((0.0, 10.0), (5000.0, 1000.0))


@pytest.mark.parametrize("override", [
    "coarse.lr=.nan", "fine.sds.guidance_scale=.inf", "export.size_m=.nan", "coarse.sds.t_max=.nan",
    "coarse.orbit.distance=[2.0,.inf]", "fine.background=[1.0,.nan,1.0]", "bake.texture_size=64",
])
def test_every_number_is_finite_before_any_range_check(override):
    if override == "bake.texture_size=64":  # the control: a finite value passes
        assert load_config("builtin", [override]).bake.texture_size == 64
        return
    with pytest.raises(ConfigError, match=r"must be a finite number"):
        load_config("builtin", [override])


def test_a_density_threshold_cuts_with_the_density_surface():
    cfg = load_config("fast", ["fine.surface=density", "fine.density_threshold=5"])
    assert cfg.fine.surface == "density" and cfg.fine.density_threshold == 5.0
    assert load_config("fast").fine.surface == "density"
    with pytest.raises(ConfigError, match="fine.density_threshold.*fine.surface=density"):
        load_config("fast", ["fine.surface=sight", "fine.density_threshold=5"])


@pytest.mark.parametrize(("override", "says"), [
    ("coarse.steps=1000000000000", "between 0 and 1000000"),
    ("export.preview_frames=100000", "between 1 and 720"),
    ("bake.texture_size=1", "between 16 and 8192"),
    ("runtime.threads=-1", "between 1 and 1024"),
    ("runtime.seed=18446744073709551616", "between 0 and"),
    ("coarse.steps=!!python/object/apply:os.system [echo hi]", "YAML can read"),
    ("coarse.lr=" + "[&a [x,x,x,x,x,x,x,x,x],&b [*a,*a,*a,*a,*a,*a,*a,*a,*a],&c [*b,*b,*b,*b,*b,*b,*b,*b,*b],"
     "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c],&e [*d,*d,*d,*d,*d,*d,*d,*d,*d],&f [*e,*e,*e,*e,*e,*e,*e,*e,*e]]",
     "needs a number"),
])
def test_values_are_bounded_and_echoed_short(override, says):
    with pytest.raises(ConfigError) as info:
        load_config("builtin", [override])
    message = str(info.value)
    assert says in message and len(message) <= 300, message
