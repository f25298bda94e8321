"""Image metrics: PSNR, SSIM, MS-SSIM and LPIPS-VGG (only with local weights).

All functions take images in the library layout: float in [0, 1], shape (..., H, W, 3), and return one value per
image, shape (...). They are differentiable (usable in losses).

* `psnr`: −10·log10(MSE) per image (data range 1); `psnr_pooled` the PSNR of the MSE pooled over all images
  (what the official GD evaluation reports on its 4 concatenated novel views).
* `ssim`: `pytorch_msssim.ssim` (Gaussian window 11, σ 1.5, K = (0.01, 0.03), valid convolution), per image,
  averaged over channels. Needs H, W >= 11.
* `ms_ssim`: `pytorch_msssim.ms_ssim` (5 scales, standard weights); needs min(H, W) > (win_size − 1)·16, i.e.
  > 160 with the standard window. `ms_ssim_window(h, w)` gives the largest odd window that fits (for losses on
  small images), or None.
* LPIPS-VGG (lpips 0.1.4, `net='vgg'`, version 0.1): implemented here in pure PyTorch (no torchvision, no
  download; checked to match the lpips package to float precision). Weights are only ever read from local files,
  merged in this order (later keys win):
    1. the VGG16 backbone: `$GDENSIFY_VGG16_WEIGHTS` (a torchvision `vgg16` state dict), else torch hub's cache
       `<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth` if torchvision ever downloaded it;
    2. `$GDENSIFY_LPIPS_WEIGHTS`: the linear layers, or one file holding everything; else the `lpips` package's own
       `weights/v0.1/vgg.pth` (linear layers only) when `lpips` is installed.
  So one file in `$GDENSIFY_LPIPS_WEIGHTS` with all keys suffices. Before both, the user cache's
  `lpips_vgg.safetensors` written by `gdensify download lpips` (`evaluation.lpips_weights`; all keys) is read.
  Key layout (a `.safetensors` file or a torch `.pth`/`.pt` state dict; keys of both files may be merged):
    * `features.{i}.weight` / `features.{i}.bias` for the 13 convolutions of torchvision's VGG16 `features`,
      i ∈ {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28} (a full torchvision `vgg16` state dict works; its
      `classifier.*` keys are ignored; lpips's own `net.slice{k}.{i}.*` names are accepted too);
    * `lin{k}.model.1.weight`, k = 0..4, shapes (1, C_k, 1, 1) with C = 64, 128, 256, 512, 512 (exactly
      lpips's `weights/v0.1/vgg.pth`).
  With no weights found, `lpips_vgg(...)` returns None and `lpips_status()` says where it looked: the metric is
  reported as unavailable, never replaced by a made-up number.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..io.weights import read_state_dict

__all__ = [
    "psnr", "psnr_pooled", "mse", "ssim", "ms_ssim", "ms_ssim_window", "LPIPSVGG", "load_lpips_vgg", "lpips_vgg",
    "lpips_status", "lpips_weight_paths", "image_metrics", "LPIPS_ENV", "VGG16_ENV", "UNAVAILABLE",
]

LPIPS_ENV = "GDENSIFY_LPIPS_WEIGHTS"
VGG16_ENV = "GDENSIFY_VGG16_WEIGHTS"
UNAVAILABLE = "unavailable"


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim < 3 or pred.shape[-1] != 3:
        raise ValueError(f"{name}: images must have shape (..., H, W, 3), got {tuple(pred.shape)}")


def _to_nchw(x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    batch = tuple(x.shape[:-3])
    return x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2), batch


# ====================================================================================== PSNR
def mse(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"]) -> Float[Tensor, "*batch"]:
    _check_pair(pred, target, "mse")
    return (pred - target).square().mean(dim=(-3, -2, -1))


def psnr(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"]) -> Float[Tensor, "*batch"]:
    """Per-image PSNR in dB for images in [0, 1]: −10·log10(mean squared error); +inf for identical images."""
    _check_pair(pred, target, "psnr")
    return -10.0 * torch.log10(mse(pred, target))


def psnr_pooled(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"]) -> Tensor:
    """One PSNR from the MSE pooled over all given images (equal sizes: the official 'concatenated views' PSNR)."""
    _check_pair(pred, target, "psnr_pooled")
    return -10.0 * torch.log10((pred - target).square().mean())


# ====================================================================================== SSIM
def ssim(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"], win_size: int = 11,
         win_sigma: float = 1.5) -> Float[Tensor, "*batch"]:
    """Per-image SSIM (pytorch_msssim: Gaussian window, valid convolution, K = (0.01, 0.03), data range 1)."""
    from pytorch_msssim import ssim as _ssim

    _check_pair(pred, target, "ssim")
    if min(pred.shape[-3], pred.shape[-2]) < win_size:
        raise ValueError(f"ssim: images of {pred.shape[-3]}x{pred.shape[-2]} are smaller than the {win_size}-pixel "
                         f"window")
    x, batch = _to_nchw(pred)
    y, _ = _to_nchw(target)
    return _ssim(x, y, data_range=1.0, size_average=False, win_size=win_size, win_sigma=win_sigma,
                 K=(0.01, 0.03)).reshape(batch)


def ms_ssim_window(height: int, width: int, max_win: int = 11) -> int | None:
    """The largest odd window ≤ max_win for which 5-scale MS-SSIM fits min(H, W) (> (win − 1)·16); else None."""
    side = min(height, width)
    for win in range(max_win if max_win % 2 else max_win - 1, 2, -2):
        if side > (win - 1) * 16:
            return win
    return None


def ms_ssim(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"], win_size: int = 11,
            win_sigma: float = 1.5) -> Float[Tensor, "*batch"]:
    """Per-image 5-scale MS-SSIM (pytorch_msssim). ValueError when min(H, W) <= (win_size − 1)·16."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    _check_pair(pred, target, "ms_ssim")
    side = min(pred.shape[-3], pred.shape[-2])
    if side <= (win_size - 1) * 16:
        raise ValueError(f"ms_ssim: images of {pred.shape[-3]}x{pred.shape[-2]} are too small for 5 scales with a "
                         f"{win_size}-pixel window (need > {(win_size - 1) * 16}); use ssim, or "
                         f"win_size=ms_ssim_window(H, W)")
    x, batch = _to_nchw(pred)
    y, _ = _to_nchw(target)
    return _ms_ssim(x, y, data_range=1.0, size_average=False, win_size=win_size, win_sigma=win_sigma,
                    K=(0.01, 0.03)).reshape(batch)


