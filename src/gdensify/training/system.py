"""The Lightning module shared by object- and scene-level training: photometric losses on the coarse and the fine
renders of every supervision view (targets, and inputs unless `supervise_inputs` is off), AdamW with warm-up,
PSNR logging."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from torch import nn

from ..cameras import Cameras
from ..data.batch import ViewBatch
from ..evaluation.metrics import load_lpips_vgg, lpips_status
from .config import TrainConfig
from .losses import photometric_loss
from .schedule import adamw_param_groups, warmup_schedule


def supervision_views(batch: ViewBatch, include_inputs: bool = True
                      ) -> tuple[list[Cameras], torch.Tensor, torch.Tensor]:
    """Cameras, backgrounds (B, V, 3) and ground truth (B, V, H, W, 3) of the inputs (if `include_inputs`)
    followed by the targets."""
    if not include_inputs:
        return batch.target_cameras, batch.target_backgrounds, batch.target_images
    v_in = batch.input_images.shape[1]
    cameras = [Cameras.cat([i, t]) for i, t in zip(batch.input_cameras, batch.target_cameras)]
    backgrounds = torch.cat([batch.input_backgrounds[:, None].expand(-1, v_in, 3), batch.target_backgrounds], 1)
    return cameras, backgrounds, torch.cat([batch.input_images, batch.target_images], dim=1)


class ReconstructionSystem(L.LightningModule):
    """Trains any model mapping a `ViewBatch` to a `Reconstruction`."""

    def __init__(self, model: nn.Module, train: TrainConfig) -> None:
        super().__init__()
        self.model, self.train_config = model, train
        self._lpips: tuple[nn.Module, ...] = ()  # a tuple keeps the frozen VGG out of state_dict and checkpoints

    def on_fit_start(self) -> None:
        if self.train_config.lpips_weight > 0:
            model = load_lpips_vgg(device=self.device)
            self._lpips = (model,) if model is not None else ()
            if model is None:
                warnings.warn(f"LPIPS-VGG weights not found ({lpips_status()}); training with the substitute "
                              f"loss MSE + {self.train_config.ssim_weight}·(1 − SSIM)")

    def step_generator(self) -> torch.Generator:
        """The model's randomness in this step: a pure function of (seed, step, rank), so resumption is exact."""
        seed = (self.train_config.seed * 1_000_003 + self.global_step) * 1009 + self.global_rank
        torch.manual_seed(seed)  # anything drawing from the global generator (e.g. dropout) is reproducible too
        return torch.Generator(self.device).manual_seed(seed)

    def transfer_batch_to_device(self, batch: ViewBatch, device: torch.device, dataloader_idx: int) -> ViewBatch:
        return batch.to(device)

    def training_step(self, batch: ViewBatch, batch_idx: int) -> torch.Tensor:
        cfg = self.train_config
        cameras, backgrounds, truth = supervision_views(batch, cfg.supervise_inputs)
        out = self.model(batch, generator=self.step_generator())
        loss = torch.zeros((), device=truth.device)
        for which, weight in (("coarse", cfg.coarse_weight), ("fine", cfg.fine_weight)):
            if which == "fine" and out.fine is None:
                continue
            render = out.render(cameras, backgrounds, which).clamp(0, 1)
            term, parts = photometric_loss(render, truth, cfg.ssim_weight, self._lpips[0] if self._lpips else None,
                                           cfg.lpips_weight)
            loss = loss + weight * term
            self.log(f"train/psnr_{which}", -10 * torch.log10(parts["mse"]), batch_size=len(batch))
            self.log(f"train/loss_{which}", term.detach(), batch_size=len(batch))
        for name, value in out.diagnostics.items():
            if value.numel() == 1:
                self.log(f"train/{name}", value.float(), batch_size=len(batch))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch))
        return loss

    def configure_optimizers(self):
        cfg = self.train_config
        optimizer = torch.optim.AdamW(adamw_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_schedule(
            step, cfg.warmup_steps, cfg.max_steps, cfg.lr, cfg.final_lr, cfg.after_warmup) / cfg.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
