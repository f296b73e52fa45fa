"""The ``amortize`` config section and its presets (torch-free, checked before any work).

An amortized preset (``magic3d/amortize/presets/<name>.yaml``) names the run preset its renders,
field and exports start from (``preset: builtin``), overrides any of that preset's sections, and
adds the ``amortize`` section: how many steps, how many prompts each step renders, and the
mapping network. The run sections are checked by ``magic3d.config`` exactly as ``generate``'s are.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from magic3d.config import Config, apply_mapping, load_config, read_preset, set_value, to_dict
from magic3d.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
SECTION = "amortize"


@dataclass
class MappingConfig:
    hidden: int = 128  # width of the mapping network from the text embedding to the FiLM modulations
    lr_scale: float = 0.1  # the mapping network learns at coarse.lr * this (it moves every prompt at once)
    # Whiten the prompt set's embeddings (their mean removed, every principal direction scaled to unit
    # variance) before the mapping: in a pooled embedding one word can dominate (the built-in prior's
    # colour: same-colour prompts' centred cosine 0.61, same-kind 0.23), which the mapping must undo.
    whiten: bool = False


@dataclass
class TextureStageConfig:
    """The texture stage after the coarse one (``magic3d.amortize.texture``): a conditioned colour
    residual trained by SDS on rasterized renders of every prompt's extracted mesh. 0 steps: none."""

    steps: int = 0
    prompts_per_step: int = 4
    checkpoint_every: int = 50
    lr: float = 1e-2  # its grid; the MLP and the mapping network learn at a tenth
    levels: int = 4
    features_per_level: int = 4
    min_res: int = 4
    max_res: int = 32  # colour corrections are smooth: a coarse grid, a few thousand values a level
    hidden: int = 32
    # Probabilities of albedo / diffuse / textureless renders: a textureless render has no colour to train.
    shading: tuple[float, float, float] = (0.5, 0.5, 0.0)


@dataclass
class AmortizeConfig:
    steps: int = 2000
    prompts_per_step: int = 4  # each rendered with its own conditioning, scored with its own embeddings
    checkpoint_every: int = 50
    mapping: MappingConfig = field(default_factory=MappingConfig)
    texture: TextureStageConfig = field(default_factory=TextureStageConfig)


@dataclass
class AmortizedConfig:
    run: Config
    amortize: AmortizeConfig

    def to_dict(self) -> dict:
        return {"run": to_dict(self.run), SECTION: dataclasses.asdict(self.amortize)}

    def identity(self) -> dict:
        """What shapes the trained model: the prior, the coarse section, this one, seed and precision.
        Extraction, bake and export settings (and sections added later) are read at generation time,
        so changing them never makes a model folder refuse to resume."""
        runtime = self.run.runtime
        section = {k: v for k, v in dataclasses.asdict(self.amortize).items() if k != "texture"}
        return {"prior": to_dict(self.run.prior), "coarse": to_dict(self.run.coarse),
                SECTION: section, "seed": runtime.seed, "precision": runtime.precision}

    def texture_identity(self) -> dict:
        """What shapes the texture stage: the coarse model it starts from, its own section, and the
        fine section whose extraction, renders and SDS it uses (a texture stage added to a trained
        model leaves that model's identity, and so its coarse checkpoints, as they were)."""
        return {**self.identity(), "texture": dataclasses.asdict(self.amortize.texture), "fine": to_dict(self.run.fine)}


def available_amortize_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def flatten(data: dict, prefix: str = "") -> list[str]:
    """A nested mapping as ``key=value`` overrides (JSON values, which YAML reads back unchanged)."""
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def load_amortized_config(preset: str | None, overrides: tuple[str, ...] | list[str] = ()) -> AmortizedConfig:
    """The amortized preset (a name or a YAML path; default: ``builtin``), then ``--set`` overrides;
    ``amortize.*`` keys go to this section, every other key to the run config."""
    name = preset or "builtin"
    if Path(name).suffix not in (".yaml", ".yml"):
        if not (PRESET_DIR / f"{name}.yaml").is_file():
            raise ConfigError(f"Unknown amortize preset {name!r}; choose one of "
                              f"{', '.join(available_amortize_presets())} or give a path to a YAML file.")
        name = str(PRESET_DIR / f"{name}.yaml")
    data = dict(read_preset(name))
    base = data.pop("preset", None)
    section = data.pop(SECTION, None) or {}
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"Amortize preset {name!r}: 'preset' must name a run preset, e.g. builtin.")
    if not isinstance(section, dict):
        raise ConfigError(f"Amortize preset {name!r}: '{SECTION}' must be a mapping of its keys.")
    ours = [o for o in overrides if o.strip().startswith(f"{SECTION}.")]
    theirs = [o for o in overrides if o not in ours]
    run = load_config(base, [*flatten(data), *theirs])
    amortize = AmortizeConfig()
    apply_mapping(amortize, section, prefix=f"{SECTION}.")
    holder = AmortizedConfig(run, amortize)
    for item in ours:
        key, _, raw = item.partition("=")
        import yaml

        set_value(holder, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    check(amortize)
    return holder


def check(cfg: AmortizeConfig) -> None:
    limits: dict[str, tuple[Any, Any]] = {
        "steps": (0, 1_000_000), "prompts_per_step": (1, 64), "checkpoint_every": (1, 1_000_000),
        "mapping.hidden": (1, 4096), "texture.steps": (0, 1_000_000), "texture.prompts_per_step": (1, 64),
        "texture.checkpoint_every": (1, 1_000_000), "texture.levels": (1, 16), "texture.features_per_level": (1, 8),
        "texture.min_res": (2, 256), "texture.max_res": (2, 256), "texture.hidden": (1, 1024)}
    for key, (lo, hi) in limits.items():
        holder, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, holder) if holder else cfg, name)
        if not lo <= value <= hi:
            raise ConfigError(f"Config key '{SECTION}.{key}' must lie between {lo} and {hi}, not {value}.")
    for key, value in (("mapping.lr_scale", cfg.mapping.lr_scale), ("texture.lr", cfg.texture.lr)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"Config key '{SECTION}.{key}' must be positive, not {value}.")
    if cfg.texture.min_res > cfg.texture.max_res:
        raise ConfigError(f"Config key '{SECTION}.texture.min_res' ({cfg.texture.min_res}) must not exceed "
                          f"texture.max_res ({cfg.texture.max_res}).")
    shading = cfg.texture.shading
    if len(shading) != 3 or not all(math.isfinite(p) and p >= 0 for p in shading) or shading[0] + shading[1] <= 0:
        raise ConfigError(f"Config key '{SECTION}.texture.shading' needs three probabilities (albedo, diffuse, "
                          f"textureless), 0 or more, albedo or diffuse above 0, not {list(shading)}.")
