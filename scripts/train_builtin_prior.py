"""Train the built-in prior: DDPM noise prediction on the procedural world, with CFG dropout.

    python scripts/train_builtin_prior.py DATA.npz [--steps 2500] [--batch 32] [--seed 0]
        [--out magic3d/guidance/builtin_weights]

Writes the EMA weights in diffusers layout (unet/, scheduler/) plus text_encoder/ and
camera_encoder/ every ``--save-every`` steps (into a temporary folder, then renamed), and a
JSON log beside them, so a usable model exists whenever the run is stopped.

``--focus-kinds`` and ``--high-t-share`` spend part of each batch on the kinds whose look
depends on the camera's azimuth (cube, house, table, pyramid) and on the noisy timesteps SDS
samples most: that is where the camera encoder has something to learn.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

from magic3d.guidance.builtin_model import (
    BagOfWordsEncoder,
    CameraEncoder,
    build_unet,
    load_camera_encoder,
    load_text_encoder,
    save_camera_encoder,
    save_text_encoder,
)
from magic3d.guidance.builtin_world import KINDS

NUM_TRAIN_TIMESTEPS = 1000
CFG_DROPOUT = 0.1
# The camera is dropped on its own (not with the text): SDS keeps it in both halves of
# classifier-free guidance, and 2D sampling without a camera still has to work.
CAMERA_DROPOUT = 0.15
CAMERA_LR_SCALE = 20.0


def make_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon")


def save(unet, encoder, camera, scheduler, out: Path, log: dict) -> None:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    save_text_encoder(encoder, tmp / "text_encoder")
    save_camera_encoder(camera, tmp / "camera_encoder")
    scheduler.save_pretrained(tmp / "scheduler")
    (tmp / "training.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--focus-kinds", default="", help="comma-separated kinds drawn for --focus-share of each batch")
    parser.add_argument("--focus-share", type=float, default=0.0)
    parser.add_argument("--high-t-share", type=float, default=0.0, help="share of each batch with t in [400, 1000)")
    parser.add_argument("--init", default="", help="continue from weights saved by this script (EMA copy)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "magic3d/guidance/builtin_weights"))
    args = parser.parse_args()
    focus_kinds = [k for k in args.focus_kinds.split(",") if k]
    if unknown := sorted(set(focus_kinds) - set(KINDS)):
        parser.error(f"unknown --focus-kinds {', '.join(unknown)}; known: {', '.join(KINDS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    data = np.load(args.data)
    images = torch.from_numpy(data["images"]).float() / 127.5 - 1.0  # N 3 32 32 in [-1, 1]
    captions = list(data["captions"])
    cameras = torch.from_numpy(data["cameras"]).float()  # N 2: elevation, azimuth in degrees
    unet, encoder, camera, scheduler = build_unet(), BagOfWordsEncoder(), CameraEncoder(), make_scheduler()
    previous = {}
    if args.init:
        # A run stopped early is continued from its saved EMA weights with a fresh optimiser.
        init = Path(args.init)
        unet = UNet2DModel.from_pretrained(init / "unet").train()
        encoder = load_text_encoder(init / "text_encoder").train()
        # Weights trained before the camera existed gain a fresh one (zero output at first).
        camera = (load_camera_encoder(init / "camera_encoder") or camera).train()
        previous = json.loads((init / "training.json").read_text(encoding="utf-8"))
    ids = encoder.ids(captions)
    null_ids = encoder.ids([""])[0]
    ema_unet, ema_encoder, ema_camera = (copy.deepcopy(m).eval() for m in (unet, encoder, camera))
    # The camera encoder starts at zero inside a trained model: at the UNet's learning rate it
    # stays near zero for hundreds of steps (measured), so it learns twenty times faster.
    groups = [{"params": list(unet.parameters()) + list(encoder.parameters()), "lr": args.lr},
              {"params": list(camera.parameters()), "lr": args.lr * CAMERA_LR_SCALE}]
    params = [p for group in groups for p in group["params"]]
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=args.steps,
                                                pct_start=0.05)
    alphas = scheduler.alphas_cumprod

    log = {"machine": platform.platform(), "processor": platform.processor(), "threads": args.threads,
           "images": len(images), "params_unet": sum(p.numel() for p in unet.parameters()),
           "steps": 0, "batch": args.batch, "seed": args.seed, "lr": args.lr, "ema": args.ema,
           "camera_dropout": CAMERA_DROPOUT, "camera_lr_scale": CAMERA_LR_SCALE, "focus_kinds": args.focus_kinds,
           "focus_share": args.focus_share, "high_t_share": args.high_t_share, "losses": []}
    if previous:
        # The record of earlier phases travels with the weights, so total steps and time add up.
        log["previous_phases"] = [*previous.pop("previous_phases", []), {k: v for k, v in previous.items()}]
    start, running = time.perf_counter(), None
    focus = [KINDS.index(k) for k in focus_kinds]
    focus_idx = torch.from_numpy(np.nonzero(np.isin(data["kinds"], focus))[0]) if focus else None
    n_focus = int(args.batch * args.focus_share) if focus else 0
    n_high = int(args.batch * args.high_t_share)
    for step in range(1, args.steps + 1):
        pick = torch.randint(len(images), (args.batch,), generator=gen)
        if n_focus:
            pick[:n_focus] = focus_idx[torch.randint(len(focus_idx), (n_focus,), generator=gen)]
        x0 = images[pick]
        batch_ids = ids[pick].clone()
        drop = torch.rand(args.batch, generator=gen) < CFG_DROPOUT
        batch_ids[drop] = -1
        batch_ids[drop, 0] = null_ids[0]
        batch_cams = cameras[pick].clone()
        batch_cams[torch.rand(args.batch, generator=gen) < CAMERA_DROPOUT] = float("nan")
        t = torch.randint(NUM_TRAIN_TIMESTEPS, (args.batch,), generator=gen)
        t[:n_high] = torch.randint(400, NUM_TRAIN_TIMESTEPS, (n_high,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t, class_labels=encoder(batch_ids) + camera(batch_cams)).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_encoder, encoder), (ema_camera, camera)):
                for pe, p in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(p, 1 - args.ema)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 25 == 0:
            log["losses"].append([step, round(running, 5)])
            print(f"step {step} loss {running:.4f} {time.perf_counter() - start:.0f}s", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            log.update(steps=step, seconds=round(time.perf_counter() - start, 1), final_loss=round(running, 5))
            save(ema_unet, ema_encoder, ema_camera, scheduler, Path(args.out), log)


if __name__ == "__main__":
    main()
