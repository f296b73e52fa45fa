"""One typed config tree for a run: prior, coarse, fine, bake, export, runtime.

Defaults live in the dataclasses of each stage's module; presets (YAML files in
``magic3d/presets/``) override some of them; ``--set a.b=value`` overrides override presets.
Everything is checked here, before any work starts, and errors name the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from magic3d.config_sections import (
    DENSE_MAX_PARAMS,
    BakeConfig,
    CoarseConfig,
    FineConfig,
    dense_values,
)
from magic3d.control.config import ControlConfig
from magic3d.errors import ConfigError, InputError
from magic3d.guidance import PriorConfig
from magic3d.storage import read_input_text

PRESET_DIR = Path(__file__).parent / "presets"
EXPORT_FORMATS = ("usdc", "usda", "usdz", "glb", "obj")


@dataclass
class ExportConfig:
    formats: tuple[str, ...] = ("usdc", "usdz", "glb")
    up_axis: Literal["Y", "Z"] = "Y"
    # Largest side of the exported object, in metres (metersPerUnit is 1).
    size_m: float = 1.0
    preview: bool = True  # turntable GIF beside the assets
    # USD physics: a rigid body with a collider, mass = volume x density, a physics material.
    physics: bool = True
    density: float = 700.0  # kg/m^3; wood, so a generated object weighs what a carved one would
    preview_frames: int = 24
    preview_resolution: int = 256


@dataclass
class RuntimeConfig:
    device: str = "auto"  # "auto" picks cuda when present, else cpu
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    # GPU memory for bigger renders: Stable Diffusion's VAE decoder (unused by SDS) stays on the
    # CPU. (Text encoders visit the device only while encoding, offload or not.) Passed to load_prior.
    offload: bool = False
    # Fields and renderers under autocast: "auto" is bf16 on CUDA (fp16 where bf16 is missing)
    # and fp32 on CPU. The priors' own precision is prior.dtype.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"


@dataclass
class Config:
    prior: PriorConfig = field(default_factory=PriorConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    fine: FineConfig = field(default_factory=FineConfig)
    bake: BakeConfig = field(default_factory=BakeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    control: ControlConfig = field(default_factory=ControlConfig)  # user's shape, mesh or run to start from


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the preset (a name or a YAML path), then ``key=value`` overrides."""
    cfg = Config()
    if preset:
        apply_mapping(cfg, read_preset(preset))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {shown(item)} is not of the form key=value (e.g. coarse.steps=2000).")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:  # tags (!!python/...), bad syntax: never run, never a traceback
            raise ConfigError(f"Override {shown(item)} is not a value YAML can read ({type(exc).__name__}).") from None
        set_value(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def read_preset(preset: str) -> dict:
    path = Path(preset)
    if path.suffix not in (".yaml", ".yml"):
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"Unknown preset {preset!r}; choose one of {', '.join(available_presets())} "
                "or give a path to a YAML file."
            )
    try:
        text = read_input_text(path, "preset file")
    except InputError as exc:
        raise ConfigError(str(exc)) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"Preset {str(path)!r} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"Preset {str(path)!r} must hold a mapping of config sections.")
    return data


def apply_mapping(obj: Any, data: dict, prefix: str = "") -> None:
    """Apply a nested mapping (a preset or a section's value) onto a config object."""
    for key, value in data.items():
        set_leaf(obj, str(key), value, f"{prefix}{key}")


