"""``magic3d interpolate MODEL_DIR A B --frames N``: the conditioning walked from A to B.

Frame i's field is the model at ``(1 - s) * c_A + s * c_B`` with ``s = i / (N - 1)`` (the
pooled text embeddings of the two prompts); each frame goes through mesh extraction and bake
and is written as its own asset (``frames/frame-XX/asset.usdc`` and ``.glb``). ``morph.gif``
shows the frames in order, each from a camera one step further round, and ``sequence.usda``
holds every frame as a variant of one prim.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from magic3d.amortize.generate import ModelPlan, check_prompt, plan_model
from magic3d.errors import InputError

MAX_FRAMES = 120


def plan_interpolation(model_dir: str | Path, prompt_a: str, prompt_b: str, frames: int, out: str | Path,
                       device: str | None = None) -> tuple[ModelPlan, list[str], int, Path]:
    """Every check before any work, no torch: model folder, both prompts, frame count, output folder."""
    from magic3d.naming import clean_prompt
    from magic3d.storage import check_run_folder, ensure_writable_dir

    if not str(out).strip():
        raise InputError("--out is empty; give the folder for the frames, e.g. --out outputs/morph.")
    if not 2 <= frames <= MAX_FRAMES:
        raise InputError(f"--frames must be between 2 and {MAX_FRAMES}, not {frames}.")
    plan = plan_model(model_dir, device)
    texts = [clean_prompt(prompt_a), clean_prompt(prompt_b)]
    for text in texts:
        check_prompt(plan, text)
    out = Path(out)
    check_run_folder(out)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    return plan, texts, frames, out


def run_interpolation(plan: ModelPlan, texts: list[str], frames: int, out: Path) -> dict[str, Any]:
    import torch

    from exporters import write_glb
    from exporters.common import make_dirs
    from exporters.usd.sequence import write_variant_sequence
    from magic3d.amortize.generate import conditioning_of, load_conditioned
    from magic3d.amortize.texture import model_surface
    from magic3d.bake import bake
    from magic3d.export import asset_info, physics_of, write_formats, write_gif_file
    from magic3d.plan import resolve_device
    from magic3d.storage import atomic_write_text, confined, ensure_writable_dir
    from renderers.turntable import render_turntable

    run = plan.cfg.run
    device = resolve_device(run.runtime.device)
    model, table = load_conditioned(plan, device)
    ends, _ = conditioning_of(plan, texts, table, device)
    clock = time.perf_counter()
    gif_frames, sequence, rows = [], [], []
    with confined(out.parent):
        ensure_writable_dir(out)
        make_dirs(out)
        for i in range(frames):
            s = i / (frames - 1)
            text = (1.0 - s) * ends[0] + s * ends[1]
            with torch.no_grad():
                field = model.conditioned.at(text).eval()
            fine = model_surface(model, field, text, run.fine, device)
            mesh = bake(fine.vertices, fine.faces, fine.color_fn, run.bake)
            name = f"frame-{i:02d}"
            folder = out / "frames" / name
            make_dirs(folder)
            write_glb(mesh, folder / "asset.glb")
            write_formats(mesh, folder, ["usdc"], asset_info(folder, f"{texts[0]} -> {texts[1]} ({s:.2f})",
                                                             run.runtime.seed, plan.prior_id),
                          run.export.up_axis, run.export.size_m, physics_of(run.export))
            # The morph turns as it changes: frame i is seen from the i-th of ``frames`` turntable cameras.
            gif_frames.append(render_turntable(mesh, frames=frames, resolution=run.export.preview_resolution)[i])
            sequence.append((name, f"./frames/{name}/asset.usdc"))
            rows.append({"frame": i, "s": s, "faces": int(len(mesh.faces)), "glb": f"frames/{name}/asset.glb"})
        gif = write_gif_file(gif_frames, out / "morph.gif")
        usd = write_variant_sequence(out / "sequence.usda", "morph", sequence, run.export.up_axis)
        record = {"from": str(plan.model_dir), "prompts": texts, "unseen": [not plan.seen(t) for t in texts],
                  "frames": rows, "seconds": round(time.perf_counter() - clock, 3)}
        atomic_write_text(out / "interpolation.json", json.dumps(record, indent=2))
    return {"gif": gif, "usd": usd, "frames": [out / r["glb"] for r in rows], "record": record}