# ====================================================================================== LPIPS-VGG
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICE_ENDS = (4, 9, 16, 23, 30)  # features[:4] → relu1_2, [4:9] → relu2_2, ... [23:30] → relu5_3
_LIN_CHANNELS = (64, 128, 256, 512, 512)


class _NetLin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))  # key lin{k}.model.1.weight


class LPIPSVGG(nn.Module):
    """LPIPS v0.1 with the VGG16 backbone (as `lpips.LPIPS(net='vgg')`), pure PyTorch.

    forward(x, y): images (N, 3, H, W) in [0, 1] → distances (N,). Parameter names follow torchvision's VGG16
    (`features.{i}.*`) and lpips (`lin{k}.model.1.weight`), so both official files load with `load_state_dict`."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*layers)  # indices 0..29 as torchvision's vgg16().features[:30]
        for k, ch in enumerate(_LIN_CHANNELS):
            self.add_module(f"lin{k}", _NetLin(ch))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    def forward(self, x: Float[Tensor, "N 3 H W"], y: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N"]:
        x = ((2 * x - 1) - self.shift) / self.scale
        y = ((2 * y - 1) - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        start = 0
        for k, end in enumerate(_SLICE_ENDS):
            for i in range(start, end):
                x, y = self.features[i](x), self.features[i](y)
            start = end
            fx = x / (x.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fy = y / (y.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = getattr(self, f"lin{k}").model[1]((fx - fy) ** 2)  # model[0] is lpips's (inactive) dropout
            total = total + d.mean(dim=(1, 2, 3))
        return total


def _lpips_key(key: str) -> str:
    """lpips's own module names (net.slice{s}.{i}.weight) → ours (features.{i}.weight); other names unchanged."""
    if key.startswith("net.slice"):
        parts = key.split(".", 3)
        return f"features.{parts[2]}.{parts[3]}"
    return key


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    return {_lpips_key(k): v for k, v in read_state_dict(path).items()}


def lpips_weight_paths() -> list[Path]:
    """The files `load_lpips_vgg()` would read now, in merge order (later files' keys win).

    The user cache's `lpips_vgg.safetensors` (`gdensify download lpips`) first, then backbone candidates ($GDENSIFY_VGG16_WEIGHTS, else torch hub's cached torchvision vgg16 file), then the
    LPIPS file ($GDENSIFY_LPIPS_WEIGHTS, else the `lpips` package's weights/v0.1/vgg.pth)."""
    from .lpips_weights import cached_lpips_path  # noqa: PLC0415

    cached = cached_lpips_path()  # `gdensify download lpips`: everything, read first so that any other file wins
    paths: list[Path] = [cached] if cached.is_file() else []
    if os.environ.get(VGG16_ENV):
        paths.append(Path(os.environ[VGG16_ENV]).expanduser())
    else:
        p = Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
        if p.is_file():
            paths.append(p)
    if os.environ.get(LPIPS_ENV):
        paths.append(Path(os.environ[LPIPS_ENV]).expanduser())
    else:
        spec = importlib.util.find_spec("lpips")
        if spec is not None and spec.origin:
            p = Path(spec.origin).parent / "weights" / "v0.1" / "vgg.pth"
            if p.is_file():
                paths.append(p)
    return paths