def set_value(root: Any, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` on the tree, converting ``value`` to the field's declared type."""
    obj, parts = root, dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        _check_key(obj, part, ".".join(parts[: i + 1]))
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise ConfigError(f"Config key {dotted!r} is unknown: {'.'.join(parts[: i + 1])!r} has no sub-keys.")
    set_leaf(obj, parts[-1], value, dotted)


def set_leaf(obj: Any, name: str, value: Any, dotted: str) -> None:
    _check_key(obj, name, dotted)
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"Config key {dotted!r} is a section; set its keys, e.g. {dotted}.<key>=...")
        apply_mapping(current, value, prefix=f"{dotted}.")
        return
    hint = typing.get_type_hints(type(obj))[name]
    setattr(obj, name, coerce(value, hint, dotted))


def _check_key(obj: Any, name: str, dotted: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {dotted.rsplit('.', 1)[0] + '.' if '.' in dotted else ''}{close[0]}?" if close else ""
        raise ConfigError(f"Config key {dotted!r} is unknown.{hint}")


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert YAML-parsed ``value`` to ``hint`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"Config key {key!r} got an invalid value {shown(value)}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"Config key {key!r} must be one of {', '.join(map(repr, args))}, not {shown(value)}.")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"Config key {key!r} needs a list, not {shown(value)}.")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"Config key {key!r} needs {len(args)} values, not {len(value)}.")
            return tuple(coerce(v, a, key) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"Config key {key!r} needs true or false, not {shown(value)}.")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"Config key {key!r} needs a whole number, not {shown(value)}.")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "2e-3" (no dot) as text; as a number it is what the user meant.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"Config key {key!r} needs a number, not {shown(value)}.")
        return float(value)
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"Config key {key!r} needs text, not {shown(value)}.")
        return str(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        obj = hint()
        apply_mapping(obj, value, prefix=f"{key}.")
        return obj
    return value


# Sane bounds by field name (inclusive): a value past one is a typo or a run that would never end
# (or exhaust memory) rather than a choice. They are documented in the README; a real need past
# one is a preset of its own, where the limit can be raised here with a reason.
BOUNDS: dict[str, tuple[float, float]] = {
    "steps": (0, 1_000_000), "texture_init_steps": (0, 100_000), "albedo_warmup": (0, 1_000_000),
    "batch_size": (1, 64), "samples_per_ray": (1, 4096), "tet_resolution": (2, 512),
    "occupancy_resolution": (1, 512), "texture_size": (16, 8192), "face_budget": (4, 10_000_000),
    "texture_init_points": (1, 10_000_000), "preview_frames": (1, 720), "preview_resolution": (16, 2048),
    "preview_views": (1, 64), "levels": (1, 32), "log2_hashmap_size": (8, 24), "hidden": (1, 1024),
    "seed": (0, 2**63 - 1), "threads": (1, 1024), "density": (1.0, 25_000.0), "seal_tunnels": (0.0, 0.5), "cut_handles": (0.0, 0.5),
    "shape_weight": (0.0, 1000.0), "shape_band": (0.001, 1.0), "shape_points": (1, 1_000_000),
    "init_fine_sdf_lr_scale": (0.0, 1.0),
}


_SHOW = reprlib.Repr()  # Python 3.11's Repr takes its limits as attributes
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxtuple, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 3, 6, 6, 4, 60, 60


def shown(value: Any, limit: int = 100) -> str:
    """A value as an error message echoes it: bounded however large or deeply nested it is
    (reprlib never expands what it will not print, so a YAML alias bomb stays one short line)."""
    text = _SHOW.repr(value) if isinstance(value, (str, list, tuple, dict)) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Rules by field name hold across sections, so a new stage's `steps` is checked without a new rule.
def validate(cfg: Config) -> None:
    for key, value in walk(cfg):
        name = key.rsplit(".", 1)[-1]
        if value is None:
            continue
        # Range checks below are false for NaN ("nan <= 0" is false): every number is finite first.
        numbers = value if isinstance(value, (list, tuple)) else [value]
        flat = [x for v in numbers for x in (v if isinstance(v, (list, tuple)) else [v])]
        if any(isinstance(x, float) and not math.isfinite(x) for x in flat):
            raise ConfigError(f"Config key {key!r} must be a finite number, not {shown(value)}.")
        if name in BOUNDS and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = BOUNDS[name]
            if not lo <= value <= hi:
                raise ConfigError(f"Config key {key!r} must lie between {lo} and {hi}, not {shown(value)}.")
        if (name == "steps" or name.endswith("_every") or name.endswith("_steps")) and value < 0:
            raise ConfigError(f"Config key {key!r} must be 0 or more, not {value}.")
        if name in ("resolution", "batch_size", "texture_size", "preview_frames", "preview_resolution",
                    "tet_resolution", "samples_per_ray") and value <= 0:
            raise ConfigError(f"Config key {key!r} must be positive, not {value}.")
        if (name.startswith("lr") or name.endswith("_lr")) and isinstance(value, float) and value <= 0:
            raise ConfigError(f"Config key {key!r} must be positive, not {value}.")
        if name.endswith("_weight") and isinstance(value, float) and value < 0:
            raise ConfigError(f"Config key {key!r} must be 0 or more, not {value}.")
        if name.endswith("_weight") and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"Config key {key!r} must be a finite number, not {value}.")
        if name.endswith("_schedule"):
            _check_schedule(key, value)
        if name == "tet_resolution" and value % 2:
            raise ConfigError(
                f"Config key {key!r} must be even (an N grid has N/2 cells per side, as in threestudio's "
                f"tet grids), not {value}."
            )
        if name in ("t_min", "t_max", "t_max_end") and not 0.0 <= value <= 1.0:
            raise ConfigError(f"Config key {key!r} must lie in [0, 1], not {value}.")
        if name == "guidance_scale" and value < 1.0:
            raise ConfigError(f"Config key {key!r} must be 1 or more, not {value}.")
    for stage in ("coarse", "fine"):
        sds = getattr(cfg, stage).sds
        if sds.t_min >= sds.t_max:
            raise ConfigError(f"Config key '{stage}.sds.t_min' must be below '{stage}.sds.t_max'.")
        res = getattr(cfg, stage).resolution
        if res % 8 or not 16 <= res <= 1024:
            raise ConfigError(
                f"Config key '{stage}.resolution' must be a multiple of 8 between 16 and 1024, not {res}."
            )
    if cfg.fine.density_threshold is not None and cfg.fine.surface != "density":
        raise ConfigError("Config key 'fine.density_threshold' cuts at a density level: set fine.surface=density "
                          "with it (fine.surface=sight finds the surface from the renders' opacity).")
    _check_dense_field(cfg.coarse.field)
    from magic3d.control.user_mesh import resolve_sources

    resolve_sources(cfg.control)  # the user's mesh or run read and checked, its SHA-256 recorded
    bad = [f for f in cfg.export.formats if f not in EXPORT_FORMATS]
    if bad:
        raise ConfigError(f"Config key 'export.formats' has unknown {bad}; choose from {', '.join(EXPORT_FORMATS)}.")
    if cfg.export.size_m <= 0:
        raise ConfigError("Config key 'export.size_m' must be positive.")
    device = cfg.runtime.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"Config key 'runtime.device' must be auto, cpu, cuda or cuda:N, not {device!r}.")


