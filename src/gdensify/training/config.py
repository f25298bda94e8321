"""Optimisation and trainer settings shared by the object- and scene-level experiments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """AdamW with warm-up; defaults are the released GD recipe (constant 1e-4 after a 4e-4 warm-up)."""

    max_steps: int = 2000
    batch_size: int = 2
    lr: float = 4e-4
    final_lr: float = 1e-4
    warmup_steps: int = 1000  # linear warm-up to `lr` (the release: 1,000 steps)
    after_warmup: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.5
    ssim_weight: float = 0.5  # loss = MSE + ssim_weight·(1 − MS-SSIM) ...
    lpips_weight: float = 0.0  # ... or, if > 0 and LPIPS-VGG weights exist locally, MSE + lpips_weight·LPIPS
    supervise_inputs: bool = True  # also supervise the input views (object GD) or only the targets (MVSplat)
    coarse_weight: float = 1.0
    fine_weight: float = 1.0
    seed: int = 0
    init_weights: str | None = None  # a model.safetensors whose tensors initialise the model (not on --resume)
    num_workers: int = 0
    devices: int = 1
    num_nodes: int = 1
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    strategy: str = "auto"
    precision: Literal["auto", "32", "bf16-mixed"] = "auto"  # auto: bf16-mixed on CUDA, 32 on CPU
    log_every: int = 10
    checkpoint_every: int = 200  # steps between checkpoints (and validations)
    out_dir: str = "outputs/train"

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "devices", "num_nodes", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.final_lr <= 0:
            raise ValueError("train.lr and train.final_lr must be > 0 and train.warmup_steps >= 0")
        if not self.grad_clip >= 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
