"""One command that checks a CUDA machine for the paper preset and writes what it measured.

    python scripts/gpu_check.py                  # on a CUDA GPU: writes samples/benchmarks/gpu.json
    python scripts/gpu_check.py --dry-run        # on CPU: tiny networks and sizes, a temp JSON
    python scripts/gpu_check.py --dry-run --out /tmp/gpu.json

Parts, each guarded (a failure is recorded with its error and the rest still runs) and each given
a time budget so the whole stays under 8 minutes on an H200:

1. ``raster``: nvdiffrast (``diffrp-nvdiffrast``, JIT-built on first use) against the PyTorch
   rasterizer on a few scenes: max pixel difference of rasterize / interpolate / antialias. On CPU
   nvdiffrast is recorded as "unavailable: ..." and the PyTorch backend is compared with the
   analytic answer instead.
2. ``step_times``: one coarse step (IF-I-XL-shaped UNet, 4.3 B parameters) and one fine step
   (SD-2.1-base-shaped UNet and VAE) at the paper preset's sizes, with peak GPU memory. Random
   weights, initialised on the device (speed does not depend on the weights).
3. ``generation``: ``run_coarse`` and ``run_fine`` for a few hundred steps each with those priors
   and random text embeddings of the right shapes; the full preset's time is extrapolated from
   the measured seconds per step.

Everything runs through the project's own code: ``CoarseModel``/``FineModel`` steps, ``run_coarse``
/ ``run_fine`` and the priors' SDS (``DeepFloydPrior``/``StableDiffusionPrior.from_components``).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "samples" / "benchmarks" / "gpu.json"
DRY_RUN_OUT = Path(tempfile.gettempdir()) / "magic3d-gpu-check-dry-run.json"

# --- network shapes (public configs; weights random) ----------------------------------------------

# DeepFloyd/IF-I-XL-v1.0 unet/config.json: 4.30 B parameters, 64x64 pixels, T5-XXL features (4096).
IF_I_XL_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 3, "out_channels": 6, "layers_per_block": 3,
    "block_out_channels": (704, 1408, 2112, 2816),
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "cross_attention_dim": 2816,
    "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj", "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64, "attention_head_dim": 64, "norm_num_groups": 32,
    "resnet_time_scale_shift": "scale_shift", "act_fn": "gelu", "only_cross_attention": False,
}
IF_TEXT = (77, 4096)

# stabilityai/stable-diffusion-2-1-base unet/config.json (865 M parameters, 64x64 latents, OpenCLIP-H 1024).
SD21_UNET: dict[str, Any] = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True,
    "norm_num_groups": 32, "act_fn": "silu",
}
# stabilityai/stable-diffusion-2-1-base vae/config.json (8x downsampling: 512 px -> 64 latents).
SD21_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 768, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
SD_TEXT = (77, 1024)

# --dry-run: the same kinds of blocks at toy widths (magic3d/guidance/tiny.py's shapes).
TINY_IF_UNET: dict[str, Any] = {
    **IF_I_XL_UNET, "sample_size": 16, "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "cross_attention_dim": 32, "encoder_hid_dim": 32, "addition_embed_type_num_heads": 2, "attention_head_dim": 8,
    "norm_num_groups": 16,
}
TINY_SD_UNET: dict[str, Any] = {
    **SD21_UNET, "sample_size": 4, "layers_per_block": 1, "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"), "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32, "attention_head_dim": 8, "norm_num_groups": 16,
}
TINY_SD_VAE: dict[str, Any] = {**SD21_VAE, "sample_size": 32, "layers_per_block": 1,
                               "block_out_channels": (8, 16, 16, 16), "norm_num_groups": 8}
TINY_TEXT = (77, 32)

# Dry-run sizes: the paper preset with every size cut down (same code paths, seconds on a CPU).
DRY_RUN_OVERRIDES = [
    "coarse.resolution=16", "coarse.samples_per_ray=16", "coarse.occupancy_resolution=16",
    "coarse.field={levels: 4, log2_hashmap_size: 12, max_res: 64, hidden: 16}",
    "fine.resolution=32", "fine.tet_resolution=16", "fine.texture_init_steps=3", "fine.texture_init_points=512",
    "fine.texture={levels: 4, log2_hashmap_size: 12, max_res: 64, hidden: 16}",
]


# --- plumbing -------------------------------------------------------------------------------------


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "error": f"{type(exc).__name__}: {exc}"}


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
                            "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, device_memory_gib=round(props.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = "cpu"
    with contextlib.suppress(Exception):
        import diffusers

        info["diffusers"] = diffusers.__version__
    return info


def guarded(results: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one part; its failure is recorded (with the error) and does not stop the others."""
    start = time.perf_counter()
    try:
        out = fn()
        out["ok"] = True
    except Exception as exc:  # the point of the script is to report every part, failing or not
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    out["wall_s"] = round(time.perf_counter() - start, 3)
    results[name] = out
    print(json.dumps({name: {k: v for k, v in out.items() if k != "traceback"}}, default=str)[:2000], flush=True)
    return out if out["ok"] else None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


