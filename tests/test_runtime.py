"""Process settings (`gdensify.runtime`): OpenMP wait policy, thread count, the inference context."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdensify import runtime

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_wait_policy_is_set_before_torch_loads_unless_the_user_chose():
    code = ("import gdensify, os; from gdensify.runtime import wait_policy; "
            "print(os.environ.get('OMP_WAIT_POLICY'), '|', wait_policy())")
    assert _run(code) == "PASSIVE | PASSIVE (set by gdensify)"
    assert _run(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE | ACTIVE (set by the user)"
    late = _run("import torch; " + code)
    assert late.startswith("None |") and "imported before gdensify" in late


def test_available_cpus_and_configure_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert 1 <= runtime.available_cpus() <= (os.cpu_count() or 1)
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert runtime.configure_threads() == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert runtime.configure_threads() == runtime.available_cpus()
        with pytest.raises(ValueError, match="threads"):
            runtime.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_inference_context():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with runtime.inference("fp32"):
        y = lin(x)
        assert torch.is_inference_mode_enabled() and y.dtype == torch.float32
    with runtime.inference("bf16"):
        assert lin(x).dtype == torch.bfloat16
    assert not torch.is_inference_mode_enabled()
    with pytest.raises(ValueError, match="precision"):
        with runtime.inference("fp16"):
            pass


def test_inference_bf16_modules_only():
    torch.manual_seed(0)
    inner, outer = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(inner, torch.nn.ReLU(), outer)
    dtypes = []
    outer.register_forward_hook(lambda m, a, out: dtypes.append((a[0].dtype, out.dtype)))
    x = torch.randn(3, 4)
    with runtime.inference("bf16", [inner, torch.nn.ReLU()]):  # a module without parameters is allowed
        y = model(x)
    assert dtypes == [(torch.float32, torch.float32)] and y.dtype == torch.float32
    assert not torch.equal(y, model(x))  # `inner` ran in bfloat16
    assert (y - model(x)).abs().max() < 0.05
    assert not inner._forward_pre_hooks and not inner._forward_hooks  # hooks removed afterwards