def _required_keys() -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in LPIPSVGG().state_dict().items()}


def lpips_status() -> str:
    """'available: <files>' or 'unavailable: <why>' (which variables and caches were looked at)."""
    paths = lpips_weight_paths()
    if paths:
        try:
            model = load_lpips_vgg()
        except (OSError, ValueError) as e:
            return f"{UNAVAILABLE}: {e}"
        if model is not None:
            return "available: " + ", ".join(str(p) for p in paths)
    return (f"{UNAVAILABLE}: no complete LPIPS-VGG weights found (set {LPIPS_ENV} to a file with the VGG16 "
            f"features and lpips linear layers, or {LPIPS_ENV} (linear layers) + {VGG16_ENV} (torchvision vgg16); "
            f"looked at: {', '.join(str(p) for p in paths) or 'nothing'})")


_CACHE: dict[tuple, LPIPSVGG] = {}


def load_lpips_vgg(path: str | os.PathLike | None = None, vgg_path: str | os.PathLike | None = None,
                   device: torch.device | str = "cpu") -> LPIPSVGG | None:
    """The LPIPS-VGG network with local weights, or None when none are found (see the module doc).

    Explicit `path` / `vgg_path` take precedence over the environment. Files that exist but lack keys or have
    wrong shapes raise ValueError (naming the missing keys): a partial network would give made-up numbers."""
    if path is not None:
        paths = [Path(path)] + ([Path(vgg_path)] if vgg_path is not None else [])
    else:
        paths = lpips_weight_paths()
    if not paths:
        return None
    key = tuple(str(p.resolve()) for p in paths) + (str(device),)
    if key in _CACHE:
        return _CACHE[key]
    merged: dict[str, Tensor] = {}
    for p in paths:
        merged.update(_read_state_dict(p))
    required = _required_keys()
    missing = sorted(k for k in required if k not in merged)
    if missing:
        if path is None and not os.environ.get(LPIPS_ENV) and not os.environ.get(VGG16_ENV):
            return None  # only part of the weights sits in the known caches (e.g. lpips's linear layers alone)
        raise ValueError(f"LPIPS-VGG weights in {', '.join(map(str, paths))} lack {len(missing)} keys, e.g. "
                         f"{missing[:4]}; see gdensify.evaluation.metrics for the key layout")
    bad = [k for k, shape in required.items() if tuple(merged[k].shape) != shape]
    if bad:
        raise ValueError(f"LPIPS-VGG weights in {', '.join(map(str, paths))}: wrong shapes for {bad[:4]}")
    with torch.device("meta"):  # no random initialisation of 15 M parameters that are overwritten anyway
        model = LPIPSVGG()
    model.load_state_dict({k: merged[k].float().contiguous() for k in required}, strict=True, assign=True)
    model.shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    model.scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    model = model.to(device).eval().requires_grad_(False)
    _CACHE[key] = model
    return model


def lpips_vgg(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"],
              model: LPIPSVGG | None = None, chunk: int = 8) -> Float[Tensor, "*batch"] | None:
    """Per-image LPIPS-VGG distance, or None when no weights are available locally (never a substitute value)."""
    _check_pair(pred, target, "lpips_vgg")
    model = model if model is not None else load_lpips_vgg()
    if model is None:
        return None
    x, batch = _to_nchw(pred)
    y, _ = _to_nchw(target)
    dev = next(model.parameters()).device
    out = [model(x[i:i + chunk].to(dev, torch.float32), y[i:i + chunk].to(dev, torch.float32))
           for i in range(0, len(x), chunk)]
    return torch.cat(out).to(pred.device).reshape(batch)


# ====================================================================================== all at once
def image_metrics(pred: Float[Tensor, "*batch H W 3"], target: Float[Tensor, "*batch H W 3"],
                  lpips_model: LPIPSVGG | None | str = "auto") -> dict[str, Tensor | None]:
    """Per-image `psnr`, `ssim` and `lpips` (None when unavailable; `lpips_model=None` skips it), no gradients.

    `lpips_model="auto"` loads local weights if any (`load_lpips_vgg()`)."""
    with torch.no_grad():
        pred, target = pred.detach().float(), target.detach().float()
        out: dict[str, Tensor | None] = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
        model = load_lpips_vgg() if lpips_model == "auto" else lpips_model
        out["lpips"] = None if model is None else lpips_vgg(pred, target, model)
    return out