# --- part 1: rasterizer comparison ----------------------------------------------------------------


def raster_scenes(device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]:
    """(clip positions "1 V 4", faces "F 3", resolution) of flat, overlapping and perspective scenes."""
    import trimesh

    from renderers.cameras import orbit_cameras

    def clip(rows: list[list[float]]) -> torch.Tensor:
        return torch.tensor([[[x, y, z, w] for x, y, z, w in rows]], dtype=torch.float32, device=device)

    scenes = {
        "triangle": (clip([[-0.8, -0.6, 0.0, 1.0], [0.7, -0.6, 0.0, 1.0], [-0.1, 0.9, 0.0, 1.0]]),
                     torch.tensor([[0, 1, 2]], device=device), (64, 64)),
        "perspective_triangle": (clip([[-0.7, -0.6, 0.1, 1.0], [0.8 * 1.3, -0.5 * 1.3, 0.2, 1.3],
                                       [0.0, 0.8 * 0.8, 0.3, 0.8]]), torch.tensor([[0, 1, 2]], device=device), (48, 64)),
        "overlap": (clip([[-0.5, -0.5, -0.2, 1.0], [0.5, -0.5, -0.2, 1.0], [0.0, 0.5, -0.2, 1.0],
                          [-0.9, -0.9, 0.5, 1.0], [0.9, -0.9, 0.5, 1.0], [0.0, 0.9, 0.5, 1.0]]),
                    torch.tensor([[3, 4, 5], [0, 1, 2]], device=device), (64, 64)),
    }
    cube = trimesh.creation.box(extents=(1, 1, 1))
    cams = orbit_cameras([25.0], [35.0], 3.0, 45.0, 96).to(device)
    vertices = torch.tensor(cube.vertices, dtype=torch.float32, device=device)
    homo = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1)
    scenes["cube"] = ((homo @ cams.mvp().to(homo).transpose(1, 2)).float(),
                      torch.tensor(cube.faces, device=device), (96, 96))
    return scenes


def analytic_rast(clip: torch.Tensor, faces: torch.Tensor, resolution: tuple[int, int]) -> torch.Tensor | None:
    """The exact (u, v) of a single triangle at pixel centres (perspective-correct), or None."""
    if faces.shape[0] != 1:
        return None
    h, w = resolution
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w * 2 - 1
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    p = clip[0, faces[0]].double().cpu()  # "3 4"
    # Solve for homogeneous barycentrics b with sum_i b_i (x_i, y_i, w_i) proportional to (x, y, 1).
    m = torch.stack([p[:, 0] - xx[..., None] * p[:, 3], p[:, 1] - yy[..., None] * p[:, 3]], -2)  # "H W 2 3"
    b = torch.linalg.cross(m[..., 0, :], m[..., 1, :])
    b = b / b.sum(-1, keepdim=True)
    return b[..., :2].float()


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b).abs()[mask].max()) if bool(mask.any()) else 0.0


