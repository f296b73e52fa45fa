"""Files out of a baked mesh: the asset formats, the turntable preview, and re-export.

The baked mesh is also kept as ``checkpoints/baked.glb`` so that ``magic3d export`` can write
other formats, axes or sizes later without optimising again.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from magic3d.errors import InputError
from magic3d.storage import atomic_write_text
from magic3d.timing import PhaseTimes

if TYPE_CHECKING:
    import trimesh

    from magic3d.config import Config

BAKED_MESH = Path("checkpoints") / "baked.glb"
ASSET_STEM = "asset"


def write_outputs(mesh: trimesh.Trimesh, run_dir: Path, prompt: str, cfg: Config,
                  times: PhaseTimes | None = None) -> dict[str, Path]:
    """Write every configured format, the preview GIF and the re-export source; return the paths.
    ``times``, when given, gets the turntable's seconds as its ``preview`` phase."""
    from exporters import write_glb
    from renderers.turntable import render_turntable

    times = times or PhaseTimes()
    write_glb(mesh, run_dir / BAKED_MESH)
    export = cfg.export
    # The turntable's first frame is also the USD thumbnail, so it is rendered before the formats.
    with times.phase("preview"):
        # Bake's checks of the welded surface: closed and not through itself, so no face turned away shows.
        surface = mesh.metadata.get("surface", {})
        closed = bool(surface.get("watertight")) and surface.get("self_intersections") == 0
        frames = render_turntable(mesh, frames=export.preview_frames if export.preview else 1,
                                  resolution=export.preview_resolution, closed=closed)
    prior = ", ".join(dict.fromkeys((cfg.prior.id, cfg.prior.fine_id or cfg.prior.id)))
    info = asset_info(run_dir, prompt, cfg.runtime.seed, prior)
    if source := cfg.control.edited_from():
        info = dataclasses.replace(info, edited_from=f"{source['run']} ({source['prompt']}, seed {source['seed']})")
    files = write_formats(mesh, run_dir, export.formats, info, export.up_axis, export.size_m, physics_of(export),
                          frames[0])
    if export.preview:
        with times.phase("preview"):
            files["preview"] = write_gif_file(frames, run_dir / "preview.gif")
    return files


def physics_of(export: Any) -> Any:
    from exporters import Physics

    return Physics(density=float(export.density)) if export.physics else None


def write_formats(
    mesh: trimesh.Trimesh, run_dir: Path, formats: tuple[str, ...] | list[str], info: Any, up_axis: str,
    size_m: float, physics: Any = None, thumbnail: Any = None,
) -> dict[str, Path]:
    from PIL import Image

    from exporters import export_asset

    image = Image.fromarray(thumbnail) if thumbnail is not None else None
    return export_asset(mesh, run_dir, list(formats), info, up_axis=up_axis, size_m=size_m, physics=physics,
                        thumbnail=image)


def write_preview(mesh: trimesh.Trimesh, path: Path, frames: int, resolution: int) -> Path:
    from renderers.turntable import render_turntable

    return write_gif_file(render_turntable(mesh, frames=frames, resolution=resolution), path)


def write_gif_file(frames: Any, path: Path) -> Path:
    from magic3d.storage import atomic_path
    from renderers.turntable import write_gif

    with atomic_path(path) as tmp:
        write_gif(frames, tmp)
    return path


def asset_info(run_dir: Path, prompt: str, seed: int, prior: str = "") -> Any:
    from exporters import AssetInfo
    from magic3d.info import package_versions
    from magic3d.naming import object_word

    version = package_versions(("magic3d",))["magic3d"] or "0"
    return AssetInfo(name=run_dir.name, prompt=prompt, seed=seed, generator="magic3d", version=version, prior=prior,
                     label=object_word(prompt))


def reexport(
    run_dir: Path, formats: str | None = None, up_axis: str | None = None, size_m: float | None = None
) -> dict[str, Path]:
    """Write ``formats`` (comma-separated) for a finished run; defaults come from its run.json."""
    from magic3d.config import EXPORT_FORMATS, shown
    from magic3d.storage import check_run_folder, confined, read_record

    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    record = read_record(run_dir / "run.json")
    if record is None:
        raise InputError(f"{str(run_dir)!r} is not a magic3d run folder (no readable run.json).")
    baked = run_dir / BAKED_MESH
    if record.get("status") != "done" or not baked.is_file():
        raise InputError(f"The run in {str(run_dir)!r} has not finished; run `magic3d generate` on it again first.")
    config = record.get("config")
    export_cfg = config.get("export") if isinstance(config, dict) else None
    if not isinstance(export_cfg, dict):
        raise InputError(f"{str(run_dir / 'run.json')!r} is damaged (no export settings); "
                         "run `magic3d generate` with --restart to make the run again.")
    chosen = [f.strip() for f in (formats or ",".join(export_cfg.get("formats", ["usdc"]))).split(",") if f.strip()]
    unknown = [f for f in chosen if f not in EXPORT_FORMATS]
    if unknown or not chosen:
        raise InputError(f"Unknown export format {shown(unknown or formats)}; choose from {', '.join(EXPORT_FORMATS)}.")
    axis = str(up_axis or export_cfg.get("up_axis", "Y")).upper()
    if axis not in ("Y", "Z"):
        raise InputError(f"--up-axis must be Y or Z, not {shown(up_axis)}.")
    size = size_m if size_m is not None else export_cfg.get("size_m", 1.0)
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or not size > 0:
        raise InputError(f"--size must be a positive, finite number of metres, not {shown(size)}.")
    from exporters import load_asset  # the writers (trimesh, USD) only once the input is checked

    try:
        mesh = load_asset(baked)
    except Exception as exc:  # damaged on disk: the run must be baked again
        raise InputError(f"{str(baked)!r} is damaged ({type(exc).__name__}); "
                         "run `magic3d generate` on this run again with --restart to remake it.") from None
    priors = [str(p) for p in (record.get("prior"), record.get("fine_prior")) if p]
    info = asset_info(run_dir, str(record.get("prompt", "")), int(record.get("seed", 0) or 0),
                      ", ".join(dict.fromkeys(priors)))
    with confined(run_dir):
        from exporters import Physics
        from renderers.turntable import render_turntable

        density = export_cfg.get("density", 700.0)
        physics = Physics(density=float(density)) if export_cfg.get("physics", True) else None
        thumbnail = render_turntable(mesh, frames=1, resolution=int(export_cfg.get("preview_resolution", 256)))[0]
        files = write_formats(mesh, run_dir, chosen, info, axis, float(size), physics, thumbnail)
        files_record = record.get("files") if isinstance(record.get("files"), dict) else {}
        record["files"] = {**files_record, **{k: str(p.relative_to(run_dir)) for k, p in files.items()}}
        atomic_write_text(run_dir / "run.json", json.dumps(record, indent=2))
    return files