def _check_dense_field(field_cfg: Any) -> None:
    """A dense encoding's memory is cubic in max_res: refuse one that would not fit before any work."""
    if field_cfg.encoding != "dense" or min(field_cfg.min_res, field_cfg.max_res, field_cfg.levels) < 1:
        return
    values = dense_values(field_cfg.levels, field_cfg.features_per_level, field_cfg.min_res, field_cfg.max_res)
    if values > DENSE_MAX_PARAMS:
        raise ConfigError(
            f"Config key 'coarse.field.max_res' {field_cfg.max_res} makes the dense encoding {values:,} values "
            f"(at most {DENSE_MAX_PARAMS:,}); lower coarse.field.max_res or levels, or set coarse.field.encoding=hashgrid."
        )


def _check_schedule(key: str, points: Any) -> None:
    """(step, weight) points: finite, 0 or more, steps increasing."""
    steps = [p[0] for p in points]
    if any(not math.isfinite(v) or v < 0 for p in points for v in p):
        raise ConfigError(f"Config key {key!r} needs (step, weight) points of finite numbers 0 or more, not {points}.")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ConfigError(f"Config key {key!r} needs its (step, weight) points in increasing step order, not {points}.")


def walk(obj: Any, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from walk(value, f"{key}.")
        else:
            yield key, value


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for run.json and resume checks."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))