def compare_raster(device: torch.device, dry_run: bool) -> dict[str, Any]:
    from renderers.raster import TorchRasterizer, get_rasterizer
    from renderers.raster.build_check import advice

    reference = TorchRasterizer()
    out: dict[str, Any] = {"build_advice": advice() or None}
    candidate, reason = None, None
    if device.type == "cuda" and not dry_run:
        start = time.perf_counter()
        try:
            candidate = get_rasterizer(device, backend="nvdiffrast")
            scene = raster_scenes(device)["triangle"]
            candidate.rasterize(*scene)  # the first call loads (and on a fresh machine builds) the plugin
            sync(device)
            out["nvdiffrast_build_s"] = round(time.perf_counter() - start, 2)
        except Exception as exc:
            candidate, reason = None, f"{type(exc).__name__}: {exc}"
    else:
        reason = "no CUDA device" if device.type != "cuda" else "--dry-run"
    out["nvdiffrast"] = "available" if candidate is not None else f"unavailable: {reason}"
    out["against"] = "nvdiffrast" if candidate is not None else "analytic"
    scenes: dict[str, Any] = {}
    for name, (clip, faces, res) in raster_scenes(device).items():
        colors = torch.rand(clip.shape[1], 3, generator=torch.Generator().manual_seed(0)).to(device)
        ref_rast = reference.rasterize(clip, faces, res)
        ref_color = reference.interpolate(colors, ref_rast, faces)
        ref_aa = reference.antialias(ref_color, ref_rast, clip, faces)
        covered = ref_rast[..., 3] > 0
        row: dict[str, Any] = {"resolution": list(res), "faces": int(faces.shape[0]),
                               "covered_pixels": int(covered.sum())}
        if candidate is not None:
            rast = candidate.rasterize(clip, faces, res)
            color = candidate.interpolate(colors, rast, faces)
            aa = candidate.antialias(color, rast, clip, faces)
            same = covered & (rast[..., 3] == ref_rast[..., 3])
            row.update(
                coverage_mismatch_pixels=int((covered != (rast[..., 3] > 0)).sum()),
                triangle_id_mismatch_pixels=int((covered & ~same & (rast[..., 3] > 0)).sum()),
                rasterize_max_diff=max_diff(rast[..., :3], ref_rast[..., :3], same[..., None].expand(-1, -1, -1, 3)),
                interpolate_max_diff=max_diff(color, ref_color, same[..., None].expand_as(color)),
                antialias_max_diff=max_diff(aa, ref_aa, torch.ones_like(aa, dtype=torch.bool)),
            )
        else:
            exact = analytic_rast(clip, faces, res)
            if exact is not None:
                exact = exact.to(device)
                mask = covered[..., None].expand(-1, -1, -1, 2)
                row["rasterize_max_diff"] = max_diff(ref_rast[..., :2], exact[None], mask)
                weights = torch.cat([exact, 1 - exact.sum(-1, keepdim=True)], -1)  # "H W 3"
                expected = weights @ colors[faces[0]]
                row["interpolate_max_diff"] = max_diff(ref_color[0], expected, covered[0][..., None].expand(-1, -1, 3))
            # Antialiasing only blends across silhouette edges: pixels whose 4-neighbours are all
            # covered by the same triangle must keep their colour.
            ids = ref_rast[..., 3]
            interior = covered.clone()
            for shift, dim in ((1, 1), (-1, 1), (1, 2), (-1, 2)):
                interior &= torch.roll(ids, shift, dim) == ids
            row["antialias_max_diff"] = max_diff(ref_aa, ref_color, interior[..., None].expand_as(ref_aa))
        scenes[name] = row
    out["scenes"] = scenes
    for key in ("rasterize_max_diff", "interpolate_max_diff", "antialias_max_diff"):
        values = [s[key] for s in scenes.values() if key in s]
        out[key] = max(values) if values else None
    return out


# --- priors ---------------------------------------------------------------------------------------


