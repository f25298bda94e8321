"""Helpers for the official-parity tests: the golden fixtures of `tests/fixtures/official/` (outputs of the
official GD object / GD scene decoder / MVSplat encoder code on CPU, small configs, random weights), their official
configs in the official YAML structure, and a max-abs / relative difference."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures" / "official"


def load_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of fixture `name` (object_small, mvsplat_small, scene_decoder_small)."""
    return load_file(str(FIXTURES / f"{name}.safetensors")), json.loads((FIXTURES / f"{name}.json").read_text())


def weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official state dict stored in a fixture (its own key names)."""
    return {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}


def object_config(meta: dict) -> dict:
    """The object fixture's official config in the official YAML structure."""
    model = dict(meta["config"])
    model["timm_kwargs"] = dict(meta["timm_overrides"])
    size = meta["image_size"]
    return {"n_views": meta["n_views"], "model": model, "test_dataset": {"img_size": [size, size]}}


def mvsplat_config(meta: dict) -> dict:
    size = meta["image_size"]
    return {"model": {"encoder": dict(meta["encoder_config"])},
            "dataset": {"image_shape": [size, size], "near": meta["near"], "far": meta["far"]}}


def scene_config(meta: dict, mvsplat_meta: dict) -> dict:
    """The scene decoder fixture's config (its encoder section is the MVSplat fixture's)."""
    decoder = dict(meta["decoder_kwargs"])
    decoder["grid_size"] = meta["grid_size"]
    return {"model": {"encoder": dict(mvsplat_meta["encoder_config"]), "decoder": decoder},
            "dataset": {"image_shape": list(meta["image_shape"]), "near": mvsplat_meta["near"],
                        "far": mvsplat_meta["far"]}}


def diff(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |ours − ref|, that divided by max |ref|)."""
    if tuple(ours.shape) != tuple(ref.shape):
        raise AssertionError(f"shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    err = (ours.double() - ref.double()).abs().max().item()
    return err, err / max(ref.double().abs().max().item(), 1e-30)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, atol: float, what: str, rtol: float | None = None) -> None:
    """max |ours − ref| ≤ atol, or ≤ rtol·max |ref| when `rtol` is given."""
    err, rel = diff(ours, ref)
    ok = err <= atol or (rtol is not None and rel <= rtol)
    assert ok, f"{what}: max |diff| {err:.3g} (relative {rel:.3g}) above {atol:g}" + \
        (f" / relative {rtol:g}" if rtol is not None else "")


def covariances(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """World covariances R S² Rᵀ of wxyz quaternions and log-scales."""
    from gdensify.gaussians import quat_to_rotmat

    r = quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))
    return r @ torch.diag_embed(torch.exp(2 * log_scales)) @ r.transpose(-1, -2)
