"""The ``amortize`` config section and its presets (torch-free, checked before any work).

An amortized preset (``magic3d/amortize/presets/<name>.yaml``) names the run preset its renders,
field and exports start from (``preset: builtin``), overrides any of that preset's sections, and
adds the ``amortize`` section: how many steps, how many prompts each step renders, and the
mapping network. The run sections are checked by ``magic3d.config`` exactly as ``generate``'s are.
"""

from __future__ import annotations

import dataclasses
import json
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
class AmortizeConfig:
    steps: int = 2000
    prompts_per_step: int = 4  # each rendered with its own conditioning, scored with its own embeddings
    checkpoint_every: int = 50
    mapping: MappingConfig = field(default_factory=MappingConfig)


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
        return {"prior": to_dict(self.run.prior), "coarse": to_dict(self.run.coarse),
                SECTION: dataclasses.asdict(self.amortize), "seed": runtime.seed, "precision": runtime.precision}


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
    limits: dict[str, tuple[Any, Any]] = {"steps": (0, 1_000_000), "prompts_per_step": (1, 64),
                                          "checkpoint_every": (1, 1_000_000), "mapping.hidden": (1, 4096)}
    for key, (lo, hi) in limits.items():
        value = cfg.mapping.hidden if key == "mapping.hidden" else getattr(cfg, key)
        if not lo <= value <= hi:
            raise ConfigError(f"Config key '{SECTION}.{key}' must lie between {lo} and {hi}, not {value}.")
    if not cfg.mapping.lr_scale > 0:
        raise ConfigError(f"Config key '{SECTION}.mapping.lr_scale' must be positive, not {cfg.mapping.lr_scale}.")
