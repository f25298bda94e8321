"""Learning-rate schedules and AdamW parameter groups."""

from __future__ import annotations

import math
from typing import Literal

import torch


def warmup_schedule(step: int, warmup_steps: int, total_steps: int, peak_lr: float, final_lr: float,
                    after_warmup: Literal["constant", "cosine"]) -> float:
    """Learning rate at optimiser step `step`: linear warm-up from 0 to `peak_lr`, then either a constant
    `final_lr` (the released GD code's behaviour) or a cosine from `peak_lr` down to `final_lr` at `total_steps`."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if after_warmup == "constant":
        return final_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_lr + 0.5 * (peak_lr - final_lr) * (1 + math.cos(math.pi * progress))


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay; biases, normalisation parameters and 1-D tensors without."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
