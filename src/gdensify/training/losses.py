"""Photometric training losses: MSE + λ·(1 − MS-SSIM) (single-scale SSIM for images too small for 5 scales), or
MSE + μ·LPIPS-VGG when an LPIPS model is given (the scene recipe; its substitute without local VGG weights is the
SSIM form)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from pytorch_msssim import ms_ssim, ssim
from torch import Tensor, nn

# pytorch_msssim's 5-scale MS-SSIM with an 11-pixel window needs the short side > (11 − 1)·2⁴.
MS_SSIM_MIN_SIDE = 161


def structural_similarity(pred: Float[Tensor, "batch h w 3"], target: Float[Tensor, "batch h w 3"]) -> Tensor:
    """MS-SSIM (5 scales) when images are large enough, else SSIM; 11-px Gaussian window, σ = 1.5, range 1.

    Computed in float32 outside autocast, as the official code does."""
    x = pred.permute(0, 3, 1, 2).float()
    y = target.permute(0, 3, 1, 2).float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
            return ms_ssim(x, y, data_range=1.0, size_average=True)
        return ssim(x, y, data_range=1.0, size_average=True)


def photometric_loss(pred: Float[Tensor, "*batch h w 3"], target: Float[Tensor, "*batch h w 3"],
                     ssim_weight: float = 0.5, lpips_model: nn.Module | None = None,
                     lpips_weight: float = 0.05) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE + ssim_weight·(1 − (MS-)SSIM) over all images, or MSE + lpips_weight·LPIPS when `lpips_model`
    (`gdensify.evaluation.LPIPSVGG`) is given; returns the loss and its detached terms."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *target.shape[-3:])
    mse = torch.mean((pred.float() - target.float()) ** 2)
    if lpips_model is not None:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            distance = lpips_model(pred.permute(0, 3, 1, 2).float(), target.permute(0, 3, 1, 2).float()).mean()
        return mse + lpips_weight * distance, {"mse": mse.detach(), "lpips": distance.detach()}
    sim = structural_similarity(pred, target)
    loss = mse + ssim_weight * (1.0 - sim)
    return loss, {"mse": mse.detach(), "ssim": sim.detach()}
