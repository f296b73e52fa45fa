"""A CUDA device that runs on the CPU, strict about where every tensor lives.

No machine of this project's CI has a GPU, yet the path almost every user takes runs on one.
The faults only a GPU shows are of a few kinds: a tensor made on the host (a factory call
without ``device=``) meeting one on the GPU, a host-only call (``.numpy()``) on a GPU tensor, a
CPU generator drawing GPU noise, and host synchronisations in the training loop. This harness
makes each of them visible here.

Under ``DeviceHarness()`` the run device is ``cuda:0`` as far as the code can tell
(``torch.cuda.is_available()`` is true, ``t.device`` of a GPU tensor says ``cuda:0``, every
``if device.type == "cuda"`` branch runs), while every tensor really lives on the CPU. Each
tensor carries a mark: *device* (made with ``device=cuda``, moved with ``.to(cuda)``, or computed
from device tensors), *host* (made without a device, or moved to the CPU), or none (made inside
C++ where the mode can't see, e.g. by autograd; such tensors take the mark of what they meet).
An operation whose inputs mix device and host tensors raises ``MixedDeviceError``, as CUDA
would; the exceptions are CUDA's own: 0-dim host tensors (CPU scalars), index arguments of
``t[...]``, and explicit copies (``copy_``, ``.to``). ``torch.autocast("cuda")`` becomes CPU
autocast, so mixed precision really runs.

``syncs`` counts operations that make the host wait for the GPU (``.item()``, ``float(t)``,
``.tolist()``, device-to-host copies, ops whose output size depends on values, such as
``nonzero`` or boolean-mask indexing); ``uploads`` counts blocking host-to-device copies.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

RUN = torch.device("cuda", 0)
HOST = torch.device("cpu")
DEVICE, ON_HOST = "device", "host"
_MARK = "_harness_where"


class MixedDeviceError(RuntimeError):
    """An operation met tensors on the run device and on the host (CUDA raises here too)."""


def where(t: torch.Tensor) -> str | None:
    return getattr(t, _MARK, None)


def mark(t: Any, place: str | None) -> None:
    if place is not None and isinstance(t, torch.Tensor):
        try:
            setattr(t, _MARK, place)
        except (AttributeError, RuntimeError):  # some C++-owned tensors refuse attributes
            pass


def on_device(t: torch.Tensor) -> bool:
    return where(t) == DEVICE


_T = torch.Tensor
FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.linspace, torch.logspace,
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.eye, torch.tensor, torch.as_tensor,
    torch.scalar_tensor, torch.empty_strided, torch.tril_indices, torch.triu_indices, torch.normal,
    torch.from_numpy, torch.frombuffer,
}
LIKE = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like,
        torch.randn_like, torch.randint_like}
NEW = {_T.new_zeros, _T.new_ones, _T.new_empty, _T.new_full, _T.new_tensor, _T.new_empty_strided}
RANDOM = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.rand_like,
          torch.randn_like, torch.randint_like, _T.uniform_, _T.normal_, _T.random_, _T.bernoulli_,
          torch.bernoulli, torch.multinomial, _T.exponential_}
# The host reads a value computed on the GPU: it waits for every queued kernel.
SYNC_READS = {_T.item, _T.tolist, _T.__bool__, _T.__float__, _T.__int__, _T.__index__}
SYNC_SHAPES = {torch.nonzero, _T.nonzero, torch.argwhere, _T.argwhere, torch.masked_select, _T.masked_select,
               torch.unique, _T.unique, torch.unique_consecutive, torch.bincount, _T.bincount}
COPIES = {_T.copy_}


def _device_arg(value: Any) -> torch.device | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return RUN if on_device(value) else HOST
    if isinstance(value, int):
        return RUN
    return torch.device(value)


def _place_of(device: torch.device | None) -> str | None:
    if device is None:
        return None
    if device.type == "cuda":
        return DEVICE
    if device.type == "cpu":
        return ON_HOST
    return None  # meta tensors (lazy initialisation while loading weights) pass through untouched


class DeviceHarness(TorchFunctionMode):
    """``with DeviceHarness() as h:`` runs code as if on ``cuda:0``; see the module docstring."""

    def __init__(self, ignore_syncs_in: tuple[str, ...] = ()) -> None:
        super().__init__()
        # Files whose syncs are tallied apart (``ignored_syncs``), e.g. the PyTorch rasterizer,
        # which a CUDA run replaces with nvdiffrast.
        self.ignore_syncs_in = ignore_syncs_in
        self.ignored_syncs = 0
        self.syncs = 0
        self.uploads = 0
        self.sync_sites: Counter[str] = Counter()
        self.sync_lines: Counter[str] = Counter()  # the same, keyed by the project line that waited
        self._stack = contextlib.ExitStack()

    # --- entering: a CUDA runtime that exists -------------------------------------------

    def __enter__(self) -> DeviceHarness:
        patch = self._stack.enter_context
        mp = _Patches()
        patch(mp)
        cuda = torch.cuda
        mp.set(cuda, "is_available", lambda: True)
        mp.set(cuda, "device_count", lambda: 1)
        mp.set(cuda, "current_device", lambda: 0)
        mp.set(cuda, "is_initialized", lambda: False)  # no CUDA RNG state to save or restore
        mp.set(cuda, "synchronize", lambda *a, **k: self._sync("torch.cuda.synchronize"))
        mp.set(cuda, "empty_cache", lambda: None)
        mp.set(cuda, "get_device_name", lambda *a: "device-harness (CPU)")
        mp.set(cuda, "get_device_capability", lambda *a: (9, 0))
        mp.set(cuda, "is_bf16_supported", lambda *a, **k: True)
        for name in ("memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"):
            mp.set(cuda, name, lambda *a, **k: 0)
        mp.set(cuda, "reset_peak_memory_stats", lambda *a, **k: None)
        mp.set(cuda, "current_stream", lambda *a, **k: _Stream())
        mp.set(torch.accelerator, "current_stream", lambda *a, **k: _Stream())
        mp.set(cuda, "manual_seed", lambda *a, **k: None)
        mp.set(cuda, "manual_seed_all", lambda *a, **k: None)
        real_autocast = torch.autocast

        def autocast(device_type: str, *args: Any, **kwargs: Any):  # noqa: ANN202
            return real_autocast("cpu" if device_type == "cuda" else device_type, *args, **kwargs)

        mp.set(torch, "autocast", autocast)
        mp.set(torch.amp, "autocast", autocast)
        self._patch_modules(mp)
        super().__enter__()
        self._stack.callback(lambda: super(DeviceHarness, self).__exit__(None, None, None))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _patch_modules(self, mp: _Patches) -> None:
        """Modules move by marking their tensors: their storage stays where it is."""
        real_to, harness = torch.nn.Module.to, self

        def module_to(module: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
            device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)
            keep = {k: v for k, v in (("dtype", dtype), ("memory_format", memory_format)) if v is not None}
            if keep:
                real_to(module, **keep)
            if device is not None:
                harness._mark_module(module, _place_of(torch.device(device)))
            return module

        mp.set(torch.nn.Module, "to", module_to)
        mp.set(torch.nn.Module, "cuda", lambda m, device=None: module_to(m, RUN))
        mp.set(torch.nn.Module, "cpu", lambda m: module_to(m, HOST))
        real_param_new = torch.nn.Parameter.__new__

        def param_new(cls, data=None, requires_grad=True, **attrs):  # noqa: ANN001, ANN202
            # accelerate re-creates parameters with their __dict__ as keywords: our mark among them.
            attrs.pop(_MARK, None)
            p = real_param_new(cls, data, requires_grad, **attrs)
            mark(p, where(data) if isinstance(data, torch.Tensor) else None)
            return p

        mp.set(torch.nn.Parameter, "__new__", staticmethod(param_new))

    def _mark_module(self, module: torch.nn.Module, place: str | None) -> None:
        for t in [*module.parameters(), *module.buffers()]:
            mark(t, place)
            if t.grad is not None:
                mark(t.grad, place)

    # --- every torch call -----------------------------------------------------------------

    def _sync(self, site: str) -> None:
        line = _caller()
        if any(line.startswith(prefix) for prefix in self.ignore_syncs_in):
            self.ignored_syncs += 1
            return
        self.syncs += 1
        self.sync_sites[site] += 1
        self.sync_lines[f"{site} at {line}"] += 1

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
        if func == _T.device.__get__:
            return RUN if on_device(args[0]) else func(*args)
        if func == _T.is_cuda.__get__:
            return on_device(args[0])
        if func == _T.is_cpu.__get__:
            return not on_device(args[0])
        if func is _T.get_device:
            return 0 if on_device(args[0]) else -1
        if func in (_T.numpy, _T.__array__) and on_device(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first. (device harness)")
        if func in (_T.to, _T.cuda, _T.cpu, _T.type):
            return self._move(func, args, kwargs)
        if func == _T.data.__set__:
            func(*args, **kwargs)
            mark(args[0], where(args[1]))
            return None
        if func in FACTORIES or func in LIKE or func in NEW:
            return self._factory(func, args, kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        dev = [t for t in tensors if on_device(t)]
        if dev and func in SYNC_READS:
            self._sync(name)
        elif dev and func in SYNC_SHAPES:
            self._sync(name)
        elif dev and func is _T.__getitem__ and _has_bool_mask(args[1]):
            self._sync("boolean-mask indexing")
        if dev and func not in COPIES:
            checked = tensors
            if func in (_T.__getitem__, _T.__setitem__):
                checked = [t for t in tree_flatten((args[0], args[2:], kwargs))[0] if isinstance(t, torch.Tensor)]
                if func is _T.__setitem__:  # assigning host values is a copy, as in CUDA
                    checked = [args[0]]
            host = [t for t in checked if where(t) == ON_HOST and t.dim() > 0]
            if host:
                raise MixedDeviceError(
                    f"{name} mixes tensors on cuda:0 with host tensors of shape "
                    f"{', '.join(str(tuple(t.shape)) for t in host)}; create them with device= or move them first"
                )
        out = func(*args, **kwargs)
        place = DEVICE if dev else (ON_HOST if any(where(t) == ON_HOST for t in tensors) else None)
        if func == _T.grad.__get__ and out is not None:
            place = where(args[0])
        if func is _T.__setitem__ or func in COPIES:
            return out
        for t in tree_flatten(out)[0]:
            mark(t, place)
        return out

    def _factory(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        device = _device_arg(kwargs.get("device"))
        if device is not None and device.type not in ("cpu", "cuda"):
            return func(*args, **kwargs)
        if device is None and func in LIKE:
            device = RUN if on_device(args[0]) else HOST
        if device is None and func in NEW:
            device = RUN if on_device(args[0]) else HOST
        if device is None and func in (torch.tensor, torch.as_tensor) and args and isinstance(args[0], torch.Tensor):
            device = RUN if on_device(args[0]) else HOST  # from a tensor: its device, as torch does
        place = _place_of(device) or ON_HOST  # no device= means the default device: the host
        if "device" in kwargs:
            kwargs["device"] = HOST
        gen = kwargs.get("generator")
        if func in RANDOM and gen is not None and gen.device.type != (device or HOST).type:
            raise MixedDeviceError(f"{getattr(func, '__name__', func)} draws on {device} from a generator on "
                                   f"{gen.device}; CUDA refuses this: draw on the generator's device, then move")
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            mark(t, place)
        return out

    def _move(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        t, rest = args[0], args[1:]
        if func is _T.cuda:
            target, dtype, copy = RUN, None, False
        elif func is _T.cpu:
            target, dtype, copy = HOST, None, False
        elif func is _T.type:
            return func(*args, **kwargs)  # .type(dtype) keeps the place; marks follow below
        else:
            other = rest[0] if rest and isinstance(rest[0], torch.Tensor) else kwargs.get("other")
            if other is not None:
                target, dtype = (RUN if on_device(other) else HOST), other.dtype
            else:
                device, dtype, _, _ = torch._C._nn._parse_to(*rest, **{k: v for k, v in kwargs.items()
                                                                     if k in ("device", "dtype", "non_blocking")})
                target = _device_arg(device)
            copy = bool(kwargs.get("copy", False))
        if target is not None and target.type not in ("cpu", "cuda"):
            return func(*args, **kwargs)
        here = RUN if on_device(t) else HOST
        out = t if dtype is None else func(t, dtype=dtype, copy=copy) if func is _T.to else t.to(dtype)
        if target is None or target.type == here.type:
            mark(out, where(t))
            return out
        blocking = not kwargs.get("non_blocking", False)
        if here.type == "cuda" and target.type == "cpu":
            self._sync("device-to-host copy")
        elif blocking:
            self.uploads += 1
        if out is t:
            out = t.clone() if not t.requires_grad else t * 1  # a new tensor, as a real move gives
        mark(out, _place_of(target))
        return out


def _caller() -> str:
    """The innermost frame of the project's own code (magic3d, renderers, exporters) on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if any(f"/{pkg}/" in path for pkg in ("magic3d", "renderers", "exporters")) and "/tests/" not in path:
            return f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{frame.f_lineno}"
        frame = frame.f_back
    return "outside the project"


