"""What ``magic3d info`` prints and ``run.json`` records: versions and devices."""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("magic3d", "torch", "nerfstudio", "diffusers", "transformers", "trimesh", "xatlas", "usd-core")
OPTIONAL = ("diffrp-nvdiffrast", "xformers", "ray", "tinycudann")


def package_versions(names: tuple[str, ...] = PACKAGES + OPTIONAL) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect_info() -> dict[str, str]:
    import torch

    from magic3d.config import available_presets
    from magic3d.fields import hashgrid_kernel

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "presets": ", ".join(available_presets()),
        "cpu hash-grid kernel": hashgrid_kernel.status(),
    }
    for name, version in package_versions().items():
        info[name] = version or "not installed"
    info.update(nvdiffrast_build_info())
    return info


def nvdiffrast_build_info() -> dict[str, str]:
    """Whether nvdiffrast's first-use CUDA build can work here: compiler, ninja, CUDA headers and
    the package, found or not, with how to add what is missing. Builds nothing."""
    from renderers.raster.build_check import requirements, summary

    reqs = requirements()
    out = {"nvdiffrast build": summary(reqs)}
    for r in reqs:
        out[f"  {r.name}"] = r.detail if r.ok else f"missing: {r.detail}; {r.fix}"
    return out
