"""Evaluation: image metrics (PSNR, SSIM, MS-SSIM, LPIPS-VGG when local weights exist)."""

from .metrics import (
    LPIPS_ENV,
    UNAVAILABLE,
    VGG16_ENV,
    LPIPSVGG,
    image_metrics,
    load_lpips_vgg,
    lpips_status,
    lpips_vgg,
    ms_ssim,
    ms_ssim_window,
    mse,
    psnr,
    psnr_pooled,
    ssim,
)

__all__ = [
    "LPIPS_ENV", "UNAVAILABLE", "VGG16_ENV", "LPIPSVGG", "image_metrics", "load_lpips_vgg", "lpips_status",
    "lpips_vgg", "ms_ssim", "ms_ssim_window", "mse", "psnr", "psnr_pooled", "ssim",
]
