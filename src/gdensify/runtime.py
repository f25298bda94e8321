"""Process-wide CPU settings and the inference context: OpenMP wait policy, thread count, reduced precision.

OpenMP wait policy. PyTorch's CPU wheels run their parallel regions on GNU OpenMP (libgomp). By default an idle
OpenMP thread spins for a while before sleeping; on a machine whose cores are shared with other work (a laptop,
CI, several jobs on one node) the spinning threads take the cores from the threads that have work, and every
parallel region can wait a scheduler time slice. `OMP_WAIT_POLICY=PASSIVE` makes idle threads sleep at once
(measured on a busy 2-core machine: whole-process training 1.82× faster). libgomp reads the variable once, when
it is loaded, which happens during `import torch`; setting it afterwards has no effect. `import gdensify`
therefore calls `set_default_wait_policy()` before it imports torch, and sets `PASSIVE` only when the variable
is unset (set `OMP_WAIT_POLICY=ACTIVE` yourself to keep spinning, e.g. on a dedicated many-core node where the
wake-up latency of sleeping threads matters). If torch was imported before gdensify, the process keeps the
default; `wait_policy()` says which case applies.

Threads. PyTorch starts one intra-op thread per core it sees, ignoring container CPU quotas (a `--cpus=2`
container on a 64-core host gets 64 threads). `configure_threads()` uses, in this order: the `threads`
argument, `OMP_NUM_THREADS` when set, else the CPUs this process may run on (its affinity mask) capped by the
cgroup CPU quota. Call it once at start-up; the CLI and the benchmarks do.

Precision. `inference(precision, modules)` wraps a forward pass: `torch.inference_mode()` and, for ``"bf16"``,
bfloat16 autocast inside the forward of each of `modules` (their outputs are handed on as float32), so that the
heavy stages run in bfloat16 while everything else (camera geometry, the Gaussian heads, selection, the
densifier, the renderer) stays float32. Without `modules`, the whole block runs under autocast. ``"fp32"`` is
the reference path whose results match the official implementation; which stages a model runs in bfloat16 and
what that changes is measured by `benchmarks/published_models.py` (e.g. `LaRaBackbone.bf16_modules()`).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Iterable, Iterator, Literal

__all__ = [
    "PRECISIONS", "Precision", "available_cpus", "configure_threads", "inference", "set_default_wait_policy",
    "wait_policy",
]

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

_policy_source: str | None = None  # "user", "gdensify" or "late" (torch was imported first), once decided


def set_default_wait_policy() -> str:
    """Set `OMP_WAIT_POLICY=PASSIVE` unless the user set it; call before `import torch`. Returns who decided
    the policy: "user", "gdensify", or "late" (torch already imported, so the OpenMP default stays)."""
    global _policy_source
    if _policy_source is None:
        if os.environ.get("OMP_WAIT_POLICY"):
            _policy_source = "user"
        elif "torch" in sys.modules:
            _policy_source = "late"
        else:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            _policy_source = "gdensify"
    return _policy_source


def wait_policy() -> str:
    """The OpenMP wait policy this process runs with, and who chose it (one line)."""
    source = set_default_wait_policy()
    if source == "late":
        return "default (threads spin when idle): torch was imported before gdensify"
    return f"{os.environ['OMP_WAIT_POLICY'].upper()} (set by {'the user' if source == 'user' else 'gdensify'})"


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), None if unlimited."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask (all CPUs where there is none), capped by the cgroup quota
    (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def configure_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op thread count (see the module docstring for the order of precedence); returns it."""
    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else available_cpus()
    if threads < 1:
        raise ValueError(f"threads must be ≥ 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _to_float32(value: Any) -> Any:
    """Floating tensors in `value` (a tensor, or a tuple, list, dict or dataclass holding tensors) as float32."""
    import dataclasses

    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, list) or type(value) is tuple:
        return type(value)(_to_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_float32(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _to_float32(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


@contextlib.contextmanager
def _bf16_forwards(modules: Iterable[Any], device: str) -> Iterator[None]:
    """bfloat16 autocast inside each module's forward (hooks; the modules' code is not changed); outputs as
    float32."""
    import torch

    handles, stacks = [], []
    for module in modules:
        stack: list = []
        stacks.append(stack)
        device_type = next((p.device.type for p in module.parameters()), torch.device(device).type)

        def enter(mod, args, stack=stack, device_type=device_type):
            ctx = torch.autocast(device_type, dtype=torch.bfloat16)
            ctx.__enter__()
            stack.append(ctx)

        def leave(mod, args, output, stack=stack):
            stack.pop().__exit__(None, None, None)
            return _to_float32(output)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def inference(precision: str = "fp32", modules: Iterable[Any] | None = None, device: str = "cpu"
              ) -> Iterator[None]:
    """`torch.inference_mode()`; for precision "bf16" also bfloat16 autocast, inside the forwards of `modules`
    only (on their parameters' device; outputs handed on as float32) or, when `modules` is None, over the whole
    block on `device`."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if precision == "bf16":
            if modules is None:
                stack.enter_context(torch.autocast(torch.device(device).type, dtype=torch.bfloat16))
            else:
                stack.enter_context(_bf16_forwards(list(modules), device))
        yield