def build_on_device(cls: Any, config: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """A diffusers model with random weights created directly on ``device`` (a 4.3 B-parameter
    init on the host takes minutes); fp32 here, the prior casts to its own dtype."""
    torch.manual_seed(0)
    with device:
        return cls(**config)


def build_if_prior(cfg: Any, device: torch.device, dry_run: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from magic3d.guidance.deepfloyd import DeepFloydPrior

    start = time.perf_counter()
    unet = build_on_device(UNet2DConditionModel, TINY_IF_UNET if dry_run else IF_I_XL_UNET, device)
    params = sum(p.numel() for p in unet.parameters())
    # IF's DDPM schedule (squaredcos_cap_v2); only alphas_cumprod is used.
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    prior = DeepFloydPrior.from_components(unet, alphas, cfg.prior, device, model_id="random IF-I-XL-shaped")
    sync(device)
    return prior, {"unet_params": params, "build_s": round(time.perf_counter() - start, 2),
                   "dtype": str(prior.dtype), "resolution": prior.resolution}


def build_sd_prior(cfg: Any, device: torch.device, dry_run: bool) -> tuple[Any, dict[str, Any]]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from magic3d.guidance.stable_diffusion import StableDiffusionPrior

    start = time.perf_counter()
    unet = build_on_device(UNet2DConditionModel, TINY_SD_UNET if dry_run else SD21_UNET, device)
    vae = build_on_device(AutoencoderKL, TINY_SD_VAE if dry_run else SD21_VAE, device)
    params = sum(p.numel() for p in unet.parameters())
    # SD 2.1 base's schedule: scaled_linear betas 0.00085 .. 0.012.
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear").alphas_cumprod
    prior = StableDiffusionPrior.from_components(unet, vae, alphas, cfg.prior, device,
                                                 model_id="random SD-2.1-base-shaped", offload=cfg.runtime.offload)
    sync(device)
    return prior, {"unet_params": params, "vae_params": sum(p.numel() for p in vae.parameters()),
                   "build_s": round(time.perf_counter() - start, 2), "dtype": str(prior.dtype),
                   "resolution": prior.resolution}


def random_prompts(prior: Any, text_shape: tuple[int, int], device: torch.device) -> Any:
    """ViewPrompts whose four view embeddings (and the unconditional one) are random tensors."""
    from magic3d.guidance.base import TextEmbeddings
    from magic3d.prompts import BUCKETS, ViewPrompts

    gen = torch.Generator().manual_seed(0)
    uncond = torch.randn(1, *text_shape, generator=gen).to(device, prior.dtype)
    per_bucket = {b: TextEmbeddings(torch.randn(1, *text_shape, generator=gen).to(device, prior.dtype), uncond)
                  for b in BUCKETS}
    return ViewPrompts("random embeddings", per_bucket)


# --- parts 2 and 3: step times and a short generation ---------------------------------------------


def time_model_steps(model: Any, steps: int, budget_s: float, autocast: torch.dtype | None,
                     device: torch.device) -> dict[str, Any]:
    """Seconds per optimisation step of a stage's model (step, backward, Adam, after_step), as
    ``run_loop`` runs it; the first step (allocator and kernel warm-up) is reported apart."""
    from magic3d.stages.loop import LoopSpec, grad_scaler, optimise_step

    spec = LoopSpec("timed", steps + 1, 0, device_type=device.type, autocast=autocast)
    opt = torch.optim.Adam(model.param_groups(), betas=spec.betas, eps=spec.eps)
    scaler = grad_scaler(spec)
    gen = torch.Generator().manual_seed(0)
    times: list[float] = []
    start_all = time.perf_counter()
    for step in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        loss, _ = optimise_step(model, opt, scaler, spec, step, gen)
        model.after_step(step, gen)
        loss.detach().item()  # the loop's one host read per step
        sync(device)
        times.append(time.perf_counter() - start)
        if time.perf_counter() - start_all > budget_s and len(times) >= 2:
            break
    timed = times[1:] or times
    return {"first_step_s": round(times[0], 4), "seconds_per_step": round(statistics.median(timed), 4),
            "timed_steps": len(timed)}


class StepClock:
    """A progress callback that notes when each loop step finished."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, stage: str, step: int, total: int, loss: float) -> None:
        self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float:
        """Mean over all steps after the first (which includes warm-up)."""
        if len(self.times) < 2:
            return float("nan")
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


def extrapolate(seconds_per_step: float, setup_s: float, preset_steps: int) -> dict[str, Any]:
    loop = seconds_per_step * preset_steps
    return {"preset_steps": preset_steps, "extrapolated_loop_s": round(loop, 2),
            "extrapolated_stage_s": round(loop + setup_s, 2)}


def gen_steps(requested: int, seconds_per_step: float | None, budget_s: float) -> int:
    """As many of ``requested`` steps as fit the part's budget at the measured step time (at least
    3); without a measurement (its part failed), a cautious 20."""
    if not seconds_per_step or not math.isfinite(seconds_per_step):
        return max(3, min(requested, 20))
    return max(3, min(requested, int(budget_s / seconds_per_step)))


class Check:
    """The parts in order, sharing the priors (built once each) and the coarse field."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        from magic3d.config import load_config

        self.args, self.device, self.dry_run = args, device, args.dry_run
        self.cfg = load_config("paper", DRY_RUN_OVERRIDES if args.dry_run else [])
        self.preset = load_config("paper")  # step counts of the full preset, for extrapolation
        self.precision = self.cfg.runtime.precision
        self.results: dict[str, Any] = {}
        self.prior: Any = None
        self.prompts: Any = None
        self.coarse_field: Any = None
        self.work = Path(tempfile.mkdtemp(prefix="magic3d-gpu-check-"))
        self.started = time.perf_counter()

    def autocast(self) -> torch.dtype | None:
        from magic3d.stages.loop import autocast_dtype

        return autocast_dtype(self.precision, self.device)

    def use_prior(self, family: str) -> dict[str, Any]:
        """Build the ``family`` prior (dropping the other first, as the pipeline does)."""
        if self.prior is not None and self.prior.name == ("deepfloyd-if" if family == "if" else "stable-diffusion"):
            return {}
        self.prior = self.prompts = None
        gc.collect()  # the previous prior's networks leave the device before the next one is built
        reset_peak(self.device)
        if family == "if":
            self.prior, info = build_if_prior(self.cfg, self.device, self.dry_run)
            self.prompts = random_prompts(self.prior, TINY_TEXT if self.dry_run else IF_TEXT, self.device)
        else:
            self.prior, info = build_sd_prior(self.cfg, self.device, self.dry_run)
            self.prompts = random_prompts(self.prior, TINY_TEXT if self.dry_run else SD_TEXT, self.device)
        info["peak_gib_after_build"] = peak_gib(self.device)
        return {"prior": info}

    def loss(self, stage_cfg: Any) -> Any:
        from magic3d.stages.losses import SDSLoss

        return SDSLoss(self.prior, self.prompts, stage_cfg.sds)

    def coarse_step(self) -> dict[str, Any]:
        from magic3d.stages.coarse import CoarseModel

        out = self.use_prior("if")
        reset_peak(self.device)
        c = self.cfg.coarse
        model = CoarseModel(c, self.loss(c), self.device)
        model.occupancy.update(model.field.density, torch.Generator().manual_seed(0), self.device)
        out.update(resolution=c.resolution, samples_per_ray=c.samples_per_ray, batch_size=c.batch_size,
                   **time_model_steps(model, self.args.step_repeats, self.args.budget_step, self.autocast(), self.device),
                   peak_gib=peak_gib(self.device))
        self.coarse_field = model.field.eval()
        return out

    def fine_step(self) -> dict[str, Any]:
        from magic3d.stages.fine import FineModel

        out = self.use_prior("sd")
        reset_peak(self.device)
        f = self.cfg.fine
        model = FineModel(f, self.loss(f), self.device)
        out["rasterizer"] = model.rasterizer.name
        start = time.perf_counter()
        out["coarse_field"] = self.with_coarse_field(
            lambda field: model.initialise(field, torch.Generator().manual_seed(0)))
        sync(self.device)
        out.update(initialise_s=round(time.perf_counter() - start, 3), resolution=f.resolution,
                   tet_resolution=f.tet_resolution, batch_size=f.batch_size,
                   **time_model_steps(model, self.args.step_repeats, self.args.budget_step, self.autocast(), self.device),
                   peak_gib=peak_gib(self.device))
        return out

    def with_coarse_field(self, fn: Callable[[Any], Any]) -> str:
        """``fn(coarse field)`` with the field of an earlier part; if that one has no surface (random
        priors may empty it) or does not exist, with a fresh field, whose density blob has one.
        Returns which field was used. Fine-stage speed depends on the mesh size, not its shape."""
        from magic3d.errors import RunError
        from magic3d.fields.nerf import NeRFField

        note = "fresh density blob (no coarse part ran)"
        if self.coarse_field is not None:
            try:
                fn(self.coarse_field)
                return "from the coarse part"
            except RunError as exc:
                note = f"fresh density blob (the coarse part's field: {exc})"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            fn(NeRFField(self.cfg.coarse.field, self.device).to(self.device).eval())
        return note

    def remaining_s(self) -> float:
        return self.args.deadline - (time.perf_counter() - self.started)

    def generation(self, stage: str) -> dict[str, Any]:
        import dataclasses

        from magic3d.stages.coarse import run_coarse
        from magic3d.stages.fine import run_fine

        out = self.use_prior("if" if stage == "coarse" else "sd")
        reset_peak(self.device)
        measured = self.results.get("step_times", {}).get(stage, {}).get("seconds_per_step")
        # The part's budget, shortened when the whole check nears its deadline (60 s kept for the rest).
        budget = max(5.0, min(self.args.budget_gen, self.remaining_s() - (60.0 if stage == "coarse" else 15.0)))
        steps = gen_steps(self.args.gen_steps, measured, budget)
        stage_cfg = dataclasses.replace(getattr(self.cfg, stage), steps=steps, checkpoint_every=steps,
                                        preview_every=steps)
        clock = StepClock()
        run_dir = self.work / stage
        start = time.perf_counter()
        if stage == "coarse":
            result = run_coarse(self.loss(stage_cfg), stage_cfg, run_dir, self.device, seed=0, progress=clock,
                                resume=False, precision=self.precision)
            self.coarse_field = result.field
        else:
            results: list[Any] = []

            def fine(field: Any) -> None:
                nonlocal start
                start = time.perf_counter()  # a failed first attempt is not counted
                clock.times.clear()
                results.append(run_fine(field, self.loss(stage_cfg), stage_cfg, run_dir, self.device, seed=0,
                                        progress=clock, resume=False, precision=self.precision))

            out["coarse_field"] = self.with_coarse_field(fine)
            result = results[-1]
        sync(self.device)
        wall = time.perf_counter() - start
        per_step = clock.seconds_per_step()
        # Everything that is not the loop's steps: model set-up, fine initialisation, the first
        # (warm-up) step, the final checkpoint and preview. Counted once in the extrapolation.
        setup = wall - per_step * (len(clock.times) - 1)
        out.update(steps=steps, run_s=round(wall, 3), seconds_per_step=round(per_step, 5),
                   setup_s=round(setup, 3), final_loss=result.metrics.get("loss"), peak_gib=peak_gib(self.device),
                   **extrapolate(round(per_step, 5), round(setup, 3), getattr(self.preset, stage).steps))
        return out

    def run(self) -> dict[str, Any]:
        r = self.results
        guarded(r, "raster", lambda: compare_raster(self.device, self.dry_run))
        r["step_times"], r["generation"] = {}, {}
        guarded(r["step_times"], "coarse", self.coarse_step)
        guarded(r["generation"], "coarse", lambda: self.generation("coarse"))
        guarded(r["step_times"], "fine", self.fine_step)
        guarded(r["generation"], "fine", lambda: self.generation("fine"))
        self.prior = self.prompts = None
        shutil.rmtree(self.work, ignore_errors=True)
        stages = [r["generation"].get(s, {}) for s in ("coarse", "fine")]
        if all(s.get("ok") for s in stages):
            r["extrapolated_paper_s"] = round(sum(s["extrapolated_stage_s"] for s in stages), 2)
            r["extrapolated_paper_min"] = round(r["extrapolated_paper_s"] / 60, 2)
        return r


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny networks and sizes, a few steps (CPU, CI); writes a temp file unless --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON path (default {DEFAULT_OUT.relative_to(ROOT)}; --dry-run: {DRY_RUN_OUT})")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run when no GPU)")
    parser.add_argument("--gen-steps", type=int, default=None, help="loop steps per stage (default 300; dry run 3)")
    parser.add_argument("--step-repeats", type=int, default=None, help="timed steps per stage (default 10; dry run 2)")
    parser.add_argument("--budget-step", type=float, default=30.0, help="seconds per step-timing part")
    parser.add_argument("--budget-gen", type=float, default=75.0, help="seconds per generation part")
    parser.add_argument("--deadline", type=float, default=420.0,
                        help="seconds for the whole check; the generation parts shrink to fit it")
    args = parser.parse_args(argv)
    args.gen_steps = args.gen_steps or (3 if args.dry_run else 300)
    args.step_repeats = args.step_repeats or (2 if args.dry_run else 10)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.dry_run and device.type != "cuda":
        print("gpu_check needs a CUDA device (none is visible); use --dry-run to test it on the CPU.", file=sys.stderr)
        return 2
    out = args.out or (DRY_RUN_OUT if args.dry_run else DEFAULT_OUT)
    start = time.perf_counter()
    check = Check(args, device)
    results: dict[str, Any] = {
        "command": "python scripts/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "dry_run": args.dry_run, "machine": machine(device), **git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "precision": check.precision,
    }
    results.update(check.run())
    results["total_wall_s"] = round(time.perf_counter() - start, 2)
    write_json(out, results)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