def _has_bool_mask(index: Any) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in tree_flatten(index)[0])


class _Stream:
    """What optimizers ask of the current CUDA stream: whether a graph is being captured."""

    def is_capturing(self) -> bool:
        return False

    def synchronize(self) -> None:
        return None


class _Patches:
    """setattr that undoes itself (monkeypatch without pytest, so scripts can use the harness)."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def set(self, obj: Any, name: str, value: Any) -> None:
        self._undo.append((obj, name, obj.__dict__.get(name, _MISSING) if isinstance(obj, type) else getattr(obj, name)))
        setattr(obj, name, value)

    def __enter__(self) -> _Patches:
        return self

    def __exit__(self, *exc: Any) -> None:
        for obj, name, old in reversed(self._undo):
            if old is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, old)


_MISSING = object()


def per_step_syncs(harness: DeviceHarness) -> tuple[Callable[..., None], dict[str, list[int]]]:
    """A progress function recording the harness's sync count at each step, and the per-stage deltas."""
    seen: dict[str, list[int]] = {}
    last = {"n": harness.syncs}

    @functools.wraps(per_step_syncs)
    def progress(stage: str, step: int, total: int, loss: float | None = None, **_: Any) -> None:
        seen.setdefault(stage, []).append(harness.syncs - last["n"])
        last["n"] = harness.syncs

    return progress, seen
